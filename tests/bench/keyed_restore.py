"""Keyed changelog restore benchmark on a real broker; not a test.

    python -m tests.bench.keyed_restore [--keys 100000] [--partitions 1]

Writes ``--keys`` keys (one accumulator value each, half of them dirty) into a compacted
changelog topic, as ``ChangelogWriter`` writes them, then restores them the way a worker
does on assignment: ``read_partition`` per partition (concurrently, one thread each) and
``KeyedPolicy.restore`` of every key. Prints the read and apply times and keys/s. Uses
$KAFKA_BOOTSTRAP_SERVERS, else starts a local broker. Figures depend on the machine's
load (printed with them).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import time
import uuid

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from headrace.connectors.kafka.changelog import encode_key, encode_value, read_partition
from headrace.reactors.declaration import make_reactor_spec
from headrace.reactors.keyed_policy import KeyedPolicy
from tests.bench.kafka_throughput import broker


def write(bootstrap: str, topic: str, keys: int, partitions: int) -> float:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics(
        [NewTopic(topic, partitions, config={"cleanup.policy": "compact"})]
    )
    futures[topic].result(60)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.size": 1 << 20})
    started = time.perf_counter()
    for n in range(keys):
        book = {"symbol": f"K{n:06d}", "best_bid": 100.0 + n % 7, "best_ask": 100.5 + n % 7}
        while True:
            try:
                producer.produce(
                    topic,
                    encode_value(book, n % 2 == 0),
                    encode_key(book["symbol"], "books"),
                    partition=n % partitions,
                )
                break
            except BufferError:
                producer.poll(0.01)
        if n % 1000 == 0:
            producer.poll(0)
    producer.flush(120)
    return time.perf_counter() - started


async def restore(bootstrap: str, topic: str, partitions: int) -> tuple[float, float, int]:
    spec = make_reactor_spec("bench_restore", ["books", "refs"], "when_all", "latest", keyed=True)
    policy = KeyedPolicy(spec)
    started = time.perf_counter()
    read = await asyncio.gather(
        *(asyncio.to_thread(read_partition, bootstrap, topic, p) for p in range(partitions))
    )
    read_seconds = time.perf_counter() - started
    applied = time.perf_counter()
    gc.disable()  # as KeyedReactorLoop.restore does
    try:
        for partition, keys in enumerate(read):
            for key, values in keys.items():
                policy.restore(key, partition, values)
    finally:
        gc.enable()
    return read_seconds, time.perf_counter() - applied, len(policy.keys)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--partitions", type=int, default=1)
    args = parser.parse_args()
    with broker() as bootstrap:
        topic = f"bench-changelog-{uuid.uuid4().hex[:8]}"
        wrote = write(bootstrap, topic, args.keys, args.partitions)
        load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
        print(
            f"keyed changelog restore, {args.keys:,} keys over {args.partitions} partition(s); "
            f"Python {platform.python_version()}, {os.cpu_count()} cores, load average {load} "
            "(shared machine: figures are indicative only)"
        )
        print(f"written in {wrote:.2f} s")
        read_s, apply_s, restored = asyncio.run(restore(bootstrap, topic, args.partitions))
        total = read_s + apply_s
        print(
            f"restored {restored:,} keys in {total:.2f} s = {restored / total:,.0f} keys/s "
            f"(read {read_s:.2f} s, apply {apply_s:.2f} s)"
        )
        if restored != args.keys:
            raise SystemExit(f"restored {restored} keys, wrote {args.keys}")


if __name__ == "__main__":
    main()
