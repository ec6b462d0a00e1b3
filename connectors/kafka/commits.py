"""Commit bookkeeping of a Kafka source: what to commit, when, and what the broker took.

``Commits`` reads the committable positions from an ``OffsetTracker``, hands them to a
consumer (anything with ``commit(offsets=..., asynchronous=...)``) and records what was
accepted. The consumer calls happen on the consumer thread; ``take``/``accepted`` on the
event loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import structlog
from confluent_kafka import KafkaError, KafkaException

from headrace.connectors.kafka.flow import labelled
from headrace.connectors.kafka.offsets import OffsetTracker

log = structlog.get_logger("headrace.kafka")

TP = tuple[str, int]


class CommittedPartition(Protocol):
    """What a consumer reports per partition (confluent-kafka's ``TopicPartition``)."""

    topic: str
    partition: int
    offset: int
    error: Any


class Committer(Protocol):
    def commit(self, *, offsets: list[Any], asynchronous: bool) -> list[Any] | None: ...


MakeTP = Callable[[str, int, int], Any]
"""Builds the consumer's partition object, e.g. ``confluent_kafka.TopicPartition``."""


def accepted_offsets(partitions: Iterable[CommittedPartition]) -> dict[TP, int]:
    """``{(topic, partition): offset}`` of the partitions committed without an error."""
    return {(tp.topic, tp.partition): tp.offset for tp in partitions if tp.error is None}


class Commits:
    """When to commit and what; counts commits and failures in ``stats``."""

    def __init__(
        self,
        tracker: OffsetTracker,
        interval: float,
        make_tp: MakeTP,
        stats: dict[str, Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tracker = tracker
        self.interval = interval
        self.make_tp = make_tp
        self.stats: dict[str, Any] = (
            stats if stats is not None else {"commits": 0, "commit_failures": 0}
        )
        self.clock = clock
        self.last = clock()

    def due(self) -> bool:
        """Has ``interval`` passed since the last commit?"""
        return self.clock() - self.last >= self.interval

    def take(self, tps: Iterable[TP] | None = None) -> dict[TP, int]:
        """What may be committed now (positions that advanced); starts a new interval."""
        if tps is None:
            self.last = self.clock()
        return self.tracker.committable(tps)  # type: ignore[return-value]

    def accepted(self, offsets: dict[TP, int]) -> None:
        """The broker took ``offsets`` (event loop)."""
        self.tracker.mark_committed(offsets)  # type: ignore[arg-type]

    # -- consumer thread -----------------------------------------------------------------
    def _partitions(self, offsets: dict[TP, int]) -> list[Any]:
        return [self.make_tp(t, p, o) for (t, p), o in offsets.items()]

    def commit_async(self, consumer: Committer, offsets: dict[TP, int]) -> None:
        """Start a commit; its result arrives through ``on_commit``."""
        if not offsets:
            return
        try:
            consumer.commit(offsets=self._partitions(offsets), asynchronous=True)
        except KafkaException as error:
            self.stats["commit_failures"] += 1
            log.warning("commit failed", error=str(error))

    def commit_sync(self, consumer: Committer | None, offsets: dict[TP, int]) -> dict[TP, int]:
        """Commit and wait; returns what the broker accepted."""
        if consumer is None or not offsets:
            return {}
        try:
            result = consumer.commit(offsets=self._partitions(offsets), asynchronous=False) or []
        except KafkaException as error:
            self.stats["commit_failures"] += 1
            log.warning("commit failed", error=str(error), offsets=labelled(offsets))
            return {}
        self.stats["commits"] += 1
        return accepted_offsets(result)

    def on_commit(
        self, error: KafkaError | None, partitions: list[CommittedPartition]
    ) -> dict[TP, int]:
        """An asynchronous commit's result; returns the accepted offsets (maybe none)."""
        if error is not None:
            self.stats["commit_failures"] += 1
            if error.code() != KafkaError._NO_OFFSET:
                log.warning("commit failed", error=str(error))
            return {}
        self.stats["commits"] += 1
        return accepted_offsets(partitions)
