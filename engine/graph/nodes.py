"""The ``@node`` decorator and the stack of open graph builders it registers into."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, overload

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class NodeFunction:
    """A node's Python function; ``thread`` runs a sync function off the event loop."""

    name: str
    fn: Callable[..., Any]
    thread: bool = False

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.fn)


class NodeCollector:
    """What an open ``ComputationGraphBuilder`` exposes to ``@node``."""

    name: str
    functions: dict[str, NodeFunction]


_open_builders: list[NodeCollector] = []


def push_builder(builder: NodeCollector) -> None:
    _open_builders.append(builder)


def pop_builder(builder: NodeCollector) -> None:
    if _open_builders and _open_builders[-1] is builder:
        _open_builders.pop()


@overload
def node(fn: F) -> F: ...
@overload
def node(*, name: str | None = None, thread: bool = False) -> Callable[[F], F]: ...
def node(fn: Any = None, *, name: str | None = None, thread: bool = False) -> Any:
    """Register a function as a node of the graph whose builder is open around it."""

    def decorate(function: F) -> F:
        node_name = name or function.__name__
        if not _open_builders:
            raise RuntimeError(
                f"@node {node_name!r} used outside a ComputationGraphBuilder 'with' block"
            )
        builder = _open_builders[-1]
        if node_name in builder.functions:
            raise ValueError(f"graph {builder.name!r}: node {node_name!r} defined twice")
        builder.functions[node_name] = NodeFunction(node_name, function, thread)
        return function

    return decorate(fn) if fn is not None else decorate
