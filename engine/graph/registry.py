"""Module-level functions over the graphs of :data:`headrace.registry.default_registry`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from headrace.registry import default_registry

if TYPE_CHECKING:
    from headrace.engine.graph.model import ComputationGraph


def register_graph(graph: ComputationGraph) -> None:
    """Register ``graph`` and bind it to its reactor by name."""
    default_registry.register_graph(graph)


def get_graph(name: str) -> ComputationGraph:
    return default_registry.get_graph(name)


def find_graph(name: str) -> ComputationGraph | None:
    return default_registry.find_graph(name)


def registered_graphs() -> dict[str, ComputationGraph]:
    return default_registry.graphs()


def unload_graph(name: str) -> None:
    """Remove a graph and its binding, so its reactor can be unloaded."""
    default_registry.unregister_graph(name)


def clear_graphs() -> None:
    for name in default_registry.graphs():
        default_registry.unregister_graph(name)
