"""Running accumulators: they turn events into values and deliver them into channels."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import structlog

from headrace.accumulators.channel import (
    Ack,
    Channel,
    ChannelClosedError,
    Envelope,
    SharedAck,
    next_seq,
    settle,
)
from headrace.accumulators.clock import SYSTEM_CLOCK, Clock
from headrace.accumulators.keys import key_of
from headrace.accumulators.spec import AccumulatorInputError, AccumulatorKind, AccumulatorSpec

log = structlog.get_logger("headrace.accumulators")

DEFAULT_BATCH_CAP = 65_536
"""A batch without ``max_buffer_size`` still flushes at this many buffered events."""
RETRY_BACKOFF_MAX = 30.0
"""Longest wait between two attempts to flush a batch whose dead letter failed."""


def _full_channel(channels: list[Channel]) -> Channel | None:
    """The first channel without room, if any."""
    for channel in channels:
        if not channel.has_space():
            return channel
    return None


class AccumulatorRunner:
    """Delivers values of one accumulator into the channels of the reactors watching it."""

    def __init__(self, spec: AccumulatorSpec, channels: list[Channel]) -> None:
        self.spec = spec
        self.channels = channels
        self.events_in = 0
        self.delivered = 0
        self.filtered = 0
        self.errors = 0
        self.last_value: Any = None
        self.last_delivered_at: float | None = None
        self.on_delivered: Callable[[str, Any], None] | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    # -- turning events into values -------------------------------------------------
    def transform(self, event: Any, shallow: bool = False) -> Any:
        """Validate and apply a sync accumulator function; errors name the accumulator.
        ``shallow``: ``event`` is known to be within the depth limit (``spec.validate``)."""
        self.events_in += 1
        spec = self.spec
        validated = event if shallow and spec.model is None else spec.validate(event, shallow)
        try:
            return spec.fn(validated)
        except Exception as error:
            self.errors += 1
            raise AccumulatorInputError(self.name, f"function raised {error!r}") from error

    async def transform_async(self, event: Any) -> Any:
        if not self.spec.is_async:
            return self.transform(event)
        self.events_in += 1
        validated = self.spec.validate(event)
        try:
            return await self.spec.fn(validated)
        except Exception as error:
            self.errors += 1
            raise AccumulatorInputError(self.name, f"function raised {error!r}") from error

    # -- delivering values -----------------------------------------------------------
    def has_space(self) -> bool:
        return all(channel.has_space() for channel in self.channels)

    def _key(self, value: Any, message_key: Any) -> str | None:
        """The value's key (``spec.key``); raises ``AccumulatorInputError`` when there is none."""
        if self.spec.key is None:
            return None
        try:
            return key_of(self.spec.name, self.spec.key, value, message_key)
        except AccumulatorInputError:
            self.errors += 1
            raise

    def _counted(self, value: Any) -> None:
        """Count ``value`` as delivered (health); ``deliver_nowait`` inlines it."""
        self.delivered += 1
        self.last_value = value
        self.last_delivered_at = time.time()

    def deliver_nowait(
        self,
        value: Any,
        acks: tuple[Ack, ...] = (),
        message_key: Any = None,
        partition: int | None = None,
    ) -> None:
        """Deliver without waiting; callers check ``has_space`` first (``deliver`` waits).

        ``message_key`` is the raw key of the message that carried the value, for
        ``key="@message"``; ``partition`` its input partition (keyed changelogs). A value
        whose key cannot be taken raises ``AccumulatorInputError`` before anything is
        delivered (its acks are the caller's, to dead-letter). The one place that turns a
        value into envelopes: one per channel, acks shared across them.
        """
        if value is None:
            self.filtered += 1
            settle(acks)
            return
        key = None if self.spec.key is None else self._key(value, message_key)
        channels = self.channels
        if not channels:
            settle(acks)
            return
        self.delivered += 1  # _counted, inlined: once per message
        self.last_value = value
        self.last_delivered_at = time.time()
        if self.on_delivered is not None:
            self.on_delivered(self.name, value)
        name = self.spec.name
        if len(channels) == 1:  # the common case, without the fan-out bookkeeping
            channels[0].put_nowait(Envelope(name, value, acks, next_seq(), key, partition))
            return
        if acks:
            acks = (SharedAck(acks, len(channels)),)
        for channel in channels:
            channel.put_nowait(Envelope(name, value, acks, next_seq(), key, partition))

    async def deliver(
        self,
        value: Any,
        acks: tuple[Ack, ...] = (),
        message_key: Any = None,
        partition: int | None = None,
    ) -> None:
        """Deliver, waiting while a channel is full (backpressure): waits until every
        channel has room at once, then delivers as ``deliver_nowait`` does. Raises
        ``ChannelClosedError`` when a full channel's reactor stopped for good."""
        if value is not None:  # a filtered value settles at once, whatever the room
            full = _full_channel(self.channels)
            while full is not None:
                await full.wait_for_space()
                full = _full_channel(self.channels)
        self.deliver_nowait(value, acks, message_key, partition)

    def offer_nowait(
        self,
        event: Any,
        acks: tuple[Ack, ...] = (),
        message_key: Any = None,
        partition: int | None = None,
        shallow: bool = False,
    ) -> None:
        """Transform one event and deliver it now (sync functions only).

        A source passes the message's raw key as ``message_key`` (the Kafka source passes
        ``msg.key()``) for ``key="@message"``, and ``shallow`` when the raw JSON shows the
        event is within the depth limit.
        """
        self.deliver_nowait(self.transform(event, shallow), acks, message_key, partition)

    def offer_many(
        self,
        events: list[Any],
        shallows: list[bool],
        message_keys: list[Any] | None,
        acks: tuple[Ack, ...],
        partition: int | None = None,
    ) -> list[tuple[int, Exception]]:
        """``offer_nowait`` for a run of events that share ``acks`` (sync function, exactly
        one channel, room for all of them checked by the caller), delivered as one put.

        Each event settles ``acks`` once: a filtered one at once, a delivered one when its
        envelope is handled. Returns ``(index, error)`` for each event that was refused
        (``AccumulatorInputError``: invalid, function raised, no key; or any other error,
        which is a bug): those are the caller's to dead-letter, with ``acks`` unsettled.
        """
        spec = self.spec
        fn, model, validate, name = spec.fn, spec.model, spec.validate, spec.name
        keyed = spec.key is not None
        hook = self.on_delivered
        envelopes: list[Envelope] = []
        refused: list[tuple[int, Exception]] = []
        filtered = 0
        value: Any = None
        for index, event in enumerate(events):
            try:
                if model is not None or not shallows[index]:
                    event = validate(event, shallows[index])
                try:
                    value = fn(event)
                except Exception as error:
                    self.errors += 1
                    raise AccumulatorInputError(name, f"function raised {error!r}") from error
                if value is None:
                    filtered += 1
                    for ack in acks:
                        ack()
                    continue
                key = (
                    self._key(value, message_keys[index] if message_keys else None)
                    if keyed
                    else None
                )
            except Exception as error:
                refused.append((index, error))
                continue
            if hook is not None:
                hook(name, value)
            envelopes.append(Envelope(name, value, acks, next_seq(), key, partition))
        self.events_in += len(events)
        self.filtered += filtered
        if envelopes:
            self.channels[0].put_many(envelopes)  # counted as delivered once it took them
            self.delivered += len(envelopes)
            self.last_value = envelopes[-1].value
            self.last_delivered_at = time.time()
        return refused

    async def offer(
        self,
        event: Any,
        acks: tuple[Ack, ...] = (),
        message_key: Any = None,
        partition: int | None = None,
    ) -> None:
        """Transform one event and deliver it, waiting for channel space."""
        await self.deliver(await self.transform_async(event), acks, message_key, partition)

    def restore(self, value: Any) -> None:
        """Re-deliver a value remembered from before a restart (state store)."""
        try:
            self.deliver_nowait(value)
        except AccumulatorInputError as error:  # e.g. key="@message": no message to key it
            log.warning("remembered value not restored", accumulator=self.name, error=str(error))

    async def start(self) -> None:
        """Start background work; plain accumulators have none."""

    async def stop(self) -> None:
        """Stop background work, flushing what is buffered."""

    def health(self) -> dict[str, Any]:
        return {
            "kind": self.spec.kind.value,
            "topic": self.spec.topic,
            "events_in": self.events_in,
            "delivered": self.delivered,
            "filtered": self.filtered,
            "errors": self.errors,
            "channel_depth": max((c.depth for c in self.channels), default=0),
            "channel_capacity": self.spec.channel_size,
            "last_delivered_at": self.last_delivered_at,
        }


