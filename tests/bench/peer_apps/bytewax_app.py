"""Bytewax: Kafka input -> filter_map(decode, valid, signal, encode) -> Kafka output.

Run as ``python -m bytewax.run bytewax_app:flow`` in its own venv. Bytewax keeps the input
offsets in its recovery store, not in a consumer group: peers.py runs it with a recovery
directory and a snapshot interval equal to the others' commit interval.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import bytewax.operators as op
import orjson
from bytewax.connectors.kafka import KafkaSinkMessage
from bytewax.connectors.kafka import operators as kop
from bytewax.dataflow import Dataflow
from confluent_kafka import OFFSET_BEGINNING

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pipeline import settings, signal, valid

run = settings()


def process(msg: Any) -> KafkaSinkMessage[None, bytes] | None:
    book = orjson.loads(msg.value)
    if not valid(book):
        return None
    return KafkaSinkMessage(key=None, value=orjson.dumps(signal(book)))


flow = Dataflow("bench_signal")
source = kop.input(
    "books",
    flow,
    brokers=[run.bootstrap],
    topics=[run.input_topic],
    starting_offset=OFFSET_BEGINNING,
    add_config={key: str(value) for key, value in run.consumer_config.items()} or None,
)
signals = op.filter_map("signal", source.oks, process)
kop.output("out", signals, brokers=[run.bootstrap], topic=run.output_topic)
