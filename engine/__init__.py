"""Engine: computation graphs, their executor, and the runtime that wires everything.

Every public name loads its module on first use (PEP 562), so importing this package
is cheap and pulls in nothing it does not need.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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
    from headrace.engine.graph.registry import (
        clear_graphs,
        get_graph,
        registered_graphs,
        unload_graph,
    )
    from headrace.engine.runtime import Runtime, Source

_LAZY: dict[str, str] = {
    "ComputationGraph": "headrace.engine.graph.builder",
    "ComputationGraphBuilder": "headrace.engine.graph.builder",
    "GraphDefinitionError": "headrace.engine.errors",
    "GraphHalted": "headrace.engine.errors",
    "NodeExecutionError": "headrace.engine.errors",
    "OnError": "headrace.engine.graph.builder",
    "RetryPolicy": "headrace.engine.graph.builder",
    "RoutingError": "headrace.engine.errors",
    "Runtime": "headrace.engine.runtime",
    "RuntimeConfigError": "headrace.engine.errors",
    "Source": "headrace.engine.runtime",
    "clear_graphs": "headrace.engine.graph.registry",
    "get_graph": "headrace.engine.graph.registry",
    "node": "headrace.engine.graph.nodes",
    "registered_graphs": "headrace.engine.graph.registry",
    "unload_graph": "headrace.engine.graph.registry",
}


def __getattr__(name: str) -> Any:
    """Import the module that defines ``name`` the first time it is asked for."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'headrace.engine' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


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