class PollingRunner(AccumulatorRunner):
    """Calls the function every ``interval`` seconds and delivers non-``None`` results."""

    def __init__(
        self, spec: AccumulatorSpec, channels: list[Channel], clock: Clock = SYSTEM_CLOCK
    ) -> None:
        super().__init__(spec, channels)
        self.clock = clock
        self._task: asyncio.Task[None] | None = None

    async def poll_once(self) -> None:
        self.events_in += 1
        try:
            if self.spec.is_async:
                value = await self.spec.fn()
            else:
                value = await asyncio.to_thread(self.spec.fn)
        except Exception as error:
            self.errors += 1
            log.error("polling function failed", accumulator=self.name, error=repr(error))
            return
        try:
            await self.deliver(value)
        except (ChannelClosedError, AccumulatorInputError) as error:
            log.error("polled value not delivered", accumulator=self.name, error=str(error))

    async def _loop(self) -> None:
        interval = self.spec.interval or 5.0
        while True:
            started = self.clock.monotonic()
            await self.poll_once()
            await self.clock.sleep(max(0.0, interval - (self.clock.monotonic() - started)))

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=f"poll:{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


class _UnsentBatch:
    """A batch whose function raised and whose dead letter is not sent yet: its events and
    acks are kept (the offsets stay uncommitted) until the letter goes out."""

    __slots__ = ("acks", "events", "reason")

    def __init__(self, events: list[Any], acks: tuple[Ack, ...], reason: str) -> None:
        self.events = events
        self.acks = acks
        self.reason = reason


