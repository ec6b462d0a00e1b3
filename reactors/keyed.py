"""Keyed reactors: their settings, the key of the fire being handled, and the wiring checks.

A keyed reactor keeps, per key of the values it watches, its own input cache, dirty flags,
``when_any``/``when_all`` criterion and ``latest``/``sequential`` strategy
(``reactors.keyed_policy``), and runs fires of different keys concurrently, at most
``max_concurrency`` at once and never two of one key (``reactors.keyed_loop``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from headrace.accumulators.durations import parse_duration

if TYPE_CHECKING:
    from headrace.reactors.declaration import ReactorSpec

KEY_PARAMETER = "key"
"""The entry-node parameter that receives the fire's key; reserved in keyed reactors."""

DEFAULT_MAX_KEYS = 100_000
"""Keys a keyed reactor keeps state for unless ``max_keys`` says otherwise."""

_fire_key: ContextVar[str | None] = ContextVar("headrace_fire_key", default=None)


def current_fire_key() -> str | None:
    """The key of the fire being handled (graphs, sinks); ``None`` outside keyed fires."""
    return _fire_key.get()


def set_fire_key(key: str | None) -> None:
    """Set in the task that runs a fire (each fire task has its own context)."""
    _fire_key.set(key)


def keyed_fields(
    name: str,
    accumulators: Sequence[str],
    keyed: bool,
    max_concurrency: int,
    max_keys: int | None,
    key_ttl: str | float | None,
) -> dict[str, Any]:
    """Check a reactor's keyed settings; errors name the reactor and the setting."""
    owner = f"reactor {name!r}"
    if not isinstance(keyed, bool):
        raise ValueError(f"{owner}: keyed must be true or false, got {keyed!r}")
    if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int):
        raise ValueError(f"{owner}: max_concurrency must be an integer, got {max_concurrency!r}")
    if max_concurrency < 1:
        raise ValueError(f"{owner}: max_concurrency must be >= 1, got {max_concurrency}")
    if max_keys is not None and (
        isinstance(max_keys, bool) or not isinstance(max_keys, int) or max_keys < 1
    ):
        raise ValueError(f"{owner}: max_keys must be a positive integer, got {max_keys!r}")
    if not keyed:
        given = [
            setting
            for setting, value in (
                ("max_concurrency", max_concurrency != 1),
                ("max_keys", max_keys is not None),
                ("key_ttl", key_ttl is not None),
            )
            if value
        ]
        if given:
            raise ValueError(
                f"{owner}: {', '.join(given)} only apply to keyed reactors (keyed=True); "
                "an unkeyed reactor runs one fire at a time over one input cache"
            )
        return {}
    if KEY_PARAMETER in accumulators:
        raise ValueError(
            f"{owner}: an accumulator named {KEY_PARAMETER!r} cannot feed a keyed reactor: "
            f"entry nodes receive the fire's key as the {KEY_PARAMETER!r} parameter"
        )
    ttl = parse_duration(key_ttl, f"{owner} key_ttl") if key_ttl is not None else None
    return {
        "keyed": True,
        "max_concurrency": max_concurrency,
        "max_keys": DEFAULT_MAX_KEYS if max_keys is None else max_keys,
        "key_ttl": ttl,
    }


def keyless_accumulators(reactor: ReactorSpec, accumulators: Mapping[str, Any]) -> list[str]:
    """The accumulators of a keyed reactor that have no ``key`` (they must all have one)."""
    if not reactor.keyed:
        return []
    return [
        name
        for name in reactor.accumulators
        if name in accumulators and getattr(accumulators[name], "key", None) is None
    ]


def keyless_message(reactor: ReactorSpec, names: Sequence[str]) -> str:
    return (
        f"reactor {reactor.name!r} is keyed, but accumulators {list(names)} have no key: "
        "give each one key= (a field name such as 'symbol', a function value -> str, "
        "or '@message' for the Kafka message key)"
    )
