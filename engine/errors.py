"""Errors raised by graph definition, execution and runtime wiring."""

from __future__ import annotations


class GraphDefinitionError(ValueError):
    """A computation graph's topology or node functions are invalid."""

    def __init__(self, graph: str, message: str, node: str | None = None) -> None:
        where = f"graph {graph!r}" + (f", node {node!r}" if node else "")
        super().__init__(f"{where}: {message}")
        self.graph = graph
        self.node = node


class NodeExecutionError(RuntimeError):
    """A node raised, or returned something its topology does not allow."""

    def __init__(self, graph: str, node: str, cause: str) -> None:
        super().__init__(f"graph {graph!r}, node {node!r}: {cause}")
        self.graph = graph
        self.node = node
        self.cause = cause


class RoutingError(NodeExecutionError):
    """A routing node returned something that is not ``(known_variant, payload)``."""


class RuntimeConfigError(ValueError):
    """The runtime's accumulators, reactors and graphs do not fit together."""


class GraphHalted(RuntimeError):
    """A graph with ``on_error = "stop"`` failed for good; its reactor stops firing."""


class SinkFailed(RuntimeError):
    """A sink failed for good (a fatal client error): its reactor stops, nothing is
    dead-lettered, and the inputs stay unsettled so they are consumed again after a restart."""
