"""End to end on a real broker: order books in, price signals out, offsets committed."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable

import orjson
import pytest

from headrace.accumulators import batch_accumulator, stream_accumulator
from headrace.connectors import KafkaDeadLetters, KafkaSink, KafkaSource
from headrace.engine import ComputationGraphBuilder, Runtime, node
from headrace.reactors import reactor
from tests.fixtures.kafka_broker import (
    consume_all,
    create_topic,
    produce_json,
    unique_topic,
)
from tests.integration import worker_app
from tests.integration.kafka_harness import assert_committed_to_end, book

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


async def test_order_books_become_price_signals(kafka_bootstrap: str) -> None:
    count = 3000
    source_topic = create_topic(kafka_bootstrap, unique_topic("books"), partitions=3)
    output_topic = create_topic(kafka_bootstrap, unique_topic("signals"), partitions=3)
    group = f"e2e-{uuid.uuid4().hex[:8]}"
    produce_json(kafka_bootstrap, source_topic, [book(i) for i in range(count)], key=str)
    worker_app.declare(source_topic, worker_app.Settings())

    source = KafkaSource(kafka_bootstrap, group, commit_interval=0.2)
    sink = KafkaSink(kafka_bootstrap, output_topic, key="signal.id")
    dead_letters = KafkaDeadLetters(kafka_bootstrap)
    runtime = Runtime(sources=[source], sinks=[sink], dead_letters=dead_letters)
    async with runtime:
        await wait_until(lambda: sink.producer.delivered >= count, 60, f"{count} signals")
        await wait_until(
            lambda: source.tracker.committable() == {} and source.stats["commits"] > 0,
            10,
            "commits to catch up",
        )
        health = source.health()
        assert health["assigned"] and health["in_flight"] == 0
        assert health["messages"] == count and health["dead_letters"] == 0
    await dead_letters.close()

    records = await asyncio.to_thread(consume_all, kafka_bootstrap, output_topic, count, 30)
    signals = [orjson.loads(value)["signal"] for _, value, _, _ in records]
    assert sorted(s["id"] for s in signals) == list(range(count))
    first = next(s for s in signals if s["id"] == 0)
    expected = book(0)
    assert first["mid"] == (expected["bid"] + expected["ask"]) / 2
    assert first["symbol"] == expected["symbol"]
    assert {key for key, _, _, _ in records} == {str(i).encode() for i in range(count)}
    assert_committed_to_end(kafka_bootstrap, group, source_topic)


async def test_batch_accumulator_reads_a_topic(kafka_bootstrap: str) -> None:
    count = 2000
    source_topic = create_topic(kafka_bootstrap, unique_topic("trades"), partitions=2)
    group = f"batch-{uuid.uuid4().hex[:8]}"
    produce_json(
        kafka_bootstrap,
        source_topic,
        [{"price": 100.0 + i % 7, "size": 1.0 + i % 3} for i in range(count)],
    )

    @batch_accumulator(topic=source_topic, flush_interval="100ms", max_buffer_size=300)
    def trades(events: list[dict]) -> dict:
        volume = sum(e["size"] for e in events)
        return {"n": len(events), "vwap": sum(e["price"] * e["size"] for e in events) / volume}

    @stream_accumulator(topic=unique_topic("unused"))
    def unused(event: dict) -> dict:
        return event

    @reactor(name="vwap_rx", accumulators=["trades"], strategy="sequential")
    class VwapReactor:
        pass

    seen: list[dict] = []
    with ComputationGraphBuilder(
        "vwap", reactor="vwap_rx", graph={"report": {"inputs": ["trades"]}}
    ):

        @node
        def report(trades: dict) -> dict:
            seen.append(trades)
            return trades

    source = KafkaSource(kafka_bootstrap, group, accumulators=["trades"], commit_interval=0.2)
    async with Runtime(graphs=["vwap"], sources=[source]) as runtime:
        await wait_until(lambda: sum(s["n"] for s in seen) >= count, 60, "all trades batched")
        await runtime.wait_idle()
        await wait_until(lambda: source.tracker.committable() == {}, 10, "commits")
        assert source.accumulators == frozenset({"trades"})
    assert sum(s["n"] for s in seen) == count
    assert max(s["n"] for s in seen) <= 300
    assert_committed_to_end(kafka_bootstrap, group, source_topic)


async def test_named_accumulator_without_topic_is_rejected(kafka_bootstrap: str) -> None:
    @batch_accumulator(flush_interval="1s")
    def pushed(events: list[dict]) -> int:
        return len(events)

    @reactor(name="pushed_rx", accumulators=["pushed"])
    class PushedReactor:
        pass

    with ComputationGraphBuilder(
        "pushed_g", reactor="pushed_rx", graph={"n": {"inputs": ["pushed"]}}
    ):

        @node
        def n(pushed: int) -> int:
            return pushed

    source = KafkaSource(kafka_bootstrap, "never", accumulators=["pushed"])
    async with Runtime(graphs=["pushed_g"]) as runtime:
        with pytest.raises(ValueError, match="has no Kafka topic"):
            await source.start(runtime)
        with pytest.raises(ValueError, match="is not running"):
            await KafkaSource(kafka_bootstrap, "never", accumulators=["nope"]).start(runtime)
