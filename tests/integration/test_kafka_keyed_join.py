"""Keyed joins across two topics on a real broker: co-partitioning, the range assignor."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import defaultdict
from collections.abc import Callable

import pytest

from headrace.accumulators import stream_accumulator
from headrace.connectors import KafkaSource, MemoryDeadLetters
from headrace.connectors.kafka.keyed_changelogs import CoPartitionError
from headrace.engine import ComputationGraphBuilder, Runtime
from headrace.reactors import reactor
from tests.fixtures.kafka_broker import create_topic, produce_json, unique_topic
from tests.integration.kafka_harness import assert_committed_to_end

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(180)]

SYMBOLS = [f"J{n:02d}" for n in range(24)]


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


def join_graph(name: str, books: str, trades: str, seen: dict[str, list[tuple]]) -> None:
    stream_accumulator(topic=books, name=f"{name}_books", key="symbol")(lambda e: e)
    stream_accumulator(topic=trades, name=f"{name}_trades", key="symbol")(lambda e: e)
    reactor(
        name=f"{name}_rx",
        accumulators=[f"{name}_books", f"{name}_trades"],
        mode="when_all",
        keyed=True,
        max_concurrency=4,
    )(type("Rx", (), {}))

    def join(key: str, **inputs: dict) -> None:
        book, trade = inputs[f"{name}_books"], inputs[f"{name}_trades"]
        seen[key].append((book["symbol"], trade["symbol"], book["seq"], trade["seq"]))

    with ComputationGraphBuilder(
        name, reactor=f"{name}_rx", graph={"join": {"inputs": [f"{name}_books", f"{name}_trades"]}}
    ) as builder:
        builder.add_node("join", join)


async def test_two_workers_join_two_co_partitioned_topics_per_key(kafka_bootstrap: str) -> None:
    """Books and trades of 24 symbols on two 3-partition topics, two workers in one group:
    the range assignor gives each worker the same partition numbers of both topics, every
    symbol's join fires with that symbol's book and trade, and all offsets are committed."""
    books = create_topic(kafka_bootstrap, unique_topic("join-books"), partitions=3)
    trades = create_topic(kafka_bootstrap, unique_topic("join-trades"), partitions=3)
    group = f"join-{uuid.uuid4().hex[:8]}"
    seen: dict[str, list[tuple]] = defaultdict(list)
    join_graph("kjoin", books, trades, seen)
    sources = [KafkaSource(kafka_bootstrap, group, commit_interval=0.2) for _ in range(2)]
    runtimes = [
        Runtime(graphs=["kjoin"], sources=[source], dead_letters=MemoryDeadLetters())
        for source in sources
    ]
    async with contextlib.AsyncExitStack() as stack:
        for runtime in runtimes:
            await stack.enter_async_context(runtime)
        assert all(s.config["partition.assignment.strategy"] == "range" for s in sources)

        def settled() -> bool:
            owned = [s.flow.assigned for s in sources]
            return all(owned) and sum(map(len, owned)) == 6

        await wait_until(settled, 60, "both workers to own their partitions")
        for source in sources:
            numbers = {t: {p for tp, p in source.flow.assigned if tp == t} for t in (books, trades)}
            assert numbers[books] == numbers[trades], f"not co-located: {source.flow.assigned}"
        key = lambda event: event["symbol"]  # noqa: E731 - the producer partitions by symbol
        produce_json(kafka_bootstrap, books, [{"symbol": s, "seq": 1} for s in SYMBOLS], key=key)
        produce_json(kafka_bootstrap, trades, [{"symbol": s, "seq": 2} for s in SYMBOLS], key=key)
        await wait_until(lambda: len(seen) == len(SYMBOLS), 60, "every symbol's join")
        await wait_until(
            lambda: all(s.tracker.committable() == {} for s in sources), 30, "the commits"
        )
    assert {k: v for k, v in seen.items()} == {s: [(s, s, 1, 2)] for s in SYMBOLS}
    fired_by = [r.reactors["kjoin_rx"].fire_count for r in runtimes]
    assert all(fired_by) and sum(fired_by) == len(SYMBOLS), fired_by
    assert_committed_to_end(kafka_bootstrap, group, books)
    assert_committed_to_end(kafka_bootstrap, group, trades)


async def test_a_join_of_topics_with_different_partition_counts_fails_at_start(
    kafka_bootstrap: str,
) -> None:
    books = create_topic(kafka_bootstrap, unique_topic("join-bad-books"), partitions=3)
    trades = create_topic(kafka_bootstrap, unique_topic("join-bad-trades"), partitions=2)
    join_graph("kjoin_bad", books, trades, defaultdict(list))
    source = KafkaSource(kafka_bootstrap, f"join-bad-{uuid.uuid4().hex[:8]}")
    runtime = Runtime(graphs=["kjoin_bad"], sources=[source], dead_letters=MemoryDeadLetters())
    with pytest.raises(CoPartitionError) as raised:
        await runtime.start()
    await runtime.stop()
    message = str(raised.value)
    assert "'kjoin_bad_rx'" in message and "not co-partitioned" in message
    assert f"{books} has 3" in message and f"{trades} has 2" in message
