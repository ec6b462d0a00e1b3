"""``Runtime(guarantee="exactly_once")`` in this process on a real broker: the Kafka sink
writes inside the source's transactions, so each output partition holds transaction
markers, a read_committed reader sees every input's output exactly once, and the input
offsets are committed (by the transactions) to the end."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable

import orjson
import pytest

from headrace.connectors import KafkaSink, KafkaSource
from headrace.connectors.kafka.transactional_producer import TransactionalProducer
from headrace.connectors.kafka.transactions import TransactionalView, TransactionCoordinator
from headrace.engine import Runtime
from headrace.testing.kafka import end_offsets
from tests.fixtures.kafka_broker import create_topic, produce_json, unique_topic
from tests.integration import worker_app
from tests.integration.eos_harness import CommittedRecords
from tests.integration.kafka_harness import assert_committed_to_end, book

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(180)]


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


class Ids(CommittedRecords):
    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(bootstrap, topic)
        self.ids: list[int] = []

    def handle(self, msg: object) -> None:
        self.ids.append(orjson.loads(msg.value())["signal"]["id"])  # type: ignore[attr-defined]


async def test_an_in_process_runtime_under_exactly_once_commits_outputs_with_offsets(
    kafka_bootstrap: str,
) -> None:
    count = 1000
    source_topic = create_topic(kafka_bootstrap, unique_topic("eos-rt-books"), partitions=2)
    output_topic = create_topic(kafka_bootstrap, unique_topic("eos-rt-signals"), partitions=2)
    group = f"eos-rt-{uuid.uuid4().hex[:8]}"
    produce_json(kafka_bootstrap, source_topic, [book(i) for i in range(count)], key=str)
    worker_app.declare(source_topic, worker_app.Settings())

    coordinator = TransactionCoordinator(
        TransactionalProducer(kafka_bootstrap, f"{group}-txn"), commit_interval=0.2
    )
    source = KafkaSource(
        kafka_bootstrap,
        group,
        commit_interval=0.2,
        guarantee="exactly_once",
        transactions=coordinator,
    )
    sink = KafkaSink(kafka_bootstrap, output_topic, key="signal.id")
    runtime = Runtime(sources=[source], sinks=[sink], guarantee="exactly_once")
    assert isinstance(sink.producer, TransactionalView), "the sink joined the transactions"
    async with runtime:
        await wait_until(lambda: coordinator.stats["inputs"] >= count, 90, f"{count} committed")
    stats = coordinator.stats
    assert stats["committed"] >= 1 and stats["aborted"] == 0, stats
    assert stats["records"] == count, "every output went through the transactions"

    reader = Ids(kafka_bootstrap, output_topic)
    try:
        deadline = time.monotonic() + 30
        while len(reader.ids) < count and time.monotonic() < deadline:
            await asyncio.to_thread(reader.poll, 0.5)
        await asyncio.to_thread(reader.poll, 1.0)
    finally:
        reader.close()
    assert sorted(reader.ids) == list(range(count)), "read_committed: each output once"
    ends = end_offsets(kafka_bootstrap, output_topic)
    assert sum(ends.values()) > count, f"no transaction markers in the output: {ends}"
    assert_committed_to_end(kafka_bootstrap, group, source_topic)
    print(
        f"\nin-process Runtime exactly_once: {count} inputs, {stats['committed']} "
        f"transactions, output end offsets {sum(ends.values())} (records + markers)"
    )
