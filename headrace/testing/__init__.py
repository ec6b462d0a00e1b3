"""Testing toolkit for Headrace users: what the project's own tests use, as public API.

The pytest plugin (entry point ``pytest11`` ``headrace``, loaded automatically once
headrace is installed) provides the fixtures ``headrace_registry``, ``kafka_broker``,
``kafka_bootstrap``, ``kafka_topic``, ``headrace_worker`` and ``fake_clock``. The helpers
below work without pytest too. Names load on first use, so importing this package does not
import confluent-kafka or httpx (``pip install 'headrace[testing]'`` for httpx).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from headrace.testing.clock import FakeClock
    from headrace.testing.graphs import MemoryRuntime, run_snapshots, run_snapshots_async
    from headrace.testing.infra import in_ci, unavailable
    from headrace.testing.kafka import (
        LOCAL_KAFKA_DIR,
        LOCAL_KAFKA_SCRIPT,
        Broker,
        KafkaRecord,
        NoBrokerError,
        TopicReader,
        choose_broker,
        committed_offsets,
        consume_all,
        consume_json,
        consume_messages,
        create_topic,
        delete_topics,
        end_offsets,
        produce,
        produce_json,
        unique_topic,
    )
    from headrace.testing.worker import HeadraceWorker, InProcessWorker, WorkerError

_LAZY = {
    "Broker": "headrace.testing.kafka",
    "FakeClock": "headrace.testing.clock",
    "HeadraceWorker": "headrace.testing.worker",
    "InProcessWorker": "headrace.testing.worker",
    "KafkaRecord": "headrace.testing.kafka",
    "LOCAL_KAFKA_DIR": "headrace.testing.kafka",
    "LOCAL_KAFKA_SCRIPT": "headrace.testing.kafka",
    "MemoryRuntime": "headrace.testing.graphs",
    "NoBrokerError": "headrace.testing.kafka",
    "TopicReader": "headrace.testing.kafka",
    "WorkerError": "headrace.testing.worker",
    "choose_broker": "headrace.testing.kafka",
    "committed_offsets": "headrace.testing.kafka",
    "consume_all": "headrace.testing.kafka",
    "consume_json": "headrace.testing.kafka",
    "consume_messages": "headrace.testing.kafka",
    "create_topic": "headrace.testing.kafka",
    "delete_topics": "headrace.testing.kafka",
    "end_offsets": "headrace.testing.kafka",
    "in_ci": "headrace.testing.infra",
    "produce": "headrace.testing.kafka",
    "produce_json": "headrace.testing.kafka",
    "run_snapshots": "headrace.testing.graphs",
    "run_snapshots_async": "headrace.testing.graphs",
    "unavailable": "headrace.testing.infra",
    "unique_topic": "headrace.testing.kafka",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'headrace.testing' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "LOCAL_KAFKA_DIR",
    "LOCAL_KAFKA_SCRIPT",
    "Broker",
    "FakeClock",
    "HeadraceWorker",
    "InProcessWorker",
    "KafkaRecord",
    "MemoryRuntime",
    "NoBrokerError",
    "TopicReader",
    "WorkerError",
    "choose_broker",
    "committed_offsets",
    "consume_all",
    "consume_json",
    "consume_messages",
    "create_topic",
    "delete_topics",
    "end_offsets",
    "in_ci",
    "produce",
    "produce_json",
    "run_snapshots",
    "run_snapshots_async",
    "unavailable",
    "unique_topic",
]
