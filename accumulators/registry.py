"""The process-wide registry of declared accumulators."""

from __future__ import annotations

from headrace.accumulators.spec import AccumulatorSpec

_accumulators: dict[str, AccumulatorSpec] = {}


def register_accumulator(spec: AccumulatorSpec) -> None:
    """Register ``spec``; redeclaring a name replaces it (module reloads)."""
    _accumulators[spec.name] = spec


def get_accumulator(name: str) -> AccumulatorSpec:
    try:
        return _accumulators[name]
    except KeyError:
        known = ", ".join(sorted(_accumulators)) or "none"
        raise KeyError(f"unknown accumulator {name!r} (registered: {known})") from None


def registered_accumulators() -> dict[str, AccumulatorSpec]:
    return dict(_accumulators)


def unregister_accumulator(name: str) -> None:
    _accumulators.pop(name, None)


def clear_accumulators() -> None:
    _accumulators.clear()
