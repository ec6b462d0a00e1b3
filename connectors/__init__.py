"""Connectors: the Kafka source and sink, dead letters, other sinks.

The Kafka classes (and confluent-kafka) load on first use, so importing this package or
``headrace.engine`` does not import confluent-kafka.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from headrace.connectors.base import Source, SourceContext
from headrace.connectors.dead_letters import (
    DeadLetter,
    DeadLetterSink,
    FanOutDeadLetters,
    MemoryDeadLetters,
)
from headrace.connectors.sinks import (
    BaseSink,
    CallbackSink,
    LogSink,
    MemorySink,
    ResultStore,
    Sink,
    StoreSink,
)

if TYPE_CHECKING:
    from headrace.connectors.kafka.dead_letters import KafkaDeadLetters
    from headrace.connectors.kafka.offsets import OffsetTracker
    from headrace.connectors.kafka.sink import KafkaSink, json_serializer
    from headrace.connectors.kafka.source import KafkaSource

_LAZY = {
    "KafkaDeadLetters": "headrace.connectors.kafka.dead_letters",
    "KafkaSink": "headrace.connectors.kafka.sink",
    "KafkaSource": "headrace.connectors.kafka.source",
    "OffsetTracker": "headrace.connectors.kafka.offsets",
    "json_serializer": "headrace.connectors.kafka.sink",
}


def __getattr__(name: str) -> Any:
    """Load a Kafka name (and confluent-kafka) on first use."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'headrace.connectors' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "BaseSink",
    "CallbackSink",
    "DeadLetter",
    "DeadLetterSink",
    "FanOutDeadLetters",
    "KafkaDeadLetters",
    "KafkaSink",
    "KafkaSource",
    "LogSink",
    "MemoryDeadLetters",
    "MemorySink",
    "OffsetTracker",
    "ResultStore",
    "Sink",
    "Source",
    "SourceContext",
    "StoreSink",
    "json_serializer",
]
