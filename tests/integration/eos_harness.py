"""Helpers of the exactly-once tests: the chaos soak app under either guarantee, and
readers that see only committed transactions (``isolation.level=read_committed``).

Built on ``tests/integration/chaos.py`` as it is (its API is not changed here): the soak
config gets ``guarantee``, a transactional id per worker slot and short timeouts.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from headrace.testing.kafka import TopicReader
from tests.fixtures.kafka_broker import partitions_of
from tests.integration.chaos import DeadLetterReader, SignalReader, write_soak_app

GUARANTEE_LINE = 'guarantee = "${SOAK_GUARANTEE:-at_least_once}"\n'
DLQ_SUFFIX_LINE = 'topic_suffix = "${SOAK_DLQ_SUFFIX:-.dlq}"\n'
TRANSACTIONS_TABLE = """
[worker.transactions]
transactional_id = "${SOAK_TXN_ID}"
max_inputs = "${SOAK_MAX_INPUTS:-2000}"
"""


def write_eos_app(directory: Path) -> Path:
    """The chaos soak's app, its guarantee and transactional id taken from the environment
    (``SOAK_GUARANTEE``, ``SOAK_TXN_ID``: one per worker slot); returns the config path."""
    config = write_soak_app(directory)
    text = config.read_text()
    marker = 'drain_timeout = "${SOAK_DRAIN_TIMEOUT:-45s}"\n'
    assert marker in text and "\n[worker.consumer]" in text, "update eos_harness: soak config"
    dead_letters = "[worker.dead_letters]\nkafka = true\n"
    assert dead_letters in text, "update eos_harness: soak config"
    text = text.replace(dead_letters, dead_letters + DLQ_SUFFIX_LINE, 1)
    text = text.replace(marker, marker + GUARANTEE_LINE, 1)
    text = text.replace("\n[worker.consumer]", TRANSACTIONS_TABLE + "\n[worker.consumer]", 1)
    config.write_text(text)
    return config


def _read_committed(reader: Any, bootstrap: str, topic: str) -> None:
    reader.consumer.close()
    reader.consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "log_level": 2,
        }
    )
    reader.consumer.assign([TopicPartition(topic, p, 0) for p in partitions_of(bootstrap, topic)])


class CommittedSignals(SignalReader):
    """The soak's outputs as a ``read_committed`` consumer sees them."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(bootstrap, topic)
        _read_committed(self, bootstrap, topic)


class CommittedDeadLetters(DeadLetterReader):
    """The soak's message dead letters as a ``read_committed`` consumer sees them."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(bootstrap, topic)
        _read_committed(self, bootstrap, topic)


class CommittedRecords(TopicReader):
    """Any topic as a ``read_committed`` consumer sees it (subclasses override ``handle``)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(bootstrap, topic)
        _read_committed(self, bootstrap, topic)
