"""Kafka throughput and latency benchmark (``make bench``); not a test.

    python -m tests.bench.kafka_throughput [--messages N] [--rate R] [--seconds S] [--profile F]

On one topic of ~100-byte JSON order books it measures, in this one process:
(a) the ceiling: a raw confluent-kafka ``consume(batch)`` + orjson decode loop;
(b) the engine end to end: stream accumulator -> sequential reactor -> 2-node graph ->
    KafkaSink -> offsets committed;
then produce->output latency (p50/p99) at a fixed rate, with the load generator and the
output reader in a child process so they do not share this process's interpreter lock.
(a) and (b) are timed from the 5% mark to the last message (start-up left out), and the
figures are medians of --rounds. CPU per message is this process's user+sys (every thread)
over each timed window, divided by the messages. Uses $KAFKA_BOOTSTRAP_SERVERS, else
starts a local broker with kafka-local.sh. The last line is ``engine/raw throughput ratio: X.XX``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import multiprocessing
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
from confluent_kafka import Consumer, Producer, TopicPartition

from headrace.accumulators import stream_accumulator
from headrace.connectors import KafkaSink, KafkaSource
from headrace.connectors.kafka.source import CONSUMER_DEFAULTS
from headrace.engine import ComputationGraphBuilder, Runtime, node
from headrace.reactors import reactor
from tests.fixtures import env_line, run_script
from tests.fixtures.kafka_broker import KAFKA_LOCAL, committed_offsets, create_topic

BATCH = 500
PARTITIONS = 4
WINDOW_FROM = 0.05
"""Every benchmark's timed window opens at this fraction of its messages (start-up left out)."""
LIBRDKAFKA_FETCH = {"fetch.queue.backoff.ms": 1000}
"""librdkafka's own default, which KafkaSource lowers (see CONSUMER_DEFAULTS)."""


def order_book(i: int, ts: int = 1_700_000_000_000_000_000) -> bytes:
    """~100 bytes of JSON."""
    bid = 50_000.0 + (i % 200) * 0.5
    return orjson.dumps(
        {
            "symbol": "BTC-USD",
            "i": i,
            "b": bid,
            "a": bid + 0.5,
            "bq": 1.25,
            "aq": 0.75,
            "venue": "X",
            "t": ts,
        }
    )


# -- broker -------------------------------------------------------------------------------
@contextlib.contextmanager
def broker() -> Iterator[str]:
    configured = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    if configured:
        yield configured
        return
    state = tempfile.mkdtemp(prefix="headrace-bench-kafka.")
    env = {"HEADRACE_KAFKA_STATE": state}
    try:
        run_script(KAFKA_LOCAL, "fetch", timeout=900)
        out = run_script(KAFKA_LOCAL, "start", "--owner-pid", str(os.getpid()), env=env)
        yield env_line(out, "KAFKA_BOOTSTRAP_SERVERS")
    finally:
        with contextlib.suppress(Exception):
            run_script(KAFKA_LOCAL, "stop", env=env, timeout=120)
        shutil.rmtree(state, ignore_errors=True)


