"""Engine: computation graphs, their executor, and the runtime that wires everything."""

from engine.builder import ComputationGraph, ComputationGraphBuilder, OnError, RetryPolicy
from engine.errors import (
    GraphDefinitionError,
    GraphHalted,
    NodeExecutionError,
    RoutingError,
    RuntimeConfigError,
)
from engine.nodes import node
from engine.registry import clear_graphs, get_graph, registered_graphs, unload_graph
from engine.runtime import Runtime, Source

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
