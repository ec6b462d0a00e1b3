"""Connectors: Kafka source and sink, offset tracking, dead letters, other sinks."""

from connectors.dead_letters import DeadLetter, DeadLetterSink, FanOutDeadLetters, MemoryDeadLetters
from connectors.kafka_dead_letters import KafkaDeadLetters
from connectors.kafka_sink import KafkaSink, json_serializer
from connectors.kafka_source import KafkaSource
from connectors.offsets import OffsetTracker
from connectors.sinks import (
    BaseSink,
    CallbackSink,
    LogSink,
    MemorySink,
    ResultStore,
    Sink,
    StoreSink,
)

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
    "StoreSink",
    "json_serializer",
]