def fill(bootstrap: str, topic: str, count: int, partitions: int | None = None) -> float:
    """Produce ``count`` order books; round robin over ``partitions`` when given (equal
    partitions), else where the sticky partitioner puts them. Returns msg/s."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.size": 1 << 20})
    started = time.perf_counter()
    for i in range(count):
        value = order_book(i)
        while True:
            try:
                if partitions:
                    producer.produce(topic, value, partition=i % partitions)
                else:
                    producer.produce(topic, value)
                break
            except BufferError:
                producer.poll(0.01)
        if i % 1000 == 0:
            producer.poll(0)
    producer.flush(60)
    return count / (time.perf_counter() - started)


def consumer_config(bootstrap: str) -> dict[str, Any]:
    """The settings KafkaSource uses, so (a) and (b) fetch alike."""
    return {
        **CONSUMER_DEFAULTS,
        "bootstrap.servers": bootstrap,
        "group.id": f"bench-raw-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False,
        "partition.assignment.strategy": "cooperative-sticky",
    }


def cpu_seconds() -> float:
    """user+sys of this whole process, every thread (librdkafka's included)."""
    times = os.times()
    return times.user + times.system


Measured = tuple[float, float]  # msg/s, CPU seconds per message over the same window


# -- (a) raw ------------------------------------------------------------------------------
def raw_ceiling(
    bootstrap: str, topic: str, count: int, warmup: int, overrides: dict[str, Any] | None = None
) -> Measured:
    """The window runs from the ``warmup``-th message to the ``count``-th, as in (b)."""
    consumer = Consumer({**consumer_config(bootstrap), **(overrides or {})})
    consumer.subscribe([topic])
    loads = orjson.loads
    seen = opened = 0
    started = cpu = 0.0
    try:
        while seen < count:
            messages = consumer.consume(BATCH, 0.1)
            for msg in messages:
                if msg.error() is None:
                    loads(msg.value())
                    seen += 1
            if not started and seen >= max(warmup, 1):
                started, cpu, opened = time.perf_counter(), cpu_seconds(), seen
        measured = seen - opened
        return measured / (time.perf_counter() - started), (cpu_seconds() - cpu) / measured
    finally:
        consumer.close()


# -- (b) the engine -------------------------------------------------------------------------
def declare(topic: str) -> None:
    """stream accumulator -> sequential reactor -> mid -> signal (redeclared per run)."""

    @stream_accumulator(topic=topic)
    def books(event: dict[str, Any]) -> dict[str, Any]:
        return event

    @reactor(name="books_rx", accumulators=["books"], strategy="sequential")
    class BooksReactor:
        pass

    with ComputationGraphBuilder(
        "signal",
        reactor="books_rx",
        graph={"mid": {"inputs": ["books"], "next": "signal"}, "signal": {}},
    ):

        @node
        def mid(books: dict[str, Any]) -> tuple[dict[str, Any], float]:
            return books, (books["b"] + books["a"]) / 2

        @node
        def signal(book_mid: tuple[dict[str, Any], float]) -> dict[str, Any]:
            book, price = book_mid
            return {
                "symbol": book["symbol"],
                "i": book["i"],
                "mid": price,
                "t": book["t"],
                "r": time.time_ns(),
            }


async def engine_run(
    bootstrap: str, topic: str, count: int, warmup: int, profile: str | None = None
) -> tuple[Measured, bool]:
    """The window runs from the ``warmup``-th delivered output to the ``count``-th."""
    declare(topic)
    output = create_topic(bootstrap, f"bench-out-{uuid.uuid4().hex[:8]}", PARTITIONS)
    group = f"bench-engine-{uuid.uuid4().hex[:8]}"
    source = KafkaSource(bootstrap, group, batch_size=BATCH)
    sink = KafkaSink(bootstrap, output)
    runtime = Runtime(graphs=["signal"], sources=[source], sinks=[sink])
    await runtime.start()
    profiler = None
    try:
        while sink.producer.delivered < warmup:
            await asyncio.sleep(0.001)
        started, cpu, opened = time.perf_counter(), cpu_seconds(), sink.producer.delivered
        if profile:
            from pyinstrument import Profiler

            profiler = Profiler(interval=0.0005)
            profiler.start()
        while sink.producer.delivered < count:
            await asyncio.sleep(0.002)
        measured = sink.producer.delivered - opened
        rate = measured / (time.perf_counter() - started)
        cpu_per_msg = (cpu_seconds() - cpu) / measured
        if profiler is not None:
            profiler.stop()
            with open(profile, "w") as file:
                file.write(profiler.output_text(unicode=False, color=False))
    finally:
        await runtime.stop()
    ends = {}
    probe = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-probe"})
    for partition in range(PARTITIONS):
        ends[partition] = probe.get_watermark_offsets(TopicPartition(topic, partition), 10)[1]
    probe.close()
    return (rate, cpu_per_msg), committed_offsets(bootstrap, group, topic) == ends


# -- latency at a fixed rate ------------------------------------------------------------------
Sample = tuple[float, float, float]  # produce->output, produce->graph, graph->read back (ms)


def load_and_measure(
    bootstrap: str,
    source: str,
    output: str,
    partitions: int,
    rate: int,
    warmup: float,
    seconds: float,
    result: Any,
    isolation: str = "read_uncommitted",
) -> None:
    """Child process: produce at ``rate`` with timestamps, read the signals back (with
    ``isolation``: exactly_once outputs are read with ``read_committed``), and report the
    latencies of those sent after ``warmup`` seconds."""
    import threading

    reader = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": 100,
            "isolation.level": isolation,
        }
    )
    reader.assign([TopicPartition(output, p, 0) for p in range(partitions)])
    # linger.ms=0 sent one ProduceRequest per message and partition: on 4 partitions that
    # doubled the broker's request rate and CPU on a 2-core machine, and the tail went to
    # the CPU contention, not to the measured path. 1 ms, as the engine's own producer.
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 1, "acks": "all"})
    total = int(rate * (warmup + seconds))
    first = int(rate * warmup)
    samples: list[Sample] = []
    received = 0
    done = threading.Event()
    deadline = time.monotonic() + warmup + seconds + 30

    def read() -> None:
        nonlocal received
        while received < total and time.monotonic() < deadline:
            # consume(n, timeout) waits to fill n: take what is there, else wait for one
            for msg in reader.consume(1000, 0) or [reader.poll(0.05)]:
                if msg is None or msg.error() is not None:
                    continue
                now = time.time_ns()
                signal = orjson.loads(msg.value())["signal"]
                received += 1
                if signal["i"] >= first:
                    sent, seen = signal["t"], signal["r"]
                    samples.append(((now - sent) / 1e6, (seen - sent) / 1e6, (now - seen) / 1e6))

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    started = time.monotonic()
    for i in range(total):
        pause = started + i / rate - time.monotonic()
        if pause > 0.0005:
            time.sleep(pause)
        producer.produce(source, order_book(i, time.time_ns()))
        producer.poll(0)
    producer.flush(30)
    done.set()
    thread.join(warmup + seconds + 40)
    reader.close()
    result.put(samples)


