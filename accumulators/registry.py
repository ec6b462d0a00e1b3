"""Module-level functions over the accumulators of :data:`headrace.registry.default_registry`."""

from __future__ import annotations

from headrace.accumulators.spec import AccumulatorSpec
from headrace.registry import default_registry


def register_accumulator(spec: AccumulatorSpec) -> None:
    """Register ``spec``; redeclaring a name replaces it (module reloads)."""
    default_registry.register_accumulator(spec)


def get_accumulator(name: str) -> AccumulatorSpec:
    return default_registry.get_accumulator(name)


def find_accumulator(name: str) -> AccumulatorSpec | None:
    return default_registry.find_accumulator(name)


def registered_accumulators() -> dict[str, AccumulatorSpec]:
    return default_registry.accumulators()


def unregister_accumulator(name: str) -> None:
    """Forget an accumulator; an unknown name is not an error."""
    if default_registry.find_accumulator(name) is not None:
        default_registry.unregister_accumulator(name)


def clear_accumulators() -> None:
    for name in default_registry.accumulators():
        default_registry.unregister_accumulator(name)
