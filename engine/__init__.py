"""Engine: computation graphs, their executor, and the runtime that wires everything."""

from headrace.engine.errors import (
    GraphDefinitionError,
    GraphHalted,
    NodeExecutionError,
    RoutingError,
    RuntimeConfigError,
)
from headrace.engine.graph.builder import (
    ComputationGraph,
    ComputationGraphBuilder,
    OnError,
    RetryPolicy,
)
from headrace.engine.graph.nodes import node
from headrace.engine.graph.registry import clear_graphs, get_graph, registered_graphs, unload_graph
from headrace.engine.runtime import Runtime, Source

__all__ = [
    "ComputationGraph",
    "ComputationGraphBuilder",
    "GraphDefinitionError",
    "GraphHalted",
    "NodeExecutionError",
    "OnError",
    "RetryPolicy",
    "RoutingError",
    "Runtime",
    "RuntimeConfigError",
    "Source",
    "clear_graphs",
    "get_graph",
    "node",
    "registered_graphs",
    "unload_graph",
]