class BatchRunner(AccumulatorRunner):
    """Buffers events; flushes them as one list on an interval, at ``max_buffer_size``, on stop.

    A batch whose function raises is dead-lettered; when the dead letter cannot be sent,
    the batch (events and acks) is kept and the letter retried with backoff on the next
    flushes, holding new events back meanwhile (``has_space`` is false).
    """

    def __init__(
        self, spec: AccumulatorSpec, channels: list[Channel], clock: Clock = SYSTEM_CLOCK
    ) -> None:
        super().__init__(spec, channels)
        self.clock = clock
        self.capacity = spec.max_buffer_size or DEFAULT_BATCH_CAP
        self._events: list[Any] = []
        self._acks: list[Ack] = []
        self._flushing = 0
        self._task: asyncio.Task[None] | None = None
        self._pending_flushes: set[asyncio.Task[None]] = set()
        self._unsent: _UnsentBatch | None = None
        self._downstream = 0
        self.on_batch_failure: Callable[[str, list[Any], str], Awaitable[None]] | None = None
        """Dead-letters a batch whose function raised; without it the batch stays unacked."""

    @property
    def buffered(self) -> int:
        return len(self._events)

    @property
    def unsent(self) -> int:
        """Events of a failed batch whose dead letter is still to be sent."""
        return 0 if self._unsent is None else len(self._unsent.events)

    @property
    def held(self) -> int:
        """Events this runner holds: buffered, in flushed batches not handled yet (in a
        channel or a running graph), or waiting for their dead letter."""
        return len(self._events) + self._downstream + self.unsent

    def _release(self, events: int) -> None:
        self._downstream -= events
        for channel in self.channels:
            channel.notify_space()

    def has_space(self) -> bool:
        return (
            self._flushing == 0
            and self._unsent is None
            and len(self._events) < self.capacity
            and super().has_space()
        )

    def _add(self, event: Any, acks: tuple[Ack, ...]) -> None:
        self.events_in += 1
        validated = self.spec.model.model_validate(event) if self.spec.model else event
        self._events.append(validated)
        self._acks.extend(acks)

    def _validated_add(self, event: Any, acks: tuple[Ack, ...]) -> None:
        try:
            self._add(event, acks)
        except Exception as error:
            self.errors += 1
            model = self.spec.model.__name__ if self.spec.model else "model"
            raise AccumulatorInputError(self.name, f"does not match {model}: {error}") from error

    def offer_nowait(
        self,
        event: Any,
        acks: tuple[Ack, ...] = (),
        message_key: Any = None,
        partition: int | None = None,
        shallow: bool = False,
    ) -> None:
        """Buffer one event; ``message_key``, ``partition`` and ``shallow`` are unused (a
        batch's value comes from many messages; batch events are not depth-checked)."""
        self._validated_add(event, acks)
        if len(self._events) >= self.capacity:
            task = asyncio.get_running_loop().create_task(self.flush())
            self._pending_flushes.add(task)
            task.add_done_callback(self._flush_done)

    def _flush_done(self, task: asyncio.Task[None]) -> None:
        self._pending_flushes.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("batch flush failed", accumulator=self.name, error=str(error))

    async def offer(
        self,
        event: Any,
        acks: tuple[Ack, ...] = (),
        message_key: Any = None,
        partition: int | None = None,
    ) -> None:
        self._validated_add(event, acks)
        if len(self._events) >= self.capacity:
            await self.flush()

    async def flush(self) -> None:
        """Turn everything buffered into one value and deliver it.

        A failed batch whose dead letter is still unsent goes first: if it cannot be
        sent now, this raises and keeps it (events and acks) for the next flush.
        """
        if self._unsent is not None:
            await self._send_unsent()
        if not self._events:
            return
        events, acks = self._events, tuple(self._acks)
        self._events, self._acks = [], []
        self._flushing += 1
        try:
            try:
                result = self.spec.fn(events)
                if asyncio.iscoroutine(result):
                    result = await result
            except Exception as error:
                self.errors += 1
                log.error(
                    "batch function failed",
                    accumulator=self.name,
                    size=len(events),
                    error=repr(error),
                )
                reason = f"batch function raised {error!r}"
                if self.on_batch_failure is None:
                    raise AccumulatorInputError(self.name, reason) from error
                self._unsent = _UnsentBatch(events, acks, reason)
                await self._send_unsent()
                return
            try:
                if result is not None:  # None delivers nothing: it needs no key
                    self._key(result, None)
            except AccumulatorInputError as error:
                log.error("batch value has no key", accumulator=self.name, error=error.reason)
                if self.on_batch_failure is None:
                    raise
                self._unsent = _UnsentBatch(events, acks, error.reason)
                await self._send_unsent()
                return
            count = len(events)
            self._downstream += count
            try:
                await self.deliver(result, (*acks, partial(self._release, count)))
            except BaseException:
                self._release(count)
                raise
        finally:
            self._flushing -= 1

    async def _send_unsent(self) -> None:
        """Dead-letter the failed batch; its acks settle only once the letter is sent."""
        unsent = self._unsent
        assert unsent is not None and self.on_batch_failure is not None
        await self.on_batch_failure(self.name, unsent.events, unsent.reason)
        self._unsent = None
        settle(unsent.acks)  # dead-lettered: handled, so offsets can move on

    async def _loop(self) -> None:
        """Flush every interval; a failed flush is logged and retried with backoff, so
        the task never dies of one (a dead-letter destination that is down, say)."""
        interval = self.spec.flush_interval or 1.0
        delay = interval
        while True:
            await self.clock.sleep(delay)
            try:
                await self.flush()
            except (AccumulatorInputError, ChannelClosedError):
                delay = interval
            except Exception as error:
                delay = min(max(delay, 0.1) * 2, max(interval, RETRY_BACKOFF_MAX))
                log.error(
                    "batch flush failed; retrying",
                    accumulator=self.name,
                    held=self.unsent + self.buffered,
                    retry_in=delay,
                    error=repr(error),
                )
            else:
                delay = interval

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=f"batch:{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._pending_flushes:
            await asyncio.gather(*self._pending_flushes, return_exceptions=True)
        try:
            await self.flush()
        except (AccumulatorInputError, ChannelClosedError):
            pass
        except Exception as error:  # stop() finishes: the final commit must still happen
            log.error(
                "batch not flushed at stop; its inputs stay uncommitted",
                accumulator=self.name,
                held=self.unsent + self.buffered,
                error=repr(error),
            )

    def health(self) -> dict[str, Any]:
        return {
            **super().health(),
            "buffered": self.buffered,
            "unsent": self.unsent,
            "held": self.held,
        }


