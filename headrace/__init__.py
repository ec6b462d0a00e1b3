"""Headrace: a streaming dataflow engine over Kafka.

Accumulators turn topics, timers and pushes into values; reactors decide when computation
graphs (DAGs of Python functions) fire. ``import headrace`` gives the public surface;
subpackages are ``headrace.engine``, ``headrace.connectors``, ``headrace.accumulators``,
``headrace.reactors`` and ``headrace.testing``. The Kafka classes load confluent-kafka
on first use, so ``import headrace`` alone does not.

Every public name loads its module on first use (PEP 562), so importing this package
is cheap and pulls in nothing it does not need.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from headrace.accumulators import (
        AccumulatorInputError,
        ChannelClosedError,
        batch_accumulator,
        passthrough_accumulator,
        polling_accumulator,
        stream_accumulator,
    )
    from headrace.connectors.dead_letters import DeadLetter, MemoryDeadLetters
    from headrace.connectors.kafka.dead_letters import KafkaDeadLetters
    from headrace.connectors.kafka.sink import KafkaSink
    from headrace.connectors.kafka.source import KafkaSource
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

__version__ = "0.1.0"

_LAZY: dict[str, str] = {
    "AccumulatorInputError": "headrace.accumulators",
    "BaseSink": "headrace.connectors.sinks",
    "CallbackSink": "headrace.connectors.sinks",
    "ChannelClosedError": "headrace.accumulators",
    "ComputationGraph": "headrace.engine",
    "ComputationGraphBuilder": "headrace.engine",
    "DeadLetter": "headrace.connectors.dead_letters",
    "GraphDefinitionError": "headrace.engine",
    "GraphHalted": "headrace.engine",
    "KafkaDeadLetters": "headrace.connectors.kafka.dead_letters",
    "KafkaSink": "headrace.connectors.kafka.sink",
    "KafkaSource": "headrace.connectors.kafka.source",
    "LogSink": "headrace.connectors.sinks",
    "MemoryDeadLetters": "headrace.connectors.dead_letters",
    "MemorySink": "headrace.connectors.sinks",
    "NodeExecutionError": "headrace.engine",
    "ReactorInUseError": "headrace.registry",
    "Registry": "headrace.registry",
    "RetryPolicy": "headrace.engine",
    "RoutingError": "headrace.engine",
    "Runtime": "headrace.engine",
    "RuntimeConfigError": "headrace.engine",
    "Sink": "headrace.connectors.sinks",
    "batch_accumulator": "headrace.accumulators",
    "default_registry": "headrace.registry",
    "node": "headrace.engine",
    "passthrough_accumulator": "headrace.accumulators",
    "polling_accumulator": "headrace.accumulators",
    "reactor": "headrace.reactors",
    "stream_accumulator": "headrace.accumulators",
}


def __getattr__(name: str) -> Any:
    """Import the module that defines ``name`` the first time it is asked for."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'headrace' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


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
