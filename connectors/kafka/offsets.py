"""Per-partition offset tracking: commit only what has been fully handled.

Offsets are *begun* when a message is taken from Kafka (in increasing order per partition)
and *done* when it has been handled, in any order. The committable position of a partition
is the highest contiguous done offset + 1: it never passes an offset that is begun but not
done. Memory is bounded by the offsets in flight, not by how many were consumed.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Iterable
from functools import partial
from typing import Any

TP = Hashable
"""A partition key, e.g. ``(topic, partition)``."""


class PartitionOffsets:
    """Offsets of one partition for one assignment generation.

    ``_inflight`` holds begun offsets not yet below the position, in increasing order;
    ``_done`` holds done offsets that still wait for a smaller one. Once the partition is
    revoked, the tracker forgets this object, so acks bound to it change nothing.
    """

    __slots__ = ("_done", "_inflight", "committed", "last_begun", "position")

    def __init__(self) -> None:
        self._inflight: deque[int] = deque()
        self._done: set[int] = set()
        self.position: int | None = None
        self.committed: int | None = None
        self.last_begun = -1

    def begin(self, offset: int) -> None:
        if offset <= self.last_begun:
            raise ValueError(f"offset {offset} begun after {self.last_begun}: must increase")
        self.last_begun = offset
        self._inflight.append(offset)

    def done(self, offset: int) -> None:
        inflight = self._inflight
        if inflight and inflight[0] == offset:
            inflight.popleft()
            done = self._done
            while inflight and inflight[0] in done:
                done.discard(inflight.popleft())
            self.position = inflight[0] if inflight else self.last_begun + 1
        elif inflight and inflight[0] < offset <= self.last_begun:
            self._done.add(offset)
        # else: never begun here, or already done: ignore

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

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
        state = self.partition(tp)
        state.begin(offset)
        return partial(state.done, offset)

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
