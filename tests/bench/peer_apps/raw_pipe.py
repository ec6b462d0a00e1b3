"""Raw confluent-kafka consume -> validate, mid/spread -> produce, committed after delivery.

Every ``commit_interval`` it flushes the producer, then commits the consumer's positions
(everything consumed so far is delivered by then). SIGTERM: flush, commit, exit 0.
"""

from __future__ import annotations

import os
import signal as signals
import sys
import time

import orjson
from confluent_kafka import Consumer, Producer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pipeline import settings, signal, valid


def main() -> int:
    run = settings()
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signals.signal(signals.SIGTERM, stop)
    consumer = Consumer(
        {
            "bootstrap.servers": run.bootstrap,
            "group.id": run.group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            **run.consumer_config,
        }
    )
    # Headrace's producer defaults (acks=all, idempotent), so both confirm the same way.
    producer = Producer(
        {
            "bootstrap.servers": run.bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 2,
        }
    )
    consumer.subscribe([run.input_topic])
    loads, dumps, produce, out = orjson.loads, orjson.dumps, producer.produce, run.output_topic
    uncommitted = False
    next_commit = time.monotonic() + run.commit_interval
    while not stopping:
        for msg in consumer.consume(500, 0.1):
            if msg.error() is not None:
                continue
            book = loads(msg.value())
            if valid(book):
                value = dumps(signal(book))
                while True:
                    try:
                        produce(out, value)
                        break
                    except BufferError:
                        producer.poll(0.01)
            uncommitted = True
        producer.poll(0)
        if uncommitted and time.monotonic() >= next_commit:
            producer.flush()
            consumer.commit(asynchronous=False)
            uncommitted = False
            next_commit = time.monotonic() + run.commit_interval
    producer.flush()
    if uncommitted:
        consumer.commit(asynchronous=False)
    consumer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
