"""The cost of exactly-once (``make bench`` runs it after the throughput benchmark).

    python -m tests.bench.exactly_once [--messages N] [--rate R] [--seconds S]
                                       [--intervals 0.1,1.0]

The engine end to end (stream accumulator -> sequential reactor -> 2-node graph -> Kafka
sink, the pipeline of tests/bench/kafka_throughput.py) over one pre-filled topic, under
at_least_once and under exactly_once at each transaction interval (``commit_interval``):

- throughput: inputs per second until every output is durable (at_least_once: delivered;
  exactly_once: its transaction committed, i.e. visible to read_committed readers);
- latency produce -> output read back at a fixed rate (p50/p99), the reader using
  ``isolation.level=read_committed`` for exactly_once (an output is visible only when its
  transaction commits, so latency grows with the interval).

Prints one line per run and ``exactly_once/at_least_once throughput ratio`` per interval.
Uses $KAFKA_BOOTSTRAP_SERVERS, else starts a local broker. Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import multiprocessing
import os
import platform
import sys
import threading
import time
import uuid
from typing import Any

import orjson
import structlog
from confluent_kafka import Consumer, Producer, TopicPartition

from headrace.connectors import KafkaSink, KafkaSource
from headrace.connectors.kafka.transactional_producer import TransactionalProducer
from headrace.connectors.kafka.transactions import TransactionCoordinator
from headrace.engine import Runtime
from tests.bench.kafka_throughput import BATCH, PARTITIONS, broker, declare, fill, order_book
from tests.fixtures.kafka_broker import create_topic


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
        coordinator.join(sink, "sink")
        options = {"guarantee": guarantee, "transactions": coordinator}
    source = KafkaSource(bootstrap, group, batch_size=BATCH, commit_interval=interval, **options)
    runtime = Runtime(graphs=["signal"], sources=[source], sinks=[sink])
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


def measure(
    bootstrap: str,
    source: str,
    output: str,
    committed: bool,
    rate: int,
    warmup: float,
    seconds: float,
    result: Any,
) -> None:
    """Child process: produce timestamped books at ``rate``, read the outputs back (with
    read_committed when ``committed``), report the produce -> read latencies (ms)."""
    reader = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-eos-reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": 100,
            "isolation.level": "read_committed" if committed else "read_uncommitted",
        }
    )
    reader.assign([TopicPartition(output, p, 0) for p in range(PARTITIONS)])
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 1, "acks": "all"})
    total, first = int(rate * (warmup + seconds)), int(rate * warmup)
    samples: list[float] = []
    received = 0
    deadline = time.monotonic() + warmup + seconds + 30

    def read() -> None:
        nonlocal received
        while received < total and time.monotonic() < deadline:
            for msg in reader.consume(1000, 0) or [reader.poll(0.05)]:
                if msg is None or msg.error() is not None:
                    continue
                now = time.time_ns()
                signal = orjson.loads(msg.value())["signal"]
                received += 1
                if signal["i"] >= first:
                    samples.append((now - signal["t"]) / 1e6)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    started = time.monotonic()
    for i in range(total):
        pause = started + i / rate - time.monotonic()
        if pause > 0.0005:
            time.sleep(pause)
        producer.produce(source, order_book(i, time.time_ns()), partition=i % PARTITIONS)
        producer.poll(0)
    producer.flush(30)
    thread.join(warmup + seconds + 40)
    reader.close()
    result.put(samples)


async def latency(
    bootstrap: str, guarantee: str, interval: float, rate: int, warmup: float, seconds: float
) -> list[float]:
    topic = create_topic(bootstrap, f"bench-eos-lat-{uuid.uuid4().hex[:8]}", PARTITIONS)
    runtime, source, _sink, output, _ = build(bootstrap, topic, guarantee, interval)
    await runtime.start()
    try:
        while not source.health()["assigned"]:
            await asyncio.sleep(0.01)
        context = multiprocessing.get_context("spawn")
        result = context.Queue()
        child = context.Process(
            target=measure,
            args=(
                bootstrap,
                topic,
                output,
                guarantee == "exactly_once",
                rate,
                warmup,
                seconds,
                result,
            ),
        )
        child.start()
        samples: list[float] = []
        while child.is_alive() or not result.empty():
            with contextlib.suppress(Exception):
                samples = await asyncio.to_thread(result.get, True, 1.0)
                break
        await asyncio.to_thread(child.join, 30)
    finally:
        await runtime.stop()
    return sorted(samples)


def pct(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--rate", type=int, default=2_000, help="latency phase msgs/s")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--intervals", default="0.1,1.0", help="transaction intervals, s")
    parser.add_argument("--rounds", type=int, default=2, help="throughput: best of N")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    intervals = [float(x) for x in args.intervals.split(",") if x.strip()]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"machine: {os.cpu_count()} cpus ({platform.processor() or platform.machine()}), "
        f"Python {platform.python_version()}, load average {load:.1f} at start (shared: "
        "other processes run beside this benchmark)"
    )
    results: dict[tuple[str, float], tuple[float, list[float]]] = {}
    with broker() as bootstrap:
        topic = create_topic(bootstrap, f"bench-eos-books-{uuid.uuid4().hex[:8]}", PARTITIONS)
        fill(bootstrap, topic, args.messages, PARTITIONS)
        runs = [("at_least_once", intervals[0])]
        runs += [("exactly_once", interval) for interval in intervals]
        warm = create_topic(bootstrap, f"bench-eos-warm-{uuid.uuid4().hex[:8]}", PARTITIONS)
        fill(bootstrap, warm, 2_000, PARTITIONS)
        for guarantee, interval in runs:  # warm the broker's group and transaction logs
            asyncio.run(throughput(bootstrap, warm, 2_000, guarantee, interval))
        rates: dict[tuple[str, float], list[float]] = {run: [] for run in runs}
        for round_ in range(args.rounds):  # interleaved: each round sees the same load
            for guarantee, interval in runs:
                rate = asyncio.run(throughput(bootstrap, topic, args.messages, guarantee, interval))
                rates[(guarantee, interval)].append(rate)
                print(
                    f"round {round_ + 1}: {guarantee:13s} commit_interval {interval:4.2f}s: "
                    f"{rate:9,.0f} msg/s",
                    flush=True,
                )
        for guarantee, interval in runs:
            samples = asyncio.run(
                latency(bootstrap, guarantee, interval, args.rate, args.warmup, args.seconds)
            )
            rate = max(rates[(guarantee, interval)])
            results[(guarantee, interval)] = (rate, samples)
            print(
                f"{guarantee:13s} commit_interval {interval:4.2f}s: {rate:9,.0f} msg/s "
                f"(best of {args.rounds}); latency at {args.rate} msg/s: p50 "
                f"{pct(samples, 0.5):7.1f} ms, p99 {pct(samples, 0.99):7.1f} ms "
                f"({len(samples)} outputs)",
                flush=True,
            )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"load average {load:.1f} at the end")
    base = results[("at_least_once", intervals[0])][0]
    for interval in intervals:
        rate, samples = results[("exactly_once", interval)]
        print(
            f"exactly_once/at_least_once throughput ratio at {interval:.2f}s transactions: "
            f"{rate / base:.2f} (p99 {pct(samples, 0.99):.1f} ms vs "
            f"{pct(results[('at_least_once', intervals[0])][1], 0.99):.1f} ms)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
