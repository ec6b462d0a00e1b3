"""The process-wide registry of computation graphs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from headrace.reactors import bind_graph, unbind_graph

if TYPE_CHECKING:
    from headrace.engine.graph.builder import ComputationGraph

_graphs: dict[str, ComputationGraph] = {}


def register_graph(graph: ComputationGraph) -> None:
    """Register ``graph`` and bind it to its reactor by name."""
    _graphs[graph.name] = graph
    bind_graph(graph.reactor_name, graph.name)


def get_graph(name: str) -> ComputationGraph:
    try:
        return _graphs[name]
    except KeyError:
        known = ", ".join(sorted(_graphs)) or "none"
        raise KeyError(f"unknown graph {name!r} (registered: {known})") from None


def registered_graphs() -> dict[str, ComputationGraph]:
    return dict(_graphs)


def unload_graph(name: str) -> None:
    """Remove a graph and its binding, so its reactor can be unloaded."""
    get_graph(name)
    del _graphs[name]
    unbind_graph(name)


def clear_graphs() -> None:
    for name in list(_graphs):
        unload_graph(name)
