"""Execution dead letters that Kafka refuses, against the real broker: the reactor goes on.

Too large for the producer (MSG_SIZE_TOO_LARGE raised at produce()): sent again cut down.
An integer beyond 64 bits in the inputs: sent in full. A topic that cannot be written:
the letter falls back to the state store.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from headrace.connectors import KafkaDeadLetters, MemorySink
from headrace.connectors.dead_letters import FanOutDeadLetters
from headrace.engine import Runtime
from headrace.engine.store.state_store import StateStore
from tests.fixtures.kafka_broker import consume_all, create_topic, unique_topic
from tests.unit.support import pipeline

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]


def poison_graph() -> None:
    def work(a: Any) -> Any:
        if isinstance(a, dict) and a.get("poison"):
            raise ValueError("cannot handle it")
        return a

    pipeline(["a"], work, strategy="sequential")


async def run_poison_then_good(dead_letters: Any, poison: dict[str, Any]) -> MemorySink:
    poison_graph()
    sink = MemorySink()
    settled: list[str] = []
    async with Runtime(graphs=["g"], sinks=[sink], dead_letters=dead_letters) as runtime:
        runner = runtime.accumulator("a")
        await runner.offer(poison, acks=(lambda: settled.append("poison"),))
        await runner.offer("good", acks=(lambda: settled.append("good"),))
        async with asyncio.timeout(60):
            while len(settled) < 2:
                await asyncio.sleep(0.02)
        assert runtime.failed() == [] and runtime.failures == {}
    assert settled == ["poison", "good"]
    assert sink.outputs() == [{"run": "good"}]
    return sink


async def test_a_letter_too_large_for_the_producer_is_sent_cut_down(kafka_bootstrap: str) -> None:
    topic = create_topic(kafka_bootstrap, unique_topic("exec-dlq-big"))
    letters = KafkaDeadLetters(
        kafka_bootstrap, execution_topic=topic, producer_config={"message.max.bytes": 4_000}
    )
    try:
        await run_poison_then_good(FanOutDeadLetters(letters), {"poison": 1, "blob": "x" * 20_000})
    finally:
        await letters.close()
    ((_key, value, _p, _o),) = await asyncio.to_thread(consume_all, kafka_bootstrap, topic, 1, 20)
    body = orjson.loads(value)
    assert body["graph"] == "g" and "payload cut down" in body["reason"]
    assert body["inputs"].startswith("{'a': {'poison': 1, 'blob': 'xxx") and len(value) < 4_000


async def test_a_letter_with_an_int_beyond_64_bits_is_sent_in_full(kafka_bootstrap: str) -> None:
    topic = create_topic(kafka_bootstrap, unique_topic("exec-dlq-int"))
    letters = KafkaDeadLetters(kafka_bootstrap, execution_topic=topic)
    poison = {"poison": 1, "id": 2**70, "nested": [{"n": -(2**65)}]}
    try:
        await run_poison_then_good(FanOutDeadLetters(letters), poison)
    finally:
        await letters.close()
    ((_key, value, _p, _o),) = await asyncio.to_thread(consume_all, kafka_bootstrap, topic, 1, 20)
    assert json.loads(value)["inputs"] == {"a": poison}


async def test_an_unwritable_dead_letter_topic_falls_back_to_the_store(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    letters = KafkaDeadLetters(
        kafka_bootstrap,
        execution_topic="not a valid topic name!",
        producer_config={"message.timeout.ms": 5_000},
    )
    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}").open()
    try:
        await run_poison_then_good(FanOutDeadLetters(letters, store), {"poison": 1})
        (row,) = store.dead_letters()
    finally:
        await letters.close()
        store.close()
    assert row["graph"] == "g" and row["payload"] == {"a": {"poison": 1}}
