"""Pause/seek/resume bookkeeping of a Kafka source, without a consumer.

The source decides *when* a partition stops or starts taking messages; this class keeps
*which* partitions are assigned, paused, and waiting for a pause (and a seek back) to be
applied on the consumer thread. Everything here runs on the event loop; the consumer calls
themselves stay in ``source.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

TP = tuple[str, int]


def label(tp: TP) -> str:
    """A partition as log and health output shows it: ``"topic[p]"``."""
    return f"{tp[0]}[{tp[1]}]"


def labels(tps: Iterable[TP]) -> list[str]:
    """Partitions as sorted ``"topic[p]"`` strings (JSON-safe log fields)."""
    return sorted(label(tp) for tp in tps)


def labelled(offsets: dict[TP, int]) -> dict[str, int]:
    """``{"topic[p]": offset}``: a tuple-keyed dict made JSON-safe for logs."""
    return {label(tp): offset for tp, offset in sorted(offsets.items())}


def released_on_assign(tps: Iterable[TP], keep_paused: Iterable[TP]) -> list[TP]:
    """Newly assigned partitions to resume explicitly: all but those kept paused.

    librdkafka keeps a partition's pause flag across unassign (librdkafka #1849), so a
    partition paused, revoked and assigned back would otherwise never be fetched again.
    """
    keep = set(keep_paused)
    return [tp for tp in tps if tp not in keep]


class PartitionFlow:
    """Assigned and paused partitions, and the pauses/seeks still to apply.

    ``paused`` holds every partition the source holds back (applied or not);
    ``to_pause`` those to pause on the consumer before the next fetch, with the offset to
    seek back to (``None``: pause only); ``applying`` those whose pause/seek the consumer
    thread is applying right now: they are never resumed until it is done, or a seek that
    fails would be lost and the partition would resume past messages it never took.
    ``stats`` is the source's counter dict (``pauses``, ``resumes``).
    """

    __slots__ = ("applying", "assigned", "paused", "stats", "to_pause")

    def __init__(self, stats: dict[str, Any] | None = None) -> None:
        self.assigned: set[TP] = set()
        self.paused: set[TP] = set()
        self.to_pause: dict[TP, int | None] = {}
        self.applying: set[TP] = set()
        self.stats: dict[str, Any] = stats if stats is not None else {"pauses": 0, "resumes": 0}

    # -- queries -------------------------------------------------------------------------
    def active(self, topic: str) -> list[TP]:
        """Assigned partitions of ``topic`` that are not held back."""
        paused = self.paused
        return [tp for tp in self.assigned if tp[0] == topic and tp not in paused]

    def is_paused(self, tp: TP) -> bool:
        return tp in self.paused

    # -- pausing -------------------------------------------------------------------------
    def pause(self, tp: TP, offset: int | None) -> None:
        """Hold ``tp`` back; before the next fetch it is paused and, with an offset,
        rewound to it (the first event not delivered)."""
        self.paused.add(tp)
        self._owe(tp, offset)
        self.stats["pauses"] += 1

    def _owe(self, tp: TP, offset: int | None) -> None:
        """Queue a pause of ``tp``; of two seeks back, the earlier offset wins (a later
        pause never drops a seek still to apply)."""
        if tp not in self.to_pause:
            self.to_pause[tp] = offset
        elif offset is not None:
            pending = self.to_pause[tp]
            self.to_pause[tp] = offset if pending is None else min(pending, offset)

    def rewind(self, tp: TP, offset: int) -> None:
        """A message of paused ``tp`` arrived anyway (fetched before the pause took effect):
        make sure the partition is sought back to ``offset`` at the latest."""
        self._owe(tp, offset)

    def take_pending(self) -> dict[TP, int | None]:
        """The pauses (and seeks) to apply on the consumer now; until ``applied`` is
        called with them, those partitions are not resumed."""
        pauses, self.to_pause = self.to_pause, {}
        self.applying.update(pauses)
        return pauses

    def applied(self, pauses: dict[TP, int | None], failed: dict[TP, int | None]) -> None:
        """The consumer thread applied ``pauses``, except ``failed`` (applied again before
        the next fetch, so the partition stays out until its seek works)."""
        self.applying.difference_update(pauses)
        for tp, offset in failed.items():
            if tp in self.paused:
                self._owe(tp, offset)

    # -- resuming ------------------------------------------------------------------------
    def take_ready(self, can_resume: Callable[[TP], bool]) -> list[TP]:
        """Paused partitions to resume now (``can_resume`` says whether there is room);
        they count as resumed from here on."""
        busy = self.to_pause.keys() | self.applying
        ready = [tp for tp in self.paused if tp not in busy and can_resume(tp)]
        if ready:
            self.paused.difference_update(ready)
            self.stats["resumes"] += len(ready)
        return ready

    def resume_failed(self, tps: Iterable[TP]) -> None:
        """The consumer could not resume ``tps``: they are still paused there (those still
        assigned are held again, so that the resume is retried)."""
        self.paused.update(tp for tp in tps if tp in self.assigned)

    # -- rebalancing ---------------------------------------------------------------------
    def assign(self, tps: Iterable[TP], must_pause: Callable[[TP], bool]) -> list[TP]:
        """Track newly assigned ``tps``; returns the assigned partitions to keep paused
        (held back already, or ``must_pause``)."""
        tps = list(tps)
        self.assigned.update(tps)
        for tp in tps:
            self.to_pause.pop(tp, None)  # a fresh assignment starts at the committed offset
            if tp not in self.paused and must_pause(tp):
                self.paused.add(tp)
                self.stats["pauses"] += 1
        return [tp for tp in self.paused if tp in self.assigned]

    def revoke(self, tps: Iterable[TP]) -> None:
        """Forget ``tps`` (revoked or lost)."""
        for tp in tps:
            self.assigned.discard(tp)
            self.paused.discard(tp)
            self.to_pause.pop(tp, None)


class Budget:
    """Work in flight (a count and its bytes) against caps, with hysteresis: ``full``
    from the moment either cap is reached until both are back to half."""

    __slots__ = ("bytes", "count", "full", "max_bytes", "max_count")

    def __init__(self, max_count: int, max_bytes: int) -> None:
        self.max_count = max_count
        self.max_bytes = max_bytes
        self.count = 0
        self.bytes = 0
        self.full = False

    def add(self, size: int) -> bool:
        """Take one item of ``size`` bytes; returns whether the budget is now full."""
        self.count += 1
        self.bytes += size
        if self.count >= self.max_count or self.bytes >= self.max_bytes:
            self.full = True
        return self.full

    def remove(self, size: int) -> bool:
        """Release one item; returns whether this reopened a full budget."""
        self.count -= 1
        self.bytes -= size
        if self.full and self.count * 2 <= self.max_count and self.bytes * 2 <= self.max_bytes:
            self.full = False
            return True
        return False
