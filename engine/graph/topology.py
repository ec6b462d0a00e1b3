"""Parsing and checking a graph's topology dict: nodes, edges, entry inputs, cycles."""

from __future__ import annotations

import graphlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from headrace.engine.errors import GraphDefinitionError

_ALLOWED_KEYS = {"inputs", "next", "routes"}


@dataclass(frozen=True)
class NodeShape:
    """Where one node gets its input and where its output goes."""

    name: str
    inputs: tuple[str, ...] = ()
    next: tuple[str, ...] = ()
    routes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def is_entry(self) -> bool:
        return bool(self.inputs)

    @property
    def is_terminal(self) -> bool:
        return not self.next and not self.routes

    @property
    def targets(self) -> tuple[str, ...]:
        routed = tuple(t for targets in self.routes.values() for t in targets)
        return tuple(dict.fromkeys(self.next + routed))


@dataclass(frozen=True)
class Topology:
    """A checked DAG: shapes by name, execution order, parents of each node."""

    graph: str
    shapes: Mapping[str, NodeShape]
    order: tuple[str, ...]
    parents: Mapping[str, tuple[str, ...]]

    @property
    def entries(self) -> tuple[str, ...]:
        return tuple(n for n in self.order if self.shapes[n].is_entry)

    @property
    def terminals(self) -> tuple[str, ...]:
        return tuple(n for n in self.order if self.shapes[n].is_terminal)

    @property
    def input_names(self) -> tuple[str, ...]:
        names = (i for n in self.entries for i in self.shapes[n].inputs)
        return tuple(dict.fromkeys(names))


def _names(graph: str, node: str, key: str, value: Any) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if (
        not isinstance(items, list | tuple)
        or not items
        or not all(isinstance(item, str) and item for item in items)
    ):
        raise GraphDefinitionError(
            graph, f"{key!r} must be a node name or a non-empty list of names, got {value!r}", node
        )
    return tuple(items)


def _shape(graph: str, name: Any, spec: Any) -> NodeShape:
    if not isinstance(name, str) or not name.isidentifier():
        raise GraphDefinitionError(graph, f"node name must be an identifier, got {name!r}")
    if not isinstance(spec, Mapping):
        raise GraphDefinitionError(graph, f"node spec must be a dict, got {spec!r}", name)
    unknown = sorted(set(spec) - _ALLOWED_KEYS)
    if unknown:
        raise GraphDefinitionError(
            graph, f"unknown keys {unknown}; allowed: inputs, next, routes", name
        )
    if "next" in spec and "routes" in spec:
        raise GraphDefinitionError(graph, "a node has either 'next' or 'routes', not both", name)
    inputs = _names(graph, name, "inputs", spec["inputs"]) if "inputs" in spec else ()
    nexts = _names(graph, name, "next", spec["next"]) if "next" in spec else ()
    routes: dict[str, tuple[str, ...]] = {}
    if "routes" in spec:
        raw = spec["routes"]
        if not isinstance(raw, Mapping) or not raw:
            raise GraphDefinitionError(
                graph, f"'routes' must be a non-empty dict of variant -> node(s), got {raw!r}", name
            )
        for variant, targets in raw.items():
            if not isinstance(variant, str) or not variant:
                raise GraphDefinitionError(
                    graph, f"route variant must be a string, got {variant!r}", name
                )
            routes[variant] = _names(graph, name, f"routes.{variant}", targets)
    return NodeShape(name, inputs, nexts, routes)


def parse_topology(graph: str, spec: Any) -> Topology:
    """Check ``spec`` and return the topology; every error names the graph and the node."""
    if not isinstance(spec, Mapping) or not spec:
        raise GraphDefinitionError(graph, "graph must be a non-empty dict of node name -> spec")
    shapes = {name: _shape(graph, name, node_spec) for name, node_spec in spec.items()}
    parents: dict[str, list[str]] = {name: [] for name in shapes}
    for shape in shapes.values():
        for target in shape.targets:
            if target not in shapes:
                raise GraphDefinitionError(
                    graph, f"routes or next point to unknown node {target!r}", shape.name
                )
            if shapes[target].is_entry:
                raise GraphDefinitionError(
                    graph,
                    f"{target!r} is an entry node (it has 'inputs') and cannot be a "
                    "target of next/routes",
                    shape.name,
                )
            parents[target].append(shape.name)
    if not any(shape.is_entry for shape in shapes.values()):
        raise GraphDefinitionError(graph, "no entry node: at least one node needs 'inputs'")
    sorter = graphlib.TopologicalSorter({name: parents[name] for name in shapes})
    try:
        order = tuple(sorter.static_order())
    except graphlib.CycleError as error:
        cycle = " -> ".join(error.args[1])
        raise GraphDefinitionError(graph, f"cycle: {cycle}") from None
    for name in order:
        if not shapes[name].is_entry and not parents[name]:
            raise GraphDefinitionError(
                graph, "unreachable: it has no 'inputs' and no node routes to it", name
            )
    return Topology(graph, shapes, order, {n: tuple(p) for n, p in parents.items()})


def render_text(topology: Topology) -> str:
    """A plain-text drawing of the topology, one edge per line."""
    lines = [f"graph {topology.graph}"]
    for name in topology.order:
        shape = topology.shapes[name]
        if shape.inputs:
            lines.append(f"  [{', '.join(shape.inputs)}] -> {name}")
        for target in shape.next:
            lines.append(f"  {name} -> {target}")
        for variant, targets in shape.routes.items():
            lines.extend(f"  {name} -({variant})-> {target}" for target in targets)
        if shape.is_terminal:
            lines.append(f"  {name} => (output)")
    return "\n".join(lines)


def render_mermaid(topology: Topology) -> str:
    """A Mermaid flowchart of the topology."""
    lines = ["flowchart LR"]
    for name in topology.order:
        shape = topology.shapes[name]
        lines.extend(f"  {acc}[({acc})] --> {name}" for acc in shape.inputs)
        lines.extend(f"  {name} --> {target}" for target in shape.next)
        for variant, targets in shape.routes.items():
            lines.extend(f"  {name} -- {variant} --> {target}" for target in targets)
    return "\n".join(lines)
