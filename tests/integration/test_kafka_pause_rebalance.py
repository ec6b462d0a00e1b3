"""Pause flags across rebalances, on the real broker (issue 7 item 1, librdkafka #1849)."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, Producer

from headrace.accumulators import stream_accumulator
from headrace.connectors import KafkaSource, MemorySink
from headrace.engine import Runtime
from tests.fixtures.kafka_broker import create_topic, unique_topic
from tests.unit.support import Gate, declare_reactor, one_node_graph

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(180)]

PER_PARTITION = 30
GROUP_SETTINGS = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 500}


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


def produce_to_partitions(bootstrap: str, topic: str, partitions: int, count: int) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for p in range(partitions):
        for i in range(count):
            producer.produce(topic, orjson.dumps({"p": p, "i": i}), partition=p)
    assert producer.flush(30) == 0


class GroupMember(threading.Thread):
    """A plain consumer in the group that takes partitions while it runs (commits nothing)."""

    def __init__(self, bootstrap: str, group: str, topic: str) -> None:
        super().__init__(daemon=True)
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": group,
                "partition.assignment.strategy": "cooperative-sticky",
                "enable.auto.commit": False,
                **GROUP_SETTINGS,
            }
        )
        self.consumer.subscribe([topic])
        self.stop = threading.Event()
        self.assigned: set[int] = set()

    def run(self) -> None:
        while not self.stop.is_set():
            self.consumer.poll(0.1)
            self.assigned = {tp.partition for tp in self.consumer.assignment()}
        self.consumer.close()  # LeaveGroup: its partitions go back at once


async def test_a_paused_partition_revoked_and_assigned_back_consumes_again(
    kafka_bootstrap: str,
) -> None:
    topic = create_topic(kafka_bootstrap, unique_topic("pause-rb"), partitions=2)
    group = f"pause-rb-{uuid.uuid4().hex[:8]}"
    produce_to_partitions(kafka_bootstrap, topic, 2, PER_PARTITION)
    gate = Gate()
    stream_accumulator(topic=topic, name="books", channel_size=4)(lambda event: event)
    declare_reactor("books_rx", ["books"], strategy="sequential")

    async def run(books: Any) -> Any:
        await gate.wait()
        return books

    one_node_graph("through", "books_rx", ["books"], run)
    source = KafkaSource(
        kafka_bootstrap,
        group,
        commit_interval=0.2,
        pause_after=0.05,
        consumer_config=GROUP_SETTINGS,
    )
    sink = MemorySink()
    member: GroupMember | None = None
    try:
        async with Runtime(sources=[source], sinks=[sink]):
            # the graph holds every value: the channel fills and both partitions pause
            await wait_until(lambda: len(source.health()["paused"]) == 2, 60, "both paused")
            member = GroupMember(kafka_bootstrap, group, topic)
            member.start()
            await wait_until(
                lambda: len(source.health()["assigned"]) == 1 and len(member.assigned) == 1,
                60,
                "the second member to take one partition",
            )
            revoked = f"{topic}[{next(iter(member.assigned))}]"
            assert revoked not in source.health()["assigned"]
            gate.release(1000)  # room again: the source resumes what it still owns
            await wait_until(lambda: not source.health()["paused"], 30, "the kept one resumed")
            member.stop.set()
            await asyncio.to_thread(member.join, 30)
            await wait_until(
                lambda: len(source.health()["assigned"]) == 2, 60, "the partition back"
            )
            assert revoked in source.health()["assigned"]
            expected = {(p, i) for p in range(2) for i in range(PER_PARTITION)}

            def seen() -> set[tuple[int, int]]:
                return {(out["run"]["p"], out["run"]["i"]) for _, out in sink.results}

            await wait_until(
                lambda: seen() >= expected,
                60,
                f"every message of {revoked}, paused when revoked, after it came back",
            )
            assert source.stats["pauses"] >= 2
    finally:
        gate.release(1000)
        if member is not None and member.is_alive():
            member.stop.set()
            member.join(30)
