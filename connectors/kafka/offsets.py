"""Per-partition offset tracking: commit only what has been fully handled.

Offsets are *begun* when a message is taken from Kafka (in increasing order per partition)
and *done* when it has been handled, in any order. Begun offsets are grouped in ranges: a
source opens one ``OffsetRange`` per run of messages of one partition in a fetched batch,
and the range itself is the ack of every message in it (called once per message, no
closure per message). The committable position of a partition is the first offset of its
oldest range not done yet (or the last begun offset + 1): it never passes an offset that
is begun but not done. Memory is bounded by the ranges in flight, not by how many
messages were consumed.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Iterable
from typing import Any

TP = Hashable
"""A partition key, e.g. ``(topic, partition)``."""


class OffsetRange:
    """Begun offsets ``first..last`` of one partition (``count`` messages, gaps allowed):
    each call acks one of them; the range is done once all ``count`` are.

    Acks may arrive before the range is closed (a value filtered at once): ``remaining``
    goes below zero until ``close`` adds the count, so it reaches zero exactly once.
    """

    __slots__ = ("count", "done", "first", "last", "owner", "remaining")

    def __init__(self, owner: PartitionOffsets, first: int) -> None:
        self.owner = owner
        self.first = first
        self.last = first
        self.count = 0
        self.remaining = 0
        self.done = False

    def __call__(self) -> None:
        self.remaining -= 1
        if self.remaining == 0:
            self.owner._finish(self)

    def close(self, count: int) -> None:
        """No more offsets join: ``count`` were begun, up to the owner's ``last_begun``."""
        owner = self.owner
        self.last = owner.last_begun
        self.count = count
        owner._held += count
        self.remaining += count
        if self.remaining == 0:
            owner._finish(self)

    def __repr__(self) -> str:
        return f"OffsetRange({self.first}..{self.last}, {self.count} begun, {self.remaining} open)"


class PartitionOffsets:
    """Offsets of one partition for one assignment generation.

    ``_ranges`` holds the ranges not yet below the position, oldest first. Once the
    partition is revoked, the tracker forgets this object, so acks bound to it (and to its
    ranges) change nothing the tracker reports.
    """

    __slots__ = ("_held", "_ranges", "committed", "last_begun", "position")

    def __init__(self) -> None:
        self._ranges: deque[OffsetRange] = deque()
        self._held = 0
        self.position: int | None = None
        self.committed: int | None = None
        self.last_begun = -1

    def open(self, first: int) -> OffsetRange:
        """Start a range at ``first``; the caller sets ``last_begun`` for each further
        offset it takes (increasing), then calls ``close`` on the range."""
        if first <= self.last_begun:
            raise ValueError(f"offset {first} begun after {self.last_begun}: must increase")
        self.last_begun = first
        window = OffsetRange(self, first)
        self._ranges.append(window)
        return window

    def begin(self, offset: int) -> OffsetRange:
        """Begin one offset; returns its ack (a closed range of one)."""
        window = self.open(offset)
        window.close(1)
        return window

    def _finish(self, window: OffsetRange) -> None:
        if window.done:
            return
        window.done = True
        ranges = self._ranges
        if not ranges or ranges[0] is not window:
            return  # waits for an older range
        while ranges and ranges[0].done:
            self._held -= ranges.popleft().count
        self.position = ranges[0].first if ranges else self.last_begun + 1

    def done(self, offset: int) -> None:
        """Ack ``offset`` when it is the only offset of its range (unknown: ignored)."""
        for window in self._ranges:
            if window.first == offset == window.last and window.count == 1:
                if not window.done and window.remaining > 0:
                    window()
                return

    @property
    def in_flight(self) -> int:
        """Begun offsets not yet below the position (done ones behind an open range count)."""
        return self._held

    def advanced(self) -> bool:
        return self.position is not None and (
            self.committed is None or self.position > self.committed
        )


class OffsetTracker:
    """Tracks begun/done offsets per partition and says what may be committed.

    Not thread-safe: use it from one thread (the event loop).
    """

    def __init__(self) -> None:
        self._partitions: dict[TP, PartitionOffsets] = {}

    def partition(self, tp: TP) -> PartitionOffsets:
        """The current state of ``tp`` (created on first use)."""
        state = self._partitions.get(tp)
        if state is None:
            state = self._partitions[tp] = PartitionOffsets()
        return state

    def begin(self, tp: TP, offset: int) -> Callable[[], None]:
        """Record that ``offset`` was taken; returns an ack that marks it done.

        The ack is bound to the current assignment of ``tp``: after ``revoke`` it does
        nothing, even if the partition has been assigned again since.
        """
        return self.partition(tp).begin(offset)

    def done(self, tp: TP, offset: int) -> None:
        """Mark ``offset`` of the current assignment of ``tp`` handled (unknown: ignored).

        Prefer the ack from ``begin``: it cannot touch a later assignment of ``tp``.
        """
        state = self._partitions.get(tp)
        if state is not None:
            state.done(offset)

    def committable(self, tps: Iterable[TP] | None = None) -> dict[TP, int]:
        """``{tp: next offset to commit}`` for partitions that advanced since the last commit."""
        partitions = self._partitions
        keys = partitions if tps is None else [tp for tp in tps if tp in partitions]
        result: dict[TP, int] = {}
        for tp in keys:
            state = partitions[tp]
            if state.advanced():
                result[tp] = state.position  # type: ignore[assignment]
        return result

    def mark_committed(self, offsets: dict[TP, int]) -> None:
        """Record a successful commit of ``offsets``; later calls with older offsets are no-ops."""
        for tp, offset in offsets.items():
            state = self._partitions.get(tp)
            if state is not None and (state.committed is None or offset > state.committed):
                state.committed = offset

    def revoke(self, tps: Iterable[TP]) -> None:
        """Forget ``tps``; completions still in flight for them are ignored."""
        for tp in tps:
            self._partitions.pop(tp, None)

    def position(self, tp: TP) -> int | None:
        state = self._partitions.get(tp)
        return None if state is None else state.position

    def in_flight(self, tp: TP | None = None) -> int:
        if tp is not None:
            state = self._partitions.get(tp)
            return 0 if state is None else state.in_flight
        return sum(state.in_flight for state in self._partitions.values())

    def partitions(self) -> list[TP]:
        return list(self._partitions)

    def stats(self) -> dict[Any, dict[str, int | None]]:
        return {
            tp: {"position": s.position, "committed": s.committed, "in_flight": s.in_flight}
            for tp, s in self._partitions.items()
        }
