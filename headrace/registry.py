"""One ``Registry`` of declared accumulators, reactors and graphs, and the bindings between them.

The decorators and the module-level functions (``register_accumulator``, ``get_reactor``,
``unload_graph``, ...) work on the process-wide :data:`default_registry`. Every kind has
the same verbs: ``register_*``, ``get_*`` (``KeyError`` naming the known entries),
``find_*`` (``None`` when unknown), ``*s()`` (a copy of all entries) and
``unregister_*``. ``snapshot()`` and ``restore()`` save and bring back the whole state,
which is how tests isolate their declarations.

This module imports nothing from the rest of Headrace at run time, so every layer
(accumulators, reactors, engine) can use it without an import cycle.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from headrace.accumulators.spec import AccumulatorSpec
    from headrace.engine.graph.model import ComputationGraph
    from headrace.reactors.declaration import ReactorSpec

T = TypeVar("T")


class ReactorInUseError(RuntimeError):
    """A reactor still has graphs bound to it and cannot be unloaded."""


class _Table(Generic[T]):
    """Entries of one kind by name; lookups of unknown names list the known ones."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.entries: dict[str, T] = {}

    def get(self, name: str) -> T:
        try:
            return self.entries[name]
        except KeyError:
            known = ", ".join(sorted(self.entries)) or "none"
            raise KeyError(f"unknown {self.kind} {name!r} (registered: {known})") from None

    def remove(self, name: str) -> T:
        entry = self.get(name)
        del self.entries[name]
        return entry


@dataclass(frozen=True)
class RegistrySnapshot:
    """The state of a :class:`Registry` at one moment (read-only copies)."""

    accumulators: Mapping[str, AccumulatorSpec]
    reactors: Mapping[str, ReactorSpec]
    graphs: Mapping[str, ComputationGraph]
    bindings: Mapping[str, frozenset[str]]


class Registry:
    """Declared accumulators, reactors and graphs, and which graphs bind to which reactor.

    A graph binds to its reactor by name when it is registered; the reactor may be
    registered later (cross-module binding). A reactor with bound graphs cannot be
    unregistered until those graphs are.
    """

    def __init__(self) -> None:
        self._accumulators: _Table[AccumulatorSpec] = _Table("accumulator")
        self._reactors: _Table[ReactorSpec] = _Table("reactor")
        self._graphs: _Table[ComputationGraph] = _Table("graph")
        self._bindings: dict[str, set[str]] = {}

    # -- accumulators ----------------------------------------------------------------
    def register_accumulator(self, spec: AccumulatorSpec) -> None:
        """Register ``spec``; redeclaring a name replaces it (module reloads)."""
        self._accumulators.entries[spec.name] = spec

    def get_accumulator(self, name: str) -> AccumulatorSpec:
        return self._accumulators.get(name)

    def find_accumulator(self, name: str) -> AccumulatorSpec | None:
        return self._accumulators.entries.get(name)

    def accumulators(self) -> dict[str, AccumulatorSpec]:
        return dict(self._accumulators.entries)

    def unregister_accumulator(self, name: str) -> AccumulatorSpec:
        return self._accumulators.remove(name)

    # -- reactors --------------------------------------------------------------------
    def register_reactor(self, spec: ReactorSpec) -> None:
        """Register ``spec``; redeclaring a name replaces it and keeps its bindings."""
        self._reactors.entries[spec.name] = spec

    def get_reactor(self, name: str) -> ReactorSpec:
        return self._reactors.get(name)

    def find_reactor(self, name: str) -> ReactorSpec | None:
        return self._reactors.entries.get(name)

    def reactors(self) -> dict[str, ReactorSpec]:
        return dict(self._reactors.entries)

    def unregister_reactor(self, name: str) -> ReactorSpec:
        """Remove a reactor; refused while graphs are bound to it."""
        graphs = self.bound_graphs(name)
        if graphs:
            raise ReactorInUseError(
                f"reactor {name!r} cannot be unloaded: graphs {graphs} are bound to it; "
                "unload those graphs first"
            )
        return self._reactors.remove(name)

    # -- graphs ----------------------------------------------------------------------
    def register_graph(self, graph: ComputationGraph) -> None:
        """Register ``graph`` and bind it to its reactor by name."""
        self._graphs.entries[graph.name] = graph
        self.bind(graph.reactor_name, graph.name)

    def get_graph(self, name: str) -> ComputationGraph:
        return self._graphs.get(name)

    def find_graph(self, name: str) -> ComputationGraph | None:
        return self._graphs.entries.get(name)

    def graphs(self) -> dict[str, ComputationGraph]:
        return dict(self._graphs.entries)

    def unregister_graph(self, name: str) -> ComputationGraph:
        """Remove a graph and its binding, so its reactor can be unregistered."""
        graph = self._graphs.remove(name)
        self.unbind(name)
        return graph

    # -- bindings --------------------------------------------------------------------
    def bind(self, reactor_name: str, graph_name: str) -> None:
        """Bind ``graph_name`` to ``reactor_name`` (and to no other reactor)."""
        self.unbind(graph_name)
        self._bindings.setdefault(reactor_name, set()).add(graph_name)

    def unbind(self, graph_name: str) -> None:
        for graphs in self._bindings.values():
            graphs.discard(graph_name)

    def bound_graphs(self, reactor_name: str) -> list[str]:
        return sorted(self._bindings.get(reactor_name, ()))

    def clear_bindings(self) -> None:
        self._bindings.clear()

    # -- the whole state -------------------------------------------------------------
    def snapshot(self) -> RegistrySnapshot:
        return RegistrySnapshot(
            accumulators=MappingProxyType(dict(self._accumulators.entries)),
            reactors=MappingProxyType(dict(self._reactors.entries)),
            graphs=MappingProxyType(dict(self._graphs.entries)),
            bindings=MappingProxyType(
                {name: frozenset(graphs) for name, graphs in self._bindings.items() if graphs}
            ),
        )

    def restore(self, snapshot: RegistrySnapshot) -> None:
        """Bring back exactly the state of ``snapshot`` (in place: holders see it)."""
        self._accumulators.entries = dict(snapshot.accumulators)
        self._reactors.entries = dict(snapshot.reactors)
        self._graphs.entries = dict(snapshot.graphs)
        self._bindings = {name: set(graphs) for name, graphs in snapshot.bindings.items()}

    def clear(self) -> None:
        """Forget every declaration and binding."""
        self.restore(RegistrySnapshot({}, {}, {}, {}))

    @contextmanager
    def isolated(self) -> Iterator[Registry]:
        """Declarations made inside the block are undone when it ends."""
        saved = self.snapshot()
        try:
            yield self
        finally:
            self.restore(saved)

    def __repr__(self) -> str:
        return (
            f"Registry(accumulators={len(self._accumulators.entries)}, "
            f"reactors={len(self._reactors.entries)}, graphs={len(self._graphs.entries)})"
        )


default_registry = Registry()
"""The process-wide registry the decorators, builders, config loader and runtime use."""

__all__ = ["ReactorInUseError", "Registry", "RegistrySnapshot", "default_registry"]
