"""The firing loop of a keyed reactor: fires of different keys run concurrently."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import structlog

from headrace.accumulators.channel import Channel, Envelope
from headrace.accumulators.runners import AccumulatorRunner, TableRunner
from headrace.reactors.declaration import ReactorSpec
from headrace.reactors.keyed import set_fire_key
from headrace.reactors.keyed_policy import KeyedPolicy, KeyState
from headrace.reactors.keyed_state import KeyedStateLog
from headrace.reactors.loop import FireHandler, ReactorLoop, ReactorState
from headrace.reactors.policy import Fire

log = structlog.get_logger("headrace.reactors")

RATE_WINDOW = 10
"""Seconds over which ``fires_per_second`` is measured."""


class KeyedReactorLoop(ReactorLoop):
    """Runs a keyed reactor: per-key firing rules, up to ``max_concurrency`` fires at once.

    Never two fires of one key at once, and one key's fires start in its delivery order
    (``sequential``) or on its newest values (``latest``). Values are taken from the
    channels into the key states as they arrive; a fire's envelopes settle after the
    handler returned, exactly as in ``ReactorLoop``. While a new key cannot be admitted
    (``max_keys`` keys, none idle) the loop stops taking values from that channel
    (``sequential``: from every channel, to keep delivery order), so the channel fills
    and its sources wait. ``sequential`` key queues hold at most as many values as the
    channels together.
    """

    def __init__(
        self,
        spec: ReactorSpec,
        channels: dict[str, Channel],
        handler: FireHandler,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(spec, channels, handler)
        self.per_key = KeyedPolicy(spec, clock)
        self._clock = clock
        self._running: set[asyncio.Task[None]] = set()
        self._blocked: str | None = None  # the key waiting for a slot, if any
        self._queue_limit = sum(channel.maxsize for channel in channels.values())
        self._per_second: deque[tuple[int, int]] = deque()  # (second, fires finished)
        self._failed = False
        self._stall_logged: str | None = None
        self.changelog: KeyedStateLog | None = None
        """Backs the per-key state (a Kafka changelog); set before the loop starts."""
        self.restored_keys = 0
        self.restores = 0
        self.last_restore_seconds: float | None = None
        self.per_key.on_evict = self._evicted
        self.tables: dict[str, dict[str, Any]] = {}
        """Global (table) accumulators: ``{name: {key: latest value}}``."""

    def use_tables(self, tables: dict[str, dict[str, Any]]) -> None:
        """Look these tables up for each fired key (set before the loop starts)."""
        self.tables = tables
        self.per_key.tables = frozenset(tables)

    @property
    def fire_count(self) -> int:
        return self.per_key.fires

    @property
    def running(self) -> int:
        return len(self._running)

    # -- the loop ------------------------------------------------------------------------
    async def _run(self) -> None:
        try:
            while not self._failed:
                if not self._paused:
                    self._take()
                    self._start_fires()
                self.per_key.sweep()
                self._log_evictions()
                self._warn_if_stalled()
                if self._stopping and not self._running and self._idle():
                    return
                await self._wait()
        except Exception as error:  # a broken loop must not look like a running reactor
            self._failed = True
            self.state = ReactorState.FAILED
            self.last_error = repr(error)
            log.exception("keyed reactor loop failed", reactor=self.name, error=repr(error))
            for channel in self.channels.values():
                channel.close(f"reactor {self.name!r} failed: {error}")
        finally:
            if self._running:
                await asyncio.gather(*self._running, return_exceptions=True)
            self._log_evictions()

    async def _wait(self) -> None:
        ttl = self.spec.key_ttl
        if ttl is None or not self.per_key.keys:
            await self._wakeup.wait()
        else:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(ttl / 4, 0.01)):
                    await self._wakeup.wait()
        self._wakeup.clear()

    def _take(self) -> None:
        """Move values from the channels into the key states, as far as keys admit them."""
        self._blocked = None
        if self.per_key.sequential:
            self._take_in_order()
            return
        per_key = self.per_key
        for channel in self.channels.values():
            while channel.depth:
                head = channel.peek()
                assert head is not None
                if head.key is not None and not per_key.admits(head.key):
                    self._blocked = head.key
                    break
                envelope = channel.take()
                if self.changelog is not None and envelope.key is not None:
                    self.changelog.recorded(envelope)
                per_key.apply(envelope)

    def _take_in_order(self) -> None:
        per_key = self.per_key
        while per_key.queued < self._queue_limit:
            head = self._oldest_head()
            if head is None:
                return
            channel, envelope = head
            if envelope.key is not None and not per_key.admits(envelope.key):
                self._blocked = envelope.key
                return
            per_key.apply(channel.take())

    def _oldest_head(self) -> tuple[Channel, Envelope] | None:
        oldest: tuple[Channel, Envelope] | None = None
        for channel in self.channels.values():
            head = channel.peek()
            if head is not None and (oldest is None or head.seq < oldest[1].seq):
                oldest = (channel, head)
        return oldest

    def _start_fires(self) -> None:
        limit = self.spec.max_concurrency
        while len(self._running) < limit:
            fire = self.per_key.next_fire()
            if fire is None:
                return
            task = asyncio.create_task(self._run_fire(fire), name=f"fire:{self.name}:{fire.key}")
            self._running.add(task)
            task.add_done_callback(self._fire_done)

    async def _run_fire(self, fire: Fire) -> None:
        set_fire_key(fire.key)  # this task's own context: graphs and sinks read the key
        for name, table in self.tables.items():
            fire.inputs[name] = table.get(fire.key) if fire.key is not None else None
        try:
            await self._fire(fire)
        except Exception:
            self._failed = True
            raise
        if self.changelog is not None and fire.key is not None:
            self._log_fired(fire)
        self.per_key.finished(fire.key or "")
        self._count_fire()

    # -- the state log and partitions moving ---------------------------------------------
    def _log_fired(self, fire: Fire) -> None:
        """Log the fired values of ``fire.key`` that no newer (dirty) value replaced."""
        assert self.changelog is not None and fire.key is not None
        state = self.per_key.keys.get(fire.key)
        if state is None or state.dropped:
            return
        dirty = state.policy.dirty
        cache = state.policy.cache
        fired = {envelope.accumulator for envelope in fire.envelopes}
        values = [(name, cache[name]) for name in fired if name not in dirty and name in cache]
        if values:
            self.changelog.fired(fire.key, state.partition, values)

    def _evicted(self, key: str, state: KeyState) -> None:
        if self.changelog is not None:
            self.changelog.forget(key, state.partition, list(state.policy.cache))

    def restore(self, partition: int, keys: dict[str, dict[str, tuple[Any, bool]]]) -> int:
        """Put back the keys of ``partition`` read from the changelog; returns how many.

        The cyclic garbage collector is paused meanwhile: it would rescan the growing heap
        again and again while ~100,000 small objects are made (3x slower measured)."""
        collecting = gc.isenabled()
        gc.disable()
        try:
            for key, values in keys.items():
                self.per_key.restore(key, partition, values)
        finally:
            if collecting:
                gc.enable()
        self.restored_keys += len(keys)
        self._wakeup.set()
        return len(keys)

    def drop_partition(self, partition: int) -> int:
        """Forget the keys of a revoked partition; returns how many."""
        dropped = self.per_key.drop_partition(partition)
        self._wakeup.set()
        return dropped

    def _fire_done(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        if not task.cancelled():
            task.exception()  # failures are logged by _fire and stop the loop
        self._wakeup.set()

    def _idle(self) -> bool:
        if self._paused:
            return True
        self._take()
        return not self.per_key.owed()

    # -- health ----------------------------------------------------------------------------
    def _count_fire(self) -> None:
        second = int(self._clock())
        window = self._per_second
        if window and window[-1][0] == second:
            window[-1] = (second, window[-1][1] + 1)
        else:
            window.append((second, 1))
        while window and window[0][0] <= second - RATE_WINDOW:
            window.popleft()

    def fires_per_second(self) -> float:
        """Fires finished per second over the last ``RATE_WINDOW`` seconds."""
        now = int(self._clock())
        return sum(n for second, n in self._per_second if second > now - RATE_WINDOW) / RATE_WINDOW

    def _warn_if_stalled(self) -> None:
        """Log once per key that waits for a slot no fire will free (when_all keys hold all)."""
        blocked = self._blocked
        stalled = blocked is not None and not self._running and not self.per_key.owed()
        if stalled and blocked != self._stall_logged:
            log.warning(
                "keyed reactor waits for a free key slot: every kept key holds values waiting "
                "for its criterion",
                reactor=self.name,
                key=blocked,
                max_keys=self.spec.max_keys,
            )
            self._stall_logged = blocked
        elif blocked is None:
            self._stall_logged = None

    def _log_evictions(self) -> None:
        evicted = self.per_key.evicted
        if not evicted:
            return
        by_reason: dict[str, list[str]] = {}
        for key, reason in evicted:
            by_reason.setdefault(reason, []).append(key)
        evicted.clear()
        for reason, keys in by_reason.items():
            log.info(
                "keys evicted",
                reactor=self.name,
                reason=reason,
                count=len(keys),
                keys=keys[:10],
                total=self.per_key.evictions[reason],
            )

    @property
    def busy(self) -> bool:
        """Whether a fire runs, or values wait that a fire will take."""
        if self._running:
            return True
        if self._paused or self.state is ReactorState.FAILED:
            return False
        if self.per_key.owed():
            return True
        # values left in a channel are work unless they wait for a key slot nobody frees
        blocked = self._blocked
        if blocked is not None and not self.per_key.has_room(blocked):
            return False
        return any(channel.depth for channel in self.channels.values())

    def health(self) -> dict[str, Any]:
        per_key = self.per_key
        oldest = per_key.oldest_pending()
        return {
            **super().health(),
            "keyed": True,
            "keys": len(per_key.keys),
            "max_keys": self.spec.max_keys,
            "key_ttl": self.spec.key_ttl,
            "max_concurrency": self.spec.max_concurrency,
            "running_fires": len(self._running),
            "ready_keys": len(per_key.ready),
            "fires_per_second": self.fires_per_second(),
            "oldest_pending_key": oldest[0] if oldest else None,
            "oldest_pending_age": oldest[1] if oldest else None,
            "evictions": dict(per_key.evictions),
            "waiting_for_key_slot": self._blocked,
            "changelog": self.changelog is not None,
            "restores": self.restores,
            "restored_keys": self.restored_keys,
            "last_restore_seconds": self.last_restore_seconds,
        }


def attach_tables(
    reactors: dict[str, ReactorLoop], accumulators: dict[str, AccumulatorRunner]
) -> None:
    """Give each keyed reactor the tables of the global accumulators it watches.

    Raises ``ValueError`` naming the reactor when an unkeyed reactor watches a table, or
    when a reactor watches nothing but tables (a table never fires).
    """
    for name, loop in reactors.items():
        tables = {
            accumulator: runner.table
            for accumulator in loop.spec.accumulators
            if isinstance(runner := accumulators.get(accumulator), TableRunner)
        }
        if not tables:
            continue
        if not isinstance(loop, KeyedReactorLoop):
            raise ValueError(
                f"reactor {name!r} watches global (table) accumulators {sorted(tables)}: only "
                "keyed reactors (keyed=True) look a table up, by the fired key"
            )
        if len(tables) == len(loop.spec.accumulators):
            raise ValueError(
                f"reactor {name!r} watches only global (table) accumulators {sorted(tables)}: "
                "a table never fires; add a stream accumulator to fire on"
            )
        loop.use_tables(tables)
