"""A keyed graph's results go to Kafka with the fire's key as the message key."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from headrace.accumulators import passthrough_accumulator
from headrace.connectors import KafkaSink
from headrace.engine import ComputationGraphBuilder, Runtime
from headrace.reactors import reactor
from tests.fixtures.kafka_broker import consume_all, create_topic, unique_topic

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(60)]


async def test_the_fire_key_is_the_message_key_unless_the_sink_sets_one(
    kafka_bootstrap: str,
) -> None:
    by_fire = create_topic(kafka_bootstrap, unique_topic("keyed-sink"), partitions=2)
    by_path = create_topic(kafka_bootstrap, unique_topic("keyed-sink-path"), partitions=1)
    passthrough_accumulator(name="ticks", key="symbol")(lambda event: event)
    reactor(
        name="ticks_rx",
        accumulators=["ticks"],
        strategy="sequential",
        keyed=True,
        max_concurrency=4,
    )(type("Rx", (), {}))
    with ComputationGraphBuilder(
        "tick_out", reactor="ticks_rx", graph={"out": {"inputs": ["ticks"]}}
    ) as builder:
        builder.add_node("out", lambda ticks, key: {"n": ticks["n"], "tag": f"t{ticks['n']}"})
    sinks = [
        KafkaSink(kafka_bootstrap, by_fire),
        KafkaSink(kafka_bootstrap, by_path, key="out.tag"),
    ]
    symbols = ["BTC", "ETH", "SOL"]
    async with Runtime(graphs=["tick_out"], sinks=sinks) as runtime:
        for n in range(30):
            await runtime.push("ticks", {"symbol": symbols[n % 3], "n": n})
        await runtime.wait_idle()
    records = await asyncio.to_thread(consume_all, kafka_bootstrap, by_fire, 30, 30)
    keyed = sorted((key, orjson.loads(value)["out"]["n"]) for key, value, _, _ in records)
    assert keyed == sorted((symbols[n % 3].encode(), n) for n in range(30))
    # one symbol's messages share a partition: downstream partitioning follows the key
    partitions: dict[bytes, set[int]] = {}
    for key, _, partition, _ in records:
        partitions.setdefault(key, set()).add(partition)
    assert all(len(found) == 1 for found in partitions.values()), partitions
    tagged = await asyncio.to_thread(consume_all, kafka_bootstrap, by_path, 30, 30)
    assert sorted(key for key, _, _, _ in tagged) == sorted(f"t{n}".encode() for n in range(30))