async def latency_run(
    bootstrap: str, partitions: int, rate: int, warmup: float, seconds: float
) -> list[Sample]:
    topic = create_topic(bootstrap, f"bench-lat-{uuid.uuid4().hex[:8]}", partitions)
    declare(topic)
    output = create_topic(bootstrap, f"bench-lat-out-{uuid.uuid4().hex[:8]}", partitions)
    source = KafkaSource(bootstrap, f"bench-lat-{uuid.uuid4().hex[:8]}", batch_size=BATCH)
    sink = KafkaSink(bootstrap, output)
    runtime = Runtime(graphs=["signal"], sources=[source], sinks=[sink])
    return await measure_latency(
        bootstrap, runtime, source, topic, output, partitions, rate, warmup, seconds
    )


async def measure_latency(
    bootstrap: str,
    runtime: Runtime,
    source: KafkaSource,
    topic: str,
    output: str,
    partitions: int,
    rate: int,
    warmup: float,
    seconds: float,
    isolation: str = "read_uncommitted",
) -> list[Sample]:
    """Start ``runtime`` (``source`` reads ``topic``, its sink writes ``output``), load it
    at ``rate`` from a child process, and return the latency samples; stops it after."""
    await runtime.start()
    try:
        while not source.health()["assigned"]:
            await asyncio.sleep(0.01)
        context = multiprocessing.get_context("spawn")
        result = context.Queue()
        child = context.Process(
            target=load_and_measure,
            args=(bootstrap, topic, output, partitions, rate, warmup, seconds, result, isolation),
        )
        child.start()
        samples: list[Sample] = []
        while child.is_alive() or not result.empty():
            with contextlib.suppress(Exception):
                samples = await asyncio.to_thread(result.get, True, 1.0)
                break
        await asyncio.to_thread(child.join, 30)
    finally:
        await runtime.stop()
    return samples


def report_latency(samples: list[Sample], partitions: int, rate: int, seconds: float) -> None:
    where = f"{partitions} partition{'s' if partitions > 1 else ''}"
    if not samples:
        print(f"latency ({where}): no signals came back")
        return
    total, into, out = (sorted(column) for column in zip(*samples, strict=True))
    print(
        f"latency produce->output at {rate} msg/s, {where}, {len(samples)} signals over "
        f"{seconds:.0f}s after warm-up: p50 {percentile(total, 0.5):.2f} ms, "
        f"p99 {percentile(total, 0.99):.2f} ms, max {total[-1]:.2f} ms "
        f"(over 10 ms: {sum(v > 10 for v in total) / len(total):.2%})"
    )
    print(
        f"  stages: produce->graph p50 {percentile(into, 0.5):.2f} / p99 "
        f"{percentile(into, 0.99):.2f} ms; graph->output read back p50 "
        f"{percentile(out, 0.5):.2f} / p99 {percentile(out, 0.99):.2f} ms"
    )


def percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--rate", type=int, default=5_000, help="latency phase msgs/s")
    parser.add_argument("--seconds", type=float, default=10.0, help="latency phase length")
    parser.add_argument("--warmup", type=float, default=5.0, help="latency warm-up, not counted")
    parser.add_argument("--rounds", type=int, default=3, help="median of N for (a) and (b)")
    parser.add_argument(
        "--window-from",
        type=float,
        default=WINDOW_FROM,
        help="(a) and (b) are timed from this fraction of the messages on (start-up excluded)",
    )
    parser.add_argument("--profile", help="write a pyinstrument profile of (b) here")
    parser.add_argument(
        "--no-gc-freeze", action="store_true", help="leave the startup heap in the collector"
    )
    args = parser.parse_args()

    cpu = platform.processor() or platform.machine()
    python = platform.python_version()
    print(f"machine: {os.cpu_count()} cpus ({cpu}), Python {python}, {sys.platform}")
    with broker() as bootstrap:
        print(f"broker: {bootstrap}")
        topic = create_topic(bootstrap, f"bench-books-{uuid.uuid4().hex[:8]}", PARTITIONS)
        produced = fill(bootstrap, topic, args.messages)
        print(
            f"topic: {topic}, {PARTITIONS} partitions, {args.messages} order books of "
            f"{len(order_book(0))} B (filled at {produced:,.0f} msg/s)"
        )
        # Objects that exist now (modules, broker helpers) never become garbage: keep them
        # out of the collector's generations, as a long-running worker would.
        if not args.no_gc_freeze:
            gc.collect()
            gc.freeze()
        warmup = int(args.messages * args.window_from)
        raws: list[Measured] = []
        stalled: list[Measured] = []
        engines: list[Measured] = []
        committed = True
        for round_ in range(args.rounds):
            raws.append(raw_ceiling(bootstrap, topic, args.messages, warmup))
            stalled.append(raw_ceiling(bootstrap, topic, args.messages, warmup, LIBRDKAFKA_FETCH))
            profile = args.profile if round_ == 0 else None
            measured, ok = asyncio.run(engine_run(bootstrap, topic, args.messages, warmup, profile))
            engines.append(measured)
            committed = committed and ok
            print(
                f"round {round_ + 1}: raw {raws[-1][0]:,.0f} msg/s, "
                f"{raws[-1][1] * 1e6:.1f} µs CPU/msg (librdkafka's fetch backoff: "
                f"{stalled[-1][0]:,.0f} msg/s); engine {engines[-1][0]:,.0f} msg/s, "
                f"{engines[-1][1] * 1e6:.1f} µs CPU/msg"
            )
        raw, engine = (statistics.median(r for r, _ in runs) for runs in (raws, engines))
        raw_cpu, engine_cpu = (statistics.median(c for _, c in runs) for runs in (raws, engines))
        raw_stalled = statistics.median(r for r, _ in stalled)
        latency = {
            partitions: asyncio.run(
                latency_run(bootstrap, partitions, args.rate, args.warmup, args.seconds)
            )
            for partitions in dict.fromkeys((PARTITIONS, 1))
        }
    frozen = "off" if args.no_gc_freeze else "startup heap frozen"
    print(f"gc: {frozen}; consumer settings of KafkaSource for both (a) and (b)")
    window = f"median of {args.rounds}; window from output {warmup:,} to {args.messages:,}"
    print(f"(a) raw consume+decode ceiling: {raw:,.0f} msg/s ({window})")
    print(
        f"    the same loop with librdkafka's fetch.queue.backoff.ms (1000 ms): "
        f"{raw_stalled:,.0f} msg/s"
    )
    print(
        f"(b) engine end to end:          {engine:,.0f} msg/s ({window}); "
        f"offsets committed to the end: {committed}"
    )
    print(
        f"CPU per message (user+sys, all threads, timed window; median of {args.rounds}): "
        f"raw {raw_cpu * 1e6:.1f} µs, engine {engine_cpu * 1e6:.1f} µs, "
        f"engine/raw {engine_cpu / raw_cpu:.1f}x"
    )
    for partitions, samples in latency.items():
        report_latency(samples, partitions, args.rate, args.seconds)
    print(f"engine/raw throughput ratio: {engine / raw:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
