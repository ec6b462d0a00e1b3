"""Declaring reactors, the registry of them, and the unload guard."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

from headrace.reactors.keyed import keyed_fields
from headrace.registry import ReactorInUseError as ReactorInUseError
from headrace.registry import default_registry


class ReactionMode(StrEnum):
    WHEN_ANY = "when_any"
    WHEN_ALL = "when_all"


class InputStrategy(StrEnum):
    LATEST = "latest"
    SEQUENTIAL = "sequential"


@dataclass(frozen=True)
class ReactorSpec:
    """A declared reactor: the accumulators it watches and how it decides to fire."""

    name: str
    accumulators: tuple[str, ...]
    mode: ReactionMode = ReactionMode.WHEN_ANY
    strategy: InputStrategy = InputStrategy.LATEST
    keyed: bool = False
    """Per key of the values: own cache, dirty flags, criterion and strategy (``keyed``)."""
    max_concurrency: int = 1
    max_keys: int | None = None
    key_ttl: float | None = None


C = TypeVar("C")


def make_reactor_spec(
    name: str,
    accumulators: list[str] | tuple[str, ...],
    mode: str,
    strategy: str,
    *,
    keyed: bool = False,
    max_concurrency: int = 1,
    max_keys: int | None = None,
    key_ttl: str | float | None = None,
) -> ReactorSpec:
    """Check a reactor's settings; errors name the reactor and the bad field."""
    if not name or not isinstance(name, str):
        raise ValueError(f"reactor name must be a non-empty string, got {name!r}")
    if not accumulators or not all(isinstance(a, str) and a for a in accumulators):
        raise ValueError(f"reactor {name!r}: accumulators must be a non-empty list of names")
    if len(set(accumulators)) != len(accumulators):
        raise ValueError(f"reactor {name!r}: accumulators contain duplicates: {list(accumulators)}")
    try:
        reaction = ReactionMode(mode)
    except ValueError:
        raise ValueError(
            f"reactor {name!r}: mode must be 'when_any' or 'when_all', got {mode!r}"
        ) from None
    try:
        input_strategy = InputStrategy(strategy)
    except ValueError:
        raise ValueError(
            f"reactor {name!r}: strategy must be 'latest' or 'sequential', got {strategy!r}"
        ) from None
    keyed_settings = keyed_fields(name, accumulators, keyed, max_concurrency, max_keys, key_ttl)
    return ReactorSpec(name, tuple(accumulators), reaction, input_strategy, **keyed_settings)


def reactor(
    *,
    name: str,
    accumulators: list[str],
    mode: str = "when_any",
    strategy: str = "latest",
    keyed: bool = False,
    max_concurrency: int = 1,
    max_keys: int | None = None,
    key_ttl: str | float | None = None,
) -> Callable[[C], C]:
    """Declare a reactor on a class.

    ``when_any`` fires when any watched accumulator delivered since the last fire;
    ``when_all`` fires only when every watched accumulator delivered since the last fire.
    The per-accumulator dirty flags clear when a fire starts (Cloacina's rule), so
    ``when_all`` needs a fresh value from *every* accumulator before each fire. To fire on
    any update once all have a value, use ``when_any`` and check for ``None`` in the graph.
    ``latest`` coalesces values that arrive while a graph runs; ``sequential`` fires once
    per delivered value, in delivery order.

    ``keyed=True`` (with ``max_concurrency``, ``max_keys``, ``key_ttl``) applies all of this
    per key of the values; see ``headrace.reactors.keyed``.
    """
    spec = make_reactor_spec(
        name,
        accumulators,
        mode,
        strategy,
        keyed=keyed,
        max_concurrency=max_concurrency,
        max_keys=max_keys,
        key_ttl=key_ttl,
    )

    def decorate(cls: C) -> C:
        register_reactor(spec)
        cls.__headrace_reactor__ = spec  # type: ignore[attr-defined]
        return cls

    return decorate


def reactor_name_of(reactor_ref: Any) -> str:
    """The name of a reactor given as a decorated class, a spec or a name."""
    if isinstance(reactor_ref, str):
        return reactor_ref
    if isinstance(reactor_ref, ReactorSpec):
        return reactor_ref.name
    spec = getattr(reactor_ref, "__headrace_reactor__", None)
    if isinstance(spec, ReactorSpec):
        return spec.name
    raise TypeError(f"reactor must be a @reactor class or a reactor name, got {reactor_ref!r}")


# -- module-level functions over headrace.registry.default_registry -------------------
def register_reactor(spec: ReactorSpec) -> None:
    default_registry.register_reactor(spec)


def get_reactor(name: str) -> ReactorSpec:
    return default_registry.get_reactor(name)


def find_reactor(name: str) -> ReactorSpec | None:
    return default_registry.find_reactor(name)


def registered_reactors() -> dict[str, ReactorSpec]:
    return default_registry.reactors()


def bind_graph(reactor_name: str, graph_name: str) -> None:
    """Record that ``graph_name`` is bound to ``reactor_name`` (the reactor may come later)."""
    default_registry.bind(reactor_name, graph_name)


def unbind_graph(graph_name: str) -> None:
    default_registry.unbind(graph_name)


def bound_graphs(reactor_name: str) -> list[str]:
    return default_registry.bound_graphs(reactor_name)


def unload_reactor(name: str) -> None:
    """Remove a reactor; refused (``ReactorInUseError``) while graphs are bound to it."""
    default_registry.unregister_reactor(name)


def clear_reactors() -> None:
    """Forget every reactor and every binding (graphs stay registered)."""
    default_registry.clear_bindings()
    for name in default_registry.reactors():
        default_registry.unregister_reactor(name)
