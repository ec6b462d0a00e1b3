"""The one depth and size limit on values, shared by the push parser, the state store and sinks.

An event deeper than ``max_depth`` (or bigger than ``max_bytes`` as JSON) is refused where it
enters: a push gets 413/422, a Kafka message is dead-lettered. Graph outputs may wrap their
inputs a few levels deeper, so the state store and sinks accept ``OUTPUT_HEADROOM`` more
levels; every limit stays far below the 254 levels the JSON encoders (orjson,
pydantic-core) can write at all, so a value that passed the parser can always be stored.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pydantic

DEFAULT_MAX_DEPTH = 64
DEFAULT_MAX_BYTES = 1024 * 1024
OUTPUT_HEADROOM = 16
ENCODER_DEPTH = 254
"""Deepest nesting both JSON encoders write (orjson raises at 255, pydantic-core at 256)."""


@dataclass(frozen=True)
class ValueLimits:
    """``max_depth`` levels of nesting and ``max_bytes`` of JSON per value (push body, frame,
    stored value)."""

    max_depth: int = DEFAULT_MAX_DEPTH
    max_bytes: int = DEFAULT_MAX_BYTES

    def __post_init__(self) -> None:
        if not 1 <= self.max_depth <= ENCODER_DEPTH - OUTPUT_HEADROOM:
            raise ValueError(
                f"max_depth must be between 1 and {ENCODER_DEPTH - OUTPUT_HEADROOM}, "
                f"got {self.max_depth}"
            )
        if self.max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {self.max_bytes}")

    @property
    def stored_depth(self) -> int:
        """The depth the state store and sinks accept (inputs plus output wrapping)."""
        return self.max_depth + OUTPUT_HEADROOM


DEFAULT_LIMITS = ValueLimits()


_SCALARS = frozenset({str, int, float, bool, type(None), bytes, bytearray})


def nesting_depth(value: Any, stop_after: int) -> int:
    """Levels of containers in ``value`` (a scalar is 0, ``[1]`` is 1); stops counting once
    past ``stop_after`` so a hostile value costs no more than the limit. Iterative: no
    recursion limit to hit. Scalars are skipped by exact type, the common case kept cheap."""
    if type(value) in _SCALARS:
        return 0
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = _children(item)
        if children is None:
            continue
        if depth > deepest:
            deepest = depth
            if deepest > stop_after:
                return deepest
        for child in children:
            if type(child) not in _SCALARS:
                stack.append((child, depth + 1))
    return deepest


def _children(item: Any) -> Any:
    if isinstance(item, dict):
        return item.values()
    if isinstance(item, list | tuple | set | frozenset):
        return item
    if isinstance(item, Mapping):
        return item.values()
    if isinstance(item, pydantic.BaseModel):
        return item.__dict__.values()
    if dataclasses.is_dataclass(item) and not isinstance(item, type):
        return [getattr(item, f.name) for f in dataclasses.fields(item)]
    return None


def too_deep(max_depth: int, setting: str = "worker.limits.max_depth") -> str:
    return f"value is nested more than {max_depth} levels deep (limit {setting})"


def depth_problem(
    value: Any, max_depth: int, setting: str = "worker.limits.max_depth"
) -> str | None:
    """Why ``value`` is too deep, naming the setting; ``None`` when it fits."""
    if nesting_depth(value, max_depth) > max_depth:
        return too_deep(max_depth, setting)
    return None


def size_problem(size: int, max_bytes: int, setting: str = "worker.limits.max_bytes") -> str | None:
    """Why ``size`` bytes are too many, naming the setting; ``None`` when they fit."""
    if size > max_bytes:
        return f"value is {size} bytes as JSON, over the limit of {max_bytes} ({setting})"
    return None


__all__ = [
    "DEFAULT_LIMITS",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_DEPTH",
    "ENCODER_DEPTH",
    "OUTPUT_HEADROOM",
    "ValueLimits",
    "depth_problem",
    "nesting_depth",
    "size_problem",
    "too_deep",
]
