"""Ceiling: a raw confluent-kafka ``consume(500)`` + orjson decode loop, nothing produced.

Measures itself (there is no output topic to watch): from the message that reaches
BENCH_WARMUP (as the others' window opens at that many outputs) to the BENCH_COUNT-th it
prints one JSON line with the messages, wall time, process CPU (user+sys, all threads)
and peak RSS.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time

import orjson
from confluent_kafka import Consumer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pipeline import settings


def cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def main() -> int:
    run = settings()
    consumer = Consumer(
        {
            "bootstrap.servers": run.bootstrap,
            "group.id": run.group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            **run.consumer_config,
        }
    )
    consumer.subscribe([run.input_topic])
    loads = orjson.loads
    warmup = int(os.environ.get("BENCH_WARMUP", "0"))
    seen, ids, opened = 0, 0, 0
    started = cpu_started = 0.0
    try:
        while seen < run.count:
            messages = consumer.consume(500, 0.1)
            if messages and not started and seen + len(messages) > warmup:
                started, cpu_started, opened = time.perf_counter(), cpu_seconds(), seen
            for msg in messages:
                if msg.error() is None:
                    ids += loads(msg.value())["i"]
                    seen += 1
        wall, cpu = time.perf_counter() - started, cpu_seconds() - cpu_started
    finally:
        consumer.close()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    expected = run.count * (run.count - 1) // 2
    print(
        json.dumps(
            {
                "count": seen,
                "timed": seen - opened,
                "wall": wall,
                "cpu": cpu,
                "peak_rss": rss,
                "ids_ok": ids == expected,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
