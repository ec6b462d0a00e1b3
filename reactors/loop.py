"""The firing loop: takes values from a reactor's channels and runs one fire at a time."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from enum import StrEnum
from typing import Any

import structlog

from headrace.accumulators.channel import Channel, Envelope
from headrace.reactors.declaration import ReactorSpec
from headrace.reactors.policy import Fire, FiringPolicy

log = structlog.get_logger("headrace.reactors")

FireHandler = Callable[[Fire], Awaitable[None]]
"""Runs every graph bound to the reactor on one fire; raising marks the reactor failed."""

BatchHandler = Callable[[Iterable[Fire]], Awaitable[None]]
"""Runs the reactor's graphs on fires in order and settles each one when its graphs are
done with it; raising marks the reactor failed (fires not settled by then stay unsettled)."""

FIRE_BATCH = 512
"""Most envelopes a ``sequential`` reactor with a batch handler takes per wake-up."""


class ReactorState(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    FAILED = "failed"
    STOPPED = "stopped"


class ReactorLoop:
    """Runs one reactor: drains its channels, applies the firing policy, fires, settles acks.

    Never runs two fires at once. While paused it neither fires nor drains, so channels fill
    to their bound and the sources feeding them wait. Acks of a fire's envelopes are settled
    only after the handler returned, i.e. after every graph and its sinks finished.
    """

    def __init__(
        self, spec: ReactorSpec, channels: dict[str, Channel], handler: FireHandler
    ) -> None:
        missing = [name for name in spec.accumulators if name not in channels]
        if missing:
            raise ValueError(f"reactor {spec.name!r}: no channel for accumulators {missing}")
        self.spec = spec
        self.channels = channels
        self.policy = FiringPolicy(spec)
        self._handler = handler
        self.fire_many: BatchHandler | None = None
        """Set (by the runtime) for a ``sequential`` reactor on one channel: fires then go
        to it a batch per wake-up instead of one ``handler`` call each."""
        self._wakeup = asyncio.Event()
        self._paused = False
        self._stopping = False
        self._firing: asyncio.Task[None] | None = None
        self._in_fire = False
        self._task: asyncio.Task[None] | None = None
        self.state = ReactorState.STOPPED
        self.last_fired_at: float | None = None
        self.last_error: str | None = None
        for channel in channels.values():
            channel.on_put = self._wakeup.set

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def fire_count(self) -> int:
        return self.policy.fires

    @property
    def paused(self) -> bool:
        return self._paused

    def start(self) -> None:
        self.state = ReactorState.RUNNING
        self._task = asyncio.create_task(self._run(), name=f"reactor:{self.name}")

    def pause(self) -> None:
        self._paused = True
        if self.state is ReactorState.RUNNING:
            self.state = ReactorState.PAUSED

    def resume(self) -> None:
        self._paused = False
        if self.state is ReactorState.PAUSED:
            self.state = ReactorState.RUNNING
        self._wakeup.set()

    async def stop(self, drain: bool = True) -> None:
        """Finish the running fire; with ``drain``, first fire on what the channels hold."""
        self._stopping = True
        if not drain:
            self._paused = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
        if self.state is not ReactorState.FAILED:
            self.state = ReactorState.STOPPED

    async def _run(self) -> None:
        try:
            while True:
                if self._firing is not None and self._firing.done():
                    task, self._firing = self._firing, None
                    if task.cancelled() or task.exception() is not None:
                        return
                if not self._paused:
                    if self.policy.sequential:
                        if not await self._fire_in_order():
                            return
                    elif self._firing is None:
                        self._start_next_fire()
                    else:
                        self._drain()  # coalesce values that arrive while a graph runs
                if self._stopping and self._firing is None and self._idle():
                    return
                await self._wakeup.wait()
                self._wakeup.clear()
        finally:
            if self._firing is not None:
                with contextlib.suppress(Exception):
                    await self._firing

    async def _fire_in_order(self) -> bool:
        """``sequential``: one fire per envelope, awaited here (no task per fire).

        Nothing is drained while a fire runs, so awaiting it inline behaves like the task
        the ``latest`` strategy needs. Yields to the loop every few fires. False on failure.
        """
        if self.fire_many is not None and len(self.channels) == 1:
            return await self._fire_batches(next(iter(self.channels.values())), self.fire_many)
        fired = 0
        while not self._paused:
            envelope = self._oldest()
            if envelope is None:
                return True
            self._in_fire = True
            try:
                await self._fire(self.policy.fire_with(envelope))
            except Exception:
                return False
            finally:
                self._in_fire = False
            fired += 1
            if fired % 64 == 0:
                await asyncio.sleep(0)
        return True

    async def _fire_batches(self, channel: Channel, fire_many: BatchHandler) -> bool:
        """``sequential`` on one channel: take what it holds (up to ``FIRE_BATCH``) and hand
        it over as one batch of fires; yields to the loop between batches."""
        while not self._paused and channel.depth:
            taken = channel.take_many(FIRE_BATCH)
            self._in_fire = True
            self.last_fired_at = time.time()
            try:
                await fire_many(self._fires(channel, taken))
            except Exception as error:
                self._mark_failed(f"{taken[0].seq}..{taken[-1].seq} (delivery order)", error)
                return False
            finally:
                self._in_fire = False
            await asyncio.sleep(0)
        return True

    def _fires(self, channel: Channel, envelopes: list[Envelope]) -> Iterator[Fire]:
        """One fire per envelope, made as the handler asks for it; once the reactor pauses
        (or stops without draining) the rest go back to the front of the channel."""
        policy = self.policy
        only = policy.only
        for index, envelope in enumerate(envelopes):
            if self._paused:
                channel.put_back(envelopes[index:])
                return
            if only is None:
                yield policy.fire_with(envelope)
                continue
            # fire_with for one accumulator, inlined (once per message): the snapshot is
            # the value itself
            value = envelope.value
            policy.cache[only] = value
            policy.fires += 1
            yield Fire(policy.fires, {only: value}, [envelope])

    def _start_next_fire(self) -> None:
        fire = self._next_fire()
        if fire is not None:
            self._firing = asyncio.create_task(self._fire(fire), name=f"fire:{self.name}")
            self._firing.add_done_callback(lambda _task: self._wakeup.set())

    def _idle(self) -> bool:
        if self._paused:
            return True
        if self.policy.sequential:
            return all(channel.depth == 0 for channel in self.channels.values())
        self._drain()
        return not self.policy.ready()

    def _drain(self) -> None:
        for channel in self.channels.values():
            while channel.depth:
                self.policy.apply(channel.take())

    def _oldest(self) -> Envelope | None:
        oldest: Channel | None = None
        oldest_head: Envelope | None = None
        for channel in self.channels.values():
            head = channel.peek()
            if head is not None and (oldest_head is None or head.seq < oldest_head.seq):
                oldest, oldest_head = channel, head
        return oldest.take() if oldest is not None else None

    def _next_fire(self) -> Fire | None:
        if self.policy.sequential:
            envelope = self._oldest()
            return self.policy.fire_with(envelope) if envelope is not None else None
        self._drain()
        return self.policy.begin_fire() if self.policy.ready() else None

    async def _fire(self, fire: Fire) -> None:
        self.last_fired_at = time.time()
        try:
            await self._handler(fire)
        except Exception as error:
            self._mark_failed(fire.number, error)
            raise
        fire.settle()

    def _mark_failed(self, fire: int | str, error: Exception) -> None:
        self.state = ReactorState.FAILED
        self.last_error = repr(error)
        log.error(
            "reactor stopped after a failed fire",
            reactor=self.name,
            fire=fire,
            error=repr(error),
        )
        for channel in self.channels.values():
            channel.close(f"reactor {self.name!r} failed: {error}")

    @property
    def busy(self) -> bool:
        """Whether a fire runs, or values wait in channels or in the cache to fire."""
        if self._firing is not None or self._in_fire:
            return True
        if self._paused or self.state is ReactorState.FAILED:
            return False  # a failed reactor never fires again: what it holds is not "busy"
        if any(channel.depth for channel in self.channels.values()):
            return True
        return not self.policy.sequential and self.policy.ready()

    def health(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "mode": self.spec.mode.value,
            "strategy": self.spec.strategy.value,
            "fire_count": self.fire_count,
            "last_fired_at": self.last_fired_at,
            "paused": self._paused,
            "last_error": self.last_error,
            "channel_depths": {name: ch.depth for name, ch in self.channels.items()},
        }