class TableRunner(AccumulatorRunner):
    """A global (table) accumulator: keeps the latest value per key instead of delivering.

    Fed from every partition of its topic by ``connectors.kafka.global_table``; keyed
    reactors watching it read ``table[fired key]`` when they fire, it never fires them.
    A message with a null value removes its key (with ``key="@message"``).
    """

    def __init__(self, spec: AccumulatorSpec, channels: list[Channel]) -> None:
        super().__init__(spec, channels)
        self.table: dict[str, Any] = {}

    def deliver_nowait(
        self,
        value: Any,
        acks: tuple[Ack, ...] = (),
        message_key: Any = None,
        partition: int | None = None,
    ) -> None:
        if value is None:
            self.filtered += 1
        else:
            key = self._key(value, message_key)
            assert key is not None  # a global accumulator always has a key (check_scope)
            self.table[key] = value
            self._counted(value)
        settle(acks)

    async def deliver(
        self,
        value: Any,
        acks: tuple[Ack, ...] = (),
        message_key: Any = None,
        partition: int | None = None,
    ) -> None:
        self.deliver_nowait(value, acks, message_key, partition)

    def remove(self, message_key: Any) -> None:
        """A tombstone: forget the entry of the message's key (``key="@message"``)."""
        if self.spec.key == "@message" and message_key is not None:
            key = key_of(self.spec.name, self.spec.key, None, message_key)
            self.table.pop(key, None)

    def health(self) -> dict[str, Any]:
        return {**super().health(), "scope": "global", "keys": len(self.table)}


def make_runner(
    spec: AccumulatorSpec, channels: list[Channel], clock: Clock = SYSTEM_CLOCK
) -> AccumulatorRunner:
    """The runner class that fits the accumulator's kind; ``clock`` times polls and flushes."""
    if spec.kind is AccumulatorKind.POLLING:
        return PollingRunner(spec, channels, clock)
    if spec.kind is AccumulatorKind.BATCH:
        return BatchRunner(spec, channels, clock)
    if spec.scope == "global":
        return TableRunner(spec, channels)
    return AccumulatorRunner(spec, channels)
