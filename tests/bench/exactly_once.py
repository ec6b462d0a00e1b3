"""The cost of exactly-once (``make bench`` runs it after the throughput benchmark).

    python -m tests.bench.exactly_once [--messages N] [--rate R] [--seconds S]
                                       [--intervals 0.1,1.0] [--rounds 3]

The engine end to end (stream accumulator -> sequential reactor -> 2-node graph -> Kafka
sink, the pipeline of tests/bench/kafka_throughput.py) under at_least_once and under
exactly_once, each at every interval (``commit_interval``: how often offsets commit, or
transactions end):

- throughput over one pre-filled topic: inputs per second until every output is durable
  (at_least_once: delivered; exactly_once: its transaction committed, i.e. visible to
  read_committed readers);
- latency produce -> output read back at a fixed rate (p50/p99), measured by
  kafka_throughput's harness, the reader using ``isolation.level=read_committed`` for
  exactly_once (an output is visible only when its transaction commits, so latency grows
  with the interval).

Every round runs each (guarantee, interval) once, the two guarantees alternating, and
the figures are medians over the rounds, so one noisy run cannot flip a ratio. Prints
``exactly_once/at_least_once throughput ratio`` and both p99s per interval. Uses
$KAFKA_BOOTSTRAP_SERVERS, else starts a local broker. Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import platform
import statistics
import sys
import time
import uuid
from typing import Any

import structlog

from headrace.connectors import KafkaSink, KafkaSource
from headrace.connectors.kafka.transactional_producer import TransactionalProducer
from headrace.connectors.kafka.transactions import TransactionCoordinator
from headrace.engine import Runtime
from tests.bench.kafka_throughput import (
    BATCH,
    PARTITIONS,
    broker,
    declare,
    fill,
    measure_latency,
    percentile,
)
from tests.fixtures.kafka_broker import create_topic

Run = tuple[str, float]  # guarantee, interval


def build(
    bootstrap: str, topic: str, guarantee: str, interval: float
) -> tuple[Runtime, KafkaSource, KafkaSink, str, TransactionCoordinator | None]:
    declare(topic)
    output = create_topic(bootstrap, f"bench-eos-out-{uuid.uuid4().hex[:8]}", PARTITIONS)
    group = f"bench-eos-{uuid.uuid4().hex[:8]}"
    sink = KafkaSink(bootstrap, output)
    coordinator = None
    options: dict[str, Any] = {}
    if guarantee == "exactly_once":
        producer = TransactionalProducer(bootstrap, f"{group}-txn")
        coordinator = TransactionCoordinator(producer, commit_interval=interval, max_inputs=1 << 30)
        options = {"guarantee": guarantee, "transactions": coordinator}
    source = KafkaSource(bootstrap, group, batch_size=BATCH, commit_interval=interval, **options)
    runtime = Runtime(graphs=["signal"], sources=[source], sinks=[sink], guarantee=guarantee)
    return runtime, source, sink, output, coordinator


async def throughput(
    bootstrap: str, topic: str, count: int, guarantee: str, interval: float
) -> float:
    runtime, source, sink, _output, coordinator = build(bootstrap, topic, guarantee, interval)
    await runtime.start()
    try:
        while source.stats["messages"] == 0:
            await asyncio.sleep(0.001)
        started = time.perf_counter()
        if coordinator is None:
            while sink.producer.delivered < count:  # type: ignore[union-attr]
                await asyncio.sleep(0.002)
        else:
            while coordinator.stats["inputs"] < count:
                await asyncio.sleep(0.002)
        return count / (time.perf_counter() - started)
    finally:
        await runtime.stop()


async def latency(
    bootstrap: str, guarantee: str, interval: float, rate: int, warmup: float, seconds: float
) -> list[float]:
    """Produce -> read back latencies (ms), sorted, at ``rate`` msgs/s."""
    topic = create_topic(bootstrap, f"bench-eos-lat-{uuid.uuid4().hex[:8]}", PARTITIONS)
    runtime, source, _sink, output, _ = build(bootstrap, topic, guarantee, interval)
    isolation = "read_committed" if guarantee == "exactly_once" else "read_uncommitted"
    samples = await measure_latency(
        bootstrap, runtime, source, topic, output, PARTITIONS, rate, warmup, seconds, isolation
    )
    return sorted(total for total, _into, _out in samples)


def alternating(intervals: list[float]) -> list[Run]:
    """Each interval under both guarantees, the guarantees alternating."""
    return [(g, interval) for interval in intervals for g in ("at_least_once", "exactly_once")]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def load() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    # 200,000: at 1 s transactions a 50,000-message run measured mostly the wait for the last
    # commit (two intervals for 50,000 inputs: 24.6k msg/s, against 49.5k over 200,000)
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--rate", type=int, default=2_000, help="latency phase msgs/s")
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--intervals", default="0.1,1.0", help="transaction intervals, s")
    parser.add_argument("--rounds", type=int, default=3, help="medians over N rounds")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    intervals = [float(x) for x in args.intervals.split(",") if x.strip()]
    print(
        f"machine: {os.cpu_count()} cpus ({platform.processor() or platform.machine()}), "
        f"Python {platform.python_version()}, load average {load():.1f} at start (shared: "
        "other processes run beside this benchmark)"
    )
    runs = alternating(intervals)
    rates: dict[Run, list[float]] = {run: [] for run in runs}
    p50s: dict[Run, list[float]] = {run: [] for run in runs}
    p99s: dict[Run, list[float]] = {run: [] for run in runs}
    with broker() as bootstrap:
        topic = create_topic(bootstrap, f"bench-eos-books-{uuid.uuid4().hex[:8]}", PARTITIONS)
        fill(bootstrap, topic, args.messages, PARTITIONS)
        warm = create_topic(bootstrap, f"bench-eos-warm-{uuid.uuid4().hex[:8]}", PARTITIONS)
        fill(bootstrap, warm, 2_000, PARTITIONS)
        for guarantee, interval in runs:  # warm the broker's group and transaction logs
            asyncio.run(throughput(bootstrap, warm, 2_000, guarantee, interval))
        gc.collect()
        gc.freeze()  # as make bench: the startup heap never becomes garbage
        for round_ in range(args.rounds):
            for run in runs:
                guarantee, interval = run
                rate = asyncio.run(throughput(bootstrap, topic, args.messages, guarantee, interval))
                samples = asyncio.run(
                    latency(bootstrap, guarantee, interval, args.rate, args.warmup, args.seconds)
                )
                rates[run].append(rate)
                p50s[run].append(percentile(samples, 0.5) if samples else float("nan"))
                p99s[run].append(percentile(samples, 0.99) if samples else float("nan"))
                print(
                    f"round {round_ + 1}: {guarantee:13s} commit_interval {interval:4.2f}s: "
                    f"{rate:9,.0f} msg/s; at {args.rate} msg/s p50 {p50s[run][-1]:7.1f} ms, "
                    f"p99 {p99s[run][-1]:7.1f} ms ({len(samples)} outputs; load {load():.1f})",
                    flush=True,
                )
    print(f"load average {load():.1f} at the end; medians of {args.rounds} rounds:")
    for run in runs:
        guarantee, interval = run
        print(
            f"{guarantee:13s} commit_interval {interval:4.2f}s: {median(rates[run]):9,.0f} "
            f"msg/s; latency at {args.rate} msg/s p50 {median(p50s[run]):7.1f} ms, p99 "
            f"{median(p99s[run]):7.1f} ms"
        )
    for interval in intervals:
        alo, eos = ("at_least_once", interval), ("exactly_once", interval)
        print(
            f"exactly_once/at_least_once throughput ratio at {interval:.2f}s: "
            f"{median(rates[eos]) / median(rates[alo]):.2f} (p99 {median(p99s[eos]):.1f} ms "
            f"vs {median(p99s[alo]):.1f} ms)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
