"""Connectors: Kafka source and sink, offset tracking, dead letters, other sinks."""

from connectors.dead_letters import DeadLetter, DeadLetterSink, FanOutDeadLetters, MemoryDeadLetters
from connectors.sinks import BaseSink, CallbackSink, LogSink, MemorySink, Sink

__all__ = [
    "BaseSink",
    "CallbackSink",
    "DeadLetter",
    "DeadLetterSink",
    "FanOutDeadLetters",
    "LogSink",
    "MemoryDeadLetters",
    "MemorySink",
    "Sink",
]
