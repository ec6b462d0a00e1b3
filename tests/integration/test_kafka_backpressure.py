"""Backpressure: a slow graph under a fast producer pauses partitions instead of growing."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from pathlib import Path

import orjson
import psutil
import pytest

from headrace.accumulators import stream_accumulator
from headrace.connectors import KafkaSource, MemorySink
from headrace.engine import ComputationGraphBuilder, Runtime, node
from headrace.reactors import reactor
from tests.fixtures.kafka_broker import create_topic, produce_json, unique_topic
from tests.integration.kafka_harness import (
    OutputReader,
    Worker,
    assert_committed_to_end,
    book,
    produce_raw,
)

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(180)]

TOTAL = 6_000
PADDING = 25_000  # bytes per order book: 150 MB of backlog in all
CHANNEL = 64


def test_slow_graph_pauses_partitions_and_bounds_memory(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    input_topic = create_topic(kafka_bootstrap, unique_topic("bp-in"), partitions=3)
    output_topic = create_topic(kafka_bootstrap, unique_topic("bp-out"), partitions=3)
    group = f"bp-{uuid.uuid4().hex[:8]}"
    worker = Worker(
        kafka_bootstrap,
        input_topic,
        output_topic,
        group,
        tmp_path,
        slow_ms=1.0,
        channel_size=CHANNEL,
        batch_size=100,
        pause_after=0.02,
        commit_interval=0.5,
    )
    reader = OutputReader(kafka_bootstrap, output_topic)
    samples: list[tuple[int, int]] = []  # (rss, channel depth)
    done = threading.Event()
    try:
        worker.start().wait_assigned(60)
        time.sleep(0.5)
        process = psutil.Process(worker.pid)
        baseline = process.memory_info().rss

        def sample() -> None:
            while not done.is_set() and worker.alive():
                health = worker.health()
                samples.append(
                    (process.memory_info().rss, health["channel_depth"] if health else 0)
                )
                time.sleep(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        pad = "x" * PADDING
        started = time.monotonic()
        produce_raw(
            kafka_bootstrap,
            input_topic,
            ((str(i).encode(), orjson.dumps({**book(i), "note": pad})) for i in range(TOTAL)),
        )
        produced_in = time.monotonic() - started
        paused = worker.wait_for(lambda h: h["source"]["pauses"] > 0, 60, "a pause")
        assert paused["source"]["messages"] < TOTAL, "the slow graph kept up: no backlog"
        reader.wait_for(set(range(TOTAL)), timeout=120)
        final = worker.wait_for(lambda h: h["source"]["in_flight"] == 0, 30, "idle")
        assert worker.terminate() == 0, worker.tail()
    finally:
        done.set()
        worker.close()
        reader.close()
    peak = max(rss for rss, _ in samples)
    source = final["source"]
    print(
        f"\nbackpressure: {TOTAL} x {PADDING // 1000} kB produced in {produced_in:.1f}s; "
        f"pauses {source['pauses']}, resumes {source['resumes']}, channel high water "
        f"{final['channel_high_water']}/{CHANNEL}, RSS {baseline / 2**20:.0f} -> peak "
        f"{peak / 2**20:.0f} MiB"
    )
    assert final["channel_high_water"] <= CHANNEL
    assert max(depth for _, depth in samples) <= CHANNEL
    assert source["pauses"] > 0 and source["resumes"] > 0
    assert peak - baseline < 100 * 2**20, "memory grew with the 150 MB backlog"
    assert set(reader.ids) == set(range(TOTAL)) and reader.duplicates() == 0
    assert_committed_to_end(kafka_bootstrap, group, input_topic)


class EagerSource(KafkaSource):
    """Fetches full batches whatever the room, so batches overflow the channel."""

    async def _wait_for_room(self) -> int:
        return self.batch_size


async def test_overflowing_batches_rewind_and_lose_nothing(kafka_bootstrap: str) -> None:
    total = 1_500
    topic = create_topic(kafka_bootstrap, unique_topic("rewind"), partitions=3)
    produce_json(kafka_bootstrap, topic, [{"n": i} for i in range(total)], key=str)
    group = f"rewind-{uuid.uuid4().hex[:8]}"

    @stream_accumulator(topic=topic, channel_size=64)
    def numbers(event: dict) -> int:
        return event["n"]

    @reactor(name="rewind_rx", accumulators=["numbers"], strategy="sequential")
    class RewindReactor:
        pass

    with ComputationGraphBuilder(
        "rewind", reactor="rewind_rx", graph={"echo": {"inputs": ["numbers"]}}
    ):

        @node
        async def echo(numbers: int) -> int:
            await asyncio.sleep(0.0002)
            return numbers

    sink = MemorySink()
    source = EagerSource(kafka_bootstrap, group, batch_size=200, commit_interval=0.2)
    async with Runtime(graphs=["rewind"], sources=[source], sinks=[sink]) as runtime:
        await sink.wait_for(total, timeout=90)
        await runtime.wait_idle()
        high_water = runtime.accumulators["numbers"].channels[0].high_water
    seen = [outputs["echo"] for outputs in sink.outputs("rewind")]
    print(f"\nrewind: {source.stats['pauses']} pauses with seek back, {len(seen)} outputs")
    assert source.stats["pauses"] > 0 and source.stats["resumes"] > 0
    assert high_water <= 64
    assert sorted(seen) == list(range(total)), "lost or repeated events after rewinds"
    assert_committed_to_end(kafka_bootstrap, group, topic)
