"""The per-key firing rules of a keyed reactor, free of I/O.

Each key has its own ``FiringPolicy`` (input cache and dirty flags, so its own
``when_any``/``when_all`` criterion and ``latest`` coalescing) and, for ``sequential``,
its own queue in delivery order. Keys that owe a fire and have none running wait in a
FIFO ready queue. At most ``max_keys`` keys are kept: a new key evicts the least recently
active *idle* key (no fire running, nothing unfired or queued); when no key is idle the
new key is not admitted (``admits`` is False) and the loop stops taking values until one
is. Keys idle for longer than ``key_ttl`` are evicted by ``sweep``. Eviction never
touches an unsettled envelope.
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from headrace.accumulators.channel import Envelope
from headrace.reactors.declaration import InputStrategy, ReactorSpec
from headrace.reactors.policy import Fire, FiringPolicy


@dataclass(slots=True)
class KeyState:
    """What one key holds: its cache and dirty flags, its queue, whether a fire runs."""

    policy: FiringPolicy
    last_active: float
    queue: deque[tuple[Envelope, float]] = field(default_factory=deque)
    running: bool = False
    pending_since: float | None = None
    """When the oldest value not yet taken by a fire of this key arrived."""
    partition: int | None = None
    """The input partition its values come from (Kafka): its changelog partition."""
    dropped: bool = False
    """Its partition was revoked while a fire ran: forget it when the fire returns."""


class KeyedPolicy:
    """Applies keyed deliveries and hands out fires, one running fire per key at most."""

    def __init__(self, spec: ReactorSpec, clock: Callable[[], float] = time.monotonic) -> None:
        self.spec = spec
        self.clock = clock
        self.sequential = spec.strategy is InputStrategy.SEQUENTIAL
        self.keys: dict[str, KeyState] = {}
        self.ready: OrderedDict[str, None] = OrderedDict()  # owe a fire, none running
        self.idle: OrderedDict[str, None] = OrderedDict()  # evictable, least recent first
        self.fires = 0
        self.queued = 0  # sequential envelopes waiting in key queues
        self.evictions: Counter[str] = Counter()  # reason -> count
        self.evicted: list[tuple[str, str]] = []  # (key, reason) not logged yet
        self.tables: frozenset[str] = frozenset()
        """Global (table) accumulators: looked up at fire time, never awaited by when_all."""
        self.on_evict: Callable[[str, KeyState], None] | None = None
        """Told about each evicted key before it is forgotten (the changelog's tombstone)."""

    def _policy(self) -> FiringPolicy:
        policy = FiringPolicy(self.spec)
        policy.required -= len(self.tables)
        return policy

    # -- admission and eviction --------------------------------------------------------
    def admits(self, key: str) -> bool:
        """Whether a value of ``key`` can be taken now (evicting an idle key if needed)."""
        if key in self.keys:
            return True
        limit = self.spec.max_keys
        if limit is None or len(self.keys) < limit:
            return True
        if self.idle:
            self._evict(next(iter(self.idle)), "max_keys")
            return True
        return False

    def has_room(self, key: str) -> bool:
        """Whether ``admits(key)`` would hold, without evicting anything."""
        limit = self.spec.max_keys
        return key in self.keys or limit is None or len(self.keys) < limit or bool(self.idle)

    def sweep(self) -> None:
        """Evict keys idle for longer than ``key_ttl``."""
        ttl = self.spec.key_ttl
        if ttl is None:
            return
        cutoff = self.clock() - ttl
        expired = []
        for key in self.idle:
            if self.keys[key].last_active > cutoff:
                break  # idle keys are ordered by when they went idle: the rest are younger
            expired.append(key)
        for key in expired:
            self._evict(key, "ttl")

    def _evict(self, key: str, reason: str) -> None:
        if self.on_evict is not None:
            self.on_evict(key, self.keys[key])
        del self.keys[key]
        del self.idle[key]
        self.evictions[reason] += 1
        self.evicted.append((key, reason))

    # -- deliveries and fires ----------------------------------------------------------
    def apply(self, envelope: Envelope) -> None:
        """Take a delivery into its key's state; ``admits(envelope.key)`` must hold."""
        key = envelope.key
        if key is None:
            raise ValueError(
                f"reactor {self.spec.name!r} is keyed but accumulator "
                f"{envelope.accumulator!r} delivered a value without a key"
            )
        now = self.clock()
        state = self.keys.get(key)
        if state is None:
            state = self.keys[key] = KeyState(self._policy(), now)
        else:
            state.last_active = now
            self.idle.pop(key, None)
        if envelope.partition is not None:
            state.partition = envelope.partition
        if self.sequential:
            state.queue.append((envelope, now))
            self.queued += 1
        else:
            state.policy.apply(envelope)  # settles a superseded value of this key
        if state.pending_since is None:
            state.pending_since = now
        if not state.running and self._owes(state):
            self.ready[key] = None

    def _owes(self, state: KeyState) -> bool:
        return bool(state.queue) if self.sequential else state.policy.ready()

    def next_fire(self) -> Fire | None:
        """Start the fire of the key that has waited longest; None when no key is ready."""
        if not self.ready:
            return None
        key, _ = self.ready.popitem(last=False)
        state = self.keys[key]
        state.running = True
        if self.sequential:
            envelope, _arrived = state.queue.popleft()
            self.queued -= 1
            fire = state.policy.fire_with(envelope)
            state.pending_since = state.queue[0][1] if state.queue else None
        else:
            fire = state.policy.begin_fire()
            state.pending_since = None
        self.fires += 1
        fire.number = self.fires
        fire.key = key
        return fire

    def finished(self, key: str) -> None:
        """The fire of ``key`` returned: the key may fire again."""
        state = self.keys.get(key)
        if state is None:
            return
        if state.dropped:
            self._forget(key)
            return
        state.running = False
        state.last_active = self.clock()
        if self._owes(state):
            self.ready[key] = None
        elif not state.policy.dirty:  # nothing unsettled (when_all may hold a partial join)
            self.idle[key] = None

    # -- restoring and dropping (partitions moving between workers) ----------------------
    def restore(
        self, key: str, partition: int | None, values: Mapping[str, tuple[Any, bool]]
    ) -> None:
        """Put a key's cache back as its changelog kept it: ``{accumulator: (value, dirty)}``.

        A dirty value (delivered, not fired yet) owes a fire again; it carries no acks, as
        its offset was acked once it reached the changelog. A key already held is kept.
        """
        if key in self.keys:
            return
        now = self.clock()
        state = KeyState(self._policy(), now, partition=partition)
        for accumulator, (value, dirty) in values.items():
            if accumulator not in self.spec.accumulators:
                continue  # the reactor no longer watches it
            if dirty and not self.sequential:
                state.policy.apply(Envelope(accumulator, value, key=key, partition=partition))
            else:
                state.policy.cache[accumulator] = value
        self.keys[key] = state
        if self._owes(state):
            state.pending_since = now
            self.ready[key] = None
        elif not state.policy.dirty:
            self.idle[key] = None

    def drop_partition(self, partition: int) -> int:
        """Forget the keys of ``partition`` (revoked: another worker restores them);
        a key whose fire runs goes when the fire returns. Returns how many keys went."""
        dropped = 0
        for key, state in list(self.keys.items()):
            if state.partition != partition:
                continue
            dropped += 1
            if state.running:
                state.dropped = True
            else:
                self._forget(key)
        return dropped

    def _forget(self, key: str) -> None:
        state = self.keys.pop(key)
        self.ready.pop(key, None)
        self.idle.pop(key, None)
        if self.sequential:
            self.queued -= len(state.queue)

    # -- views -----------------------------------------------------------------------------
    def owed(self) -> bool:
        """Whether some key owes a fire that is not running yet."""
        return bool(self.ready)

    def unfired(self) -> list[Envelope]:
        """Every envelope taken but not consumed by a fire yet, over all keys."""
        out: list[Envelope] = []
        for state in self.keys.values():
            out.extend(state.policy.unfired())
            out.extend(envelope for envelope, _ in state.queue)
        return out

    def cache(self, key: str) -> dict[str, object]:
        """The inputs a fire of ``key`` would see now."""
        state = self.keys.get(key)
        return state.policy.snapshot() if state is not None else {}

    def oldest_pending(self) -> tuple[str, float] | None:
        """The key whose oldest value has waited longest for a fire, and how long (seconds)."""
        oldest: tuple[str, float] | None = None
        for key, state in self.keys.items():
            since = state.pending_since
            if since is not None and (oldest is None or since < oldest[1]):
                oldest = (key, since)
        if oldest is None:
            return None
        return oldest[0], max(0.0, self.clock() - oldest[1])
