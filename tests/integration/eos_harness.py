"""Helpers of the exactly-once tests: the chaos soak app under either guarantee, and
readers that see only committed transactions (``isolation.level=read_committed``).

Built on ``tests/integration/chaos.py`` as it is (its API is not changed here): the soak
config gets ``guarantee``, a transactional id per worker slot and short timeouts.
"""

from __future__ import annotations

from pathlib import Path

from headrace.testing.kafka import TopicReader
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


class CommittedSignals(SignalReader):
    """The soak's outputs as a ``read_committed`` consumer sees them."""

    isolation = "read_committed"


class CommittedDeadLetters(DeadLetterReader):
    """The soak's message dead letters as a ``read_committed`` consumer sees them."""

    isolation = "read_committed"


class CommittedRecords(TopicReader):
    """Any topic as a ``read_committed`` consumer sees it (subclasses override ``handle``)."""

    isolation = "read_committed"
