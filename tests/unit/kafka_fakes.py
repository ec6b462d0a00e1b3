"""A fake confluent-kafka consumer for unit tests of ``KafkaSource`` (no broker).

``install(monkeypatch)`` makes ``KafkaSource`` build a ``FakeConsumer``; the test feeds it
messages with ``add`` and drives rebalances with ``assign``/``revoke``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

TP = tuple[str, int]


class FakeMessage:
    def __init__(
        self, topic: str, partition: int, offset: int, value: bytes | None, error: Any = None
    ) -> None:
        self._topic, self._partition, self._offset = topic, partition, offset
        self._value, self._error = value, error

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes | None:
        return self._value

    def key(self) -> bytes | None:
        return None

    def error(self) -> Any:
        return self._error


class FakeConsumer:
    """Partitions with a log each; honours pause, resume, seek and (in)cremental assign."""

    instances: list[FakeConsumer] = []

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.logs: dict[TP, list[bytes | None]] = {}
        self.positions: dict[TP, int] = {}
        self.assigned: set[TP] = set()
        self.paused: set[TP] = set()  # survives unassign, as in librdkafka (#1849)
        self.committed: dict[TP, int] = {}
        self.calls: list[tuple[str, Any]] = []
        self.closed = False
        self.callbacks: dict[str, Callable[..., Any]] = {}
        self.lock = threading.Lock()
        self.seek_hook: Callable[[TP, int], None] | None = None
        self.resume_hook: Callable[[list[TP]], None] | None = None
        self.assignment_hook: Callable[[], None] | None = None
        self.commit_error: KafkaError | None = None
        self.poll_error: KafkaError | None = None
        self.poll_raises: BaseException | None = None
        FakeConsumer.instances.append(self)

    # -- test controls ---------------------------------------------------------------
    def add(self, tp: TP, values: list[Any]) -> None:
        with self.lock:
            self.logs.setdefault(tp, []).extend(
                v if v is None or isinstance(v, bytes) else orjson.dumps(v) for v in values
            )

    def rebalance(self, kind: str, tps: list[TP]) -> None:
        """Run the on_assign/on_revoke/on_lost callback (as poll would)."""
        self.callbacks[kind](self, [TopicPartition(t, p) for t, p in tps])

    # -- consumer API ------------------------------------------------------------------
    def subscribe(self, topics: list[str], **callbacks: Any) -> None:
        self.topics = topics
        self.callbacks = callbacks

    def _take(self, limit: int) -> list[FakeMessage]:
        out: list[FakeMessage] = []
        with self.lock:
            if self.poll_raises is not None:
                error, self.poll_raises = self.poll_raises, None
                raise error
            if self.poll_error is not None:
                error, self.poll_error = self.poll_error, None
                return [FakeMessage("", -1, -1, None, error)]
            for tp in sorted(self.assigned - self.paused):
                log = self.logs.get(tp, [])
                position = self.positions.get(tp, self.committed.get(tp, 0))
                while position < len(log) and len(out) < limit:
                    out.append(FakeMessage(tp[0], tp[1], position, log[position]))
                    position += 1
                self.positions[tp] = position
        return out

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[FakeMessage]:
        return self._take(num_messages)

    def poll(self, timeout: float | None = None) -> FakeMessage | None:
        messages = self._take(1)
        if not messages:
            threading.Event().wait(min(timeout or 0.0, 0.01))
        return messages[0] if messages else None

    def assignment(self) -> list[TopicPartition]:
        if self.assignment_hook is not None:
            self.assignment_hook()
        return [TopicPartition(t, p) for t, p in sorted(self.assigned)]

    def _assign(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            key = (tp.topic, tp.partition)
            self.assigned.add(key)
            self.positions.pop(key, None)  # fetch from the committed offset

    def incremental_assign(self, partitions: list[TopicPartition]) -> None:
        self.calls.append(("assign", [(p.topic, p.partition) for p in partitions]))
        self._assign(partitions)

    def assign(self, partitions: list[TopicPartition]) -> None:
        self.assigned = set()
        self._assign(partitions)

    def incremental_unassign(self, partitions: list[TopicPartition]) -> None:
        self.calls.append(("unassign", [(p.topic, p.partition) for p in partitions]))
        for tp in partitions:
            self.assigned.discard((tp.topic, tp.partition))

    def unassign(self) -> None:
        self.assigned = set()

    def pause(self, partitions: list[TopicPartition]) -> None:
        tps = [(p.topic, p.partition) for p in partitions]
        self.calls.append(("pause", tps))
        self.paused.update(tps)

    def resume(self, partitions: list[TopicPartition]) -> None:
        tps = [(p.topic, p.partition) for p in partitions]
        self.calls.append(("resume", tps))
        if self.resume_hook is not None:
            self.resume_hook(tps)
        self.paused.difference_update(tps)

    def seek(self, partition: TopicPartition) -> None:
        key = (partition.topic, partition.partition)
        self.calls.append(("seek", (key, partition.offset)))
        if self.seek_hook is not None:
            self.seek_hook(key, partition.offset)
        self.positions[key] = partition.offset

    def commit(self, *, offsets: list[TopicPartition], asynchronous: bool = True) -> Any:
        self.calls.append(("commit", {(p.topic, p.partition): p.offset for p in offsets}))
        if self.commit_error is not None:
            raise KafkaException(self.commit_error)
        for p in offsets:
            self.committed[(p.topic, p.partition)] = p.offset
        if asynchronous:
            return None
        return [TopicPartition(p.topic, p.partition, p.offset) for p in offsets]

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        return [
            TopicPartition(p.topic, p.partition, self.positions.get((p.topic, p.partition), 0))
            for p in partitions
        ]

    def get_watermark_offsets(self, partition: TopicPartition, **_: Any) -> tuple[int, int]:
        return 0, len(self.logs.get((partition.topic, partition.partition), []))

    def close(self) -> None:
        self.calls.append(("close", None))
        if self.assigned and "on_revoke" in self.callbacks:
            self.rebalance("on_revoke", sorted(self.assigned))
        self.closed = True


def install(monkeypatch: pytest.MonkeyPatch) -> list[FakeConsumer]:
    """Make ``KafkaSource`` build fake consumers; returns the list they are added to."""
    FakeConsumer.instances = []
    monkeypatch.setattr("headrace.connectors.kafka.source.Consumer", FakeConsumer)
    return FakeConsumer.instances
