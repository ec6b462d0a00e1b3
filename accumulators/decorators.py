"""The four accumulator decorators of the Python surface."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, overload

from headrace.accumulators.keys import KeySetting, check_key_setting
from headrace.accumulators.registry import register_accumulator
from headrace.accumulators.spec import DEFAULT_CHANNEL_SIZE, AccumulatorKind, make_spec

F = TypeVar("F", bound=Callable[..., Any])


def _declare(kind: AccumulatorKind, **settings: Any) -> Callable[[F], F]:
    def decorate(fn: F) -> F:
        owner = f"accumulator {settings.get('name') or fn.__name__!r}"
        check_key_setting(owner, settings.get("key"), kind.value)
        spec = make_spec(fn, kind, **settings)
        register_accumulator(spec)
        fn.__headrace_accumulator__ = spec  # type: ignore[attr-defined]
        return fn

    return decorate


@overload
def passthrough_accumulator(fn: F) -> F: ...
@overload
def passthrough_accumulator(
    *,
    name: str | None = None,
    channel_size: int = DEFAULT_CHANNEL_SIZE,
    strict: bool = False,
    key: KeySetting | None = None,
) -> Callable[[F], F]: ...
def passthrough_accumulator(
    fn: Any = None,
    *,
    name: str | None = None,
    channel_size: int = DEFAULT_CHANNEL_SIZE,
    strict: bool = False,
    key: KeySetting | None = None,
) -> Any:
    """Values pushed through ``Runtime.push`` or the worker's HTTP/WebSocket endpoints.

    ``strict=True`` validates the model in pydantic strict mode (default: lax coercion).
    ``key`` (every decorator takes it) names the key of each value for keyed reactors: a
    field of the value (``"symbol"``), a function ``value -> str``, or ``"@message"``
    for the message's key.
    """
    decorate = _declare(
        AccumulatorKind.PASSTHROUGH, name=name, channel_size=channel_size, strict=strict, key=key
    )
    return decorate(fn) if fn is not None else decorate


def stream_accumulator(
    *,
    topic: str,
    group: str | None = None,
    type: str = "kafka",
    name: str | None = None,
    channel_size: int = DEFAULT_CHANNEL_SIZE,
    strict: bool = False,
    key: KeySetting | None = None,
    scope: str = "group",
) -> Callable[[F], F]:
    """One Kafka topic; each decoded message goes through the function (``None`` drops it).

    ``strict=True`` validates the model in pydantic strict mode (default: lax coercion).
    ``scope="global"`` (with ``key``) reads every partition on every worker into a table
    of the latest value per key, outside the consumer group: keyed reactors watching it
    see the fired key's entry (like a Kafka Streams GlobalKTable); it never fires."""
    return _declare(
        AccumulatorKind.STREAM,
        topic=topic,
        group=group,
        source_type=type,
        name=name,
        channel_size=channel_size,
        strict=strict,
        key=key,
        scope=scope,
    )


def polling_accumulator(
    *,
    interval: str | float = "5s",
    name: str | None = None,
    channel_size: int = DEFAULT_CHANNEL_SIZE,
    key: KeySetting | None = None,
) -> Callable[[F], F]:
    """Calls the function every ``interval``; a non-``None`` result is delivered."""
    return _declare(
        AccumulatorKind.POLLING, interval=interval, name=name, channel_size=channel_size, key=key
    )


def batch_accumulator(
    *,
    flush_interval: str | float = "1s",
    max_buffer_size: int | None = None,
    topic: str | None = None,
    group: str | None = None,
    name: str | None = None,
    channel_size: int = DEFAULT_CHANNEL_SIZE,
    key: KeySetting | None = None,
) -> Callable[[F], F]:
    """Buffers events and flushes them as a list on ``flush_interval`` or ``max_buffer_size``."""
    return _declare(
        AccumulatorKind.BATCH,
        flush_interval=flush_interval,
        max_buffer_size=max_buffer_size,
        topic=topic,
        group=group,
        name=name,
        channel_size=channel_size,
        key=key,
    )
