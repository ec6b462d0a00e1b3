"""``ComputationGraphBuilder``: declare a graph's topology and its ``@node`` functions."""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import Any

from headrace.accumulators import parse_duration, registered_accumulators
from headrace.engine.errors import GraphDefinitionError
from headrace.engine.graph.executor import GraphExecutor
from headrace.engine.graph.model import ComputationGraph, OnError, RetryPolicy
from headrace.engine.graph.nodes import NodeCollector, NodeFunction, pop_builder, push_builder
from headrace.engine.graph.registry import register_graph
from headrace.engine.graph.topology import parse_topology
from headrace.reactors import find_reactor, reactor_name_of
from headrace.reactors.keyed import keyless_accumulators, keyless_message

__all__ = ["ComputationGraph", "ComputationGraphBuilder", "OnError", "RetryPolicy"]


class ComputationGraphBuilder(NodeCollector):
    """Context manager that collects ``@node`` functions and checks them on exit.

    ``graph`` maps node names to ``{"inputs": [...]}``, ``{"next": ...}``,
    ``{"routes": {"Variant": ...}}`` or ``{}`` (terminal). ``reactor`` is a ``@reactor``
    class or a reactor's name (binding across modules).
    """

    def __init__(
        self,
        name: str,
        *,
        reactor: Any,
        graph: Mapping[str, Any],
        retry: RetryPolicy | None = None,
        retry_attempts: int | None = None,
        retry_backoff: str | float | None = None,
        on_error: str = "dead_letter",
    ) -> None:
        if not isinstance(name, str) or not name:
            raise GraphDefinitionError(str(name), "graph name must be a non-empty string")
        self.name = name
        self.reactor_name = reactor_name_of(reactor)
        self.topology = parse_topology(name, graph)
        self.functions: dict[str, NodeFunction] = {}
        try:
            self.on_error = OnError(on_error)
        except ValueError:
            raise GraphDefinitionError(
                name, f"on_error must be 'dead_letter' or 'stop', got {on_error!r}"
            ) from None
        if retry is None:
            retry = RetryPolicy(
                attempts=1 if retry_attempts is None else retry_attempts,
                backoff=parse_duration(retry_backoff, f"graph {name!r} retry_backoff")
                if retry_backoff is not None
                else 0.1,
            )
        self.retry = retry
        self.graph: ComputationGraph | None = None

    def __enter__(self) -> ComputationGraphBuilder:
        push_builder(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        pop_builder(self)
        if exc_type is None:
            self.graph = self.build()

    def add_node(self, name: str, fn: Any, thread: bool = False) -> None:
        """Attach a node function without the decorator (used by config files)."""
        self.functions[name] = NodeFunction(name, fn, thread)

    def build(self) -> ComputationGraph:
        """Check nodes against the topology and the reactor, then register the graph."""
        missing = [n for n in self.topology.order if n not in self.functions]
        if missing:
            raise GraphDefinitionError(
                self.name, "the topology names it but no @node function defines it", missing[0]
            )
        extra = [n for n in self.functions if n not in self.topology.shapes]
        if extra:
            raise GraphDefinitionError(
                self.name, "@node function does not appear in the graph topology", extra[0]
            )
        graph = ComputationGraph(
            name=self.name,
            reactor_name=self.reactor_name,
            topology=self.topology,
            executor=GraphExecutor(self.topology, self.functions),
            retry=self.retry,
            on_error=self.on_error,
        )
        spec = find_reactor(self.reactor_name)
        if spec is not None:
            graph.check_reactor(spec)
            keyless = keyless_accumulators(spec, registered_accumulators())
            if keyless:
                raise GraphDefinitionError(self.name, keyless_message(spec, keyless))
        register_graph(graph)
        return graph

    def _built(self) -> ComputationGraph:
        if self.graph is None:
            raise RuntimeError(
                f"graph {self.name!r} is not built yet: leave the 'with' block first"
            )
        return self.graph

    def execute(self, inputs: Mapping[str, Any], key: str | None = None) -> dict[str, Any]:
        """Run the graph once; returns ``{terminal_node: output}`` for terminals that ran.

        ``key`` plays a keyed reactor's fire key: entry nodes with a ``key`` parameter get it.
        """
        return self._built().execute(inputs, key)

    async def execute_async(
        self, inputs: Mapping[str, Any], key: str | None = None
    ) -> dict[str, Any]:
        return await self._built().execute_async(inputs, key)

    def __repr__(self) -> str:
        return f"ComputationGraphBuilder(name={self.name!r}, nodes={len(self.topology.order)})"
