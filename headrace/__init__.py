"""Headrace: a streaming dataflow engine over Kafka.

Accumulators turn topics, timers and pushes into values; reactors decide when computation
graphs (DAGs of Python functions) fire. ``import headrace`` gives the public surface;
subpackages are ``headrace.engine``, ``headrace.connectors``, ``headrace.accumulators``,
``headrace.reactors`` and ``headrace.testing``. The Kafka classes load confluent-kafka
on first use, so ``import headrace`` alone does not.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from headrace.accumulators import (
    AccumulatorInputError,
    ChannelClosedError,
    batch_accumulator,
    passthrough_accumulator,
    polling_accumulator,
    stream_accumulator,
)
from headrace.connectors.dead_letters import DeadLetter, MemoryDeadLetters
from headrace.connectors.sinks import BaseSink, CallbackSink, LogSink, MemorySink, Sink
from headrace.engine import (
    ComputationGraph,
    ComputationGraphBuilder,
    GraphDefinitionError,
    GraphHalted,
    NodeExecutionError,
    RetryPolicy,
    RoutingError,
    Runtime,
    RuntimeConfigError,
    node,
)
from headrace.reactors import reactor
from headrace.registry import ReactorInUseError, Registry, default_registry

if TYPE_CHECKING:
    from headrace.connectors.kafka.dead_letters import KafkaDeadLetters
    from headrace.connectors.kafka.sink import KafkaSink
    from headrace.connectors.kafka.source import KafkaSource

__version__ = "0.1.0"

_LAZY = {
    "KafkaDeadLetters": "headrace.connectors.kafka.dead_letters",
    "KafkaSink": "headrace.connectors.kafka.sink",
    "KafkaSource": "headrace.connectors.kafka.source",
}


def __getattr__(name: str) -> Any:
    """Load the Kafka classes (and confluent-kafka) only when they are first used."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'headrace' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "AccumulatorInputError",
    "BaseSink",
    "CallbackSink",
    "ChannelClosedError",
    "ComputationGraph",
    "ComputationGraphBuilder",
    "DeadLetter",
    "GraphDefinitionError",
    "GraphHalted",
    "KafkaDeadLetters",
    "KafkaSink",
    "KafkaSource",
    "LogSink",
    "MemoryDeadLetters",
    "MemorySink",
    "NodeExecutionError",
    "ReactorInUseError",
    "Registry",
    "RetryPolicy",
    "RoutingError",
    "Runtime",
    "RuntimeConfigError",
    "Sink",
    "__version__",
    "batch_accumulator",
    "default_registry",
    "node",
    "passthrough_accumulator",
    "polling_accumulator",
    "reactor",
    "stream_accumulator",
]
