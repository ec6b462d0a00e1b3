"""Commits: what a Kafka source commits, when, and what it records as accepted."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from headrace.connectors.kafka.commits import Commits
from headrace.connectors.kafka.offsets import OffsetTracker


@dataclass
class FakeTP:
    topic: str
    partition: int
    offset: int
    error: Any = None


class FakeConsumer:
    def __init__(self, fail: KafkaError | None = None) -> None:
        self.fail = fail
        self.calls: list[tuple[list[FakeTP], bool]] = []

    def commit(self, *, offsets: list[FakeTP], asynchronous: bool) -> list[FakeTP] | None:
        self.calls.append((offsets, asynchronous))
        if self.fail is not None:
            raise KafkaException(self.fail)
        return None if asynchronous else offsets


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def commits_with(done: int, clock: Clock | None = None) -> tuple[Commits, OffsetTracker]:
    tracker = OffsetTracker()
    for offset in range(done):
        tracker.begin(("t", 0), offset)()
    tracker.begin(("t", 0), done)  # in flight: the position stops here
    return Commits(tracker, 1.0, FakeTP, clock=clock or Clock()), tracker


def test_due_after_the_interval_and_take_restarts_it() -> None:
    clock = Clock()
    commits, _ = commits_with(3, clock)
    assert not commits.due()
    clock.now += 1.0
    assert commits.due()
    assert commits.take() == {("t", 0): 3}
    assert not commits.due()


def test_sync_commit_records_what_the_broker_accepted() -> None:
    commits, tracker = commits_with(3)
    consumer = FakeConsumer()
    accepted = commits.commit_sync(consumer, commits.take())
    assert accepted == {("t", 0): 3}
    assert consumer.calls == [([FakeTP("t", 0, 3)], False)]
    commits.accepted(accepted)
    assert tracker.committable() == {}
    assert commits.stats == {"commits": 1, "commit_failures": 0}


def test_a_partition_the_broker_refused_is_not_accepted() -> None:
    commits, _ = commits_with(3)
    refused = [
        FakeTP("t", 0, 3, error=KafkaError(KafkaError.ILLEGAL_GENERATION)),
        FakeTP("u", 1, 8),
    ]
    assert commits.on_commit(None, refused) == {("u", 1): 8}


def test_a_failed_sync_commit_accepts_nothing_and_counts() -> None:
    commits, tracker = commits_with(3)
    consumer = FakeConsumer(fail=KafkaError(KafkaError.ILLEGAL_GENERATION))
    assert commits.commit_sync(consumer, commits.take()) == {}
    assert commits.stats["commit_failures"] == 1
    assert tracker.committable() == {("t", 0): 3}  # still to commit


@pytest.mark.parametrize("code", [KafkaError._NO_OFFSET, KafkaError.REBALANCE_IN_PROGRESS])
def test_a_failed_async_commit_accepts_nothing(code: int) -> None:
    commits, _ = commits_with(3)
    assert commits.on_commit(KafkaError(code), []) == {}
    assert commits.stats["commit_failures"] == 1


def test_nothing_to_commit_calls_nothing() -> None:
    commits, _ = commits_with(0)
    consumer = FakeConsumer()
    assert commits.commit_sync(consumer, commits.take()) == {}
    commits.commit_async(consumer, {})
    assert consumer.calls == []
