"""What an accumulator is: its kind, its function, its settings and its validation model."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import pydantic
import pydantic_core

from headrace.accumulators.durations import parse_duration
from headrace.accumulators.limits import DEFAULT_MAX_DEPTH, depth_problem


class AccumulatorKind(StrEnum):
    STREAM = "stream"
    POLLING = "polling"
    BATCH = "batch"
    PASSTHROUGH = "passthrough"


class AccumulatorInputError(ValueError):
    """An event could not be turned into a boundary value (invalid, or the function raised)."""

    def __init__(self, accumulator: str, reason: str) -> None:
        super().__init__(f"accumulator {accumulator!r}: {reason}")
        self.accumulator = accumulator
        self.reason = reason


DEFAULT_CHANNEL_SIZE = 1024


@dataclass(frozen=True)
class AccumulatorSpec:
    """A declared accumulator. ``fn`` turns an event (or a list, for batch) into a value.

    ``strict`` validates the model in pydantic strict mode (``"100"`` and ``true`` are not
    numbers); the default is lax (pydantic's coercion). Events nested deeper than
    ``max_depth`` are refused before validation (see ``headrace.accumulators.limits``).
    """

    name: str
    kind: AccumulatorKind
    fn: Callable[..., Any]
    topic: str | None = None
    group: str | None = None
    source_type: str = "kafka"
    interval: float | None = None
    flush_interval: float | None = None
    max_buffer_size: int | None = None
    channel_size: int = DEFAULT_CHANNEL_SIZE
    model: type[pydantic.BaseModel] | None = None
    model_is_list: bool = False
    strict: bool = False
    max_depth: int = DEFAULT_MAX_DEPTH
    key: str | Callable[[Any], str] | None = None
    """The key of each value (``accumulators.keys``): a field name, ``"@message"`` or a function."""
    scope: str = "group"
    """``"group"``: the topic's partitions are shared by the consumer group; ``"global"``
    (stream only): every worker reads every partition into a table, latest value per key."""

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.fn)

    def validate(self, event: Any, shallow: bool = False) -> Any:
        """Check the depth limit, then validate ``event`` into the model when there is one;
        errors name the accumulator. ``shallow``: the caller knows ``event`` is within
        ``max_depth`` (a JSON document with at most that many ``{`` and ``[``)."""
        if not shallow:
            problem = depth_problem(event, self.max_depth)
            if problem is not None:
                raise AccumulatorInputError(self.name, problem)
        if self.model is None:
            return event
        try:
            if self.model_is_list:
                if not isinstance(event, list):
                    raise AccumulatorInputError(
                        self.name, f"expected a list, got {type(event).__name__}"
                    )
                return [self._validate_one(item) for item in event]
            return self._validate_one(event)
        except pydantic.ValidationError as error:
            raise AccumulatorInputError(
                self.name, f"does not match {self.model.__name__}: {_summarize(error)}"
            ) from error

    def _validate_one(self, event: Any) -> Any:
        assert self.model is not None
        if not self.strict:
            return self.model.model_validate(event)
        # strict JSON rules: no "100" or true for numbers, yet ISO strings for datetimes
        return self.model.model_validate_json(pydantic_core.to_json(event), strict=True)


def _summarize(error: pydantic.ValidationError) -> str:
    parts = []
    for item in error.errors()[:5]:
        location = ".".join(str(p) for p in item["loc"]) or "<root>"
        parts.append(f"{location}: {item['msg']}")
    more = error.error_count() - len(parts)
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


def find_model(fn: Callable[..., Any]) -> tuple[type[pydantic.BaseModel] | None, bool]:
    """Return the pydantic model annotating ``fn``'s first parameter, and whether it is a list."""
    parameters = list(inspect.signature(fn).parameters.values())
    if not parameters:
        return None, False
    try:
        hints = typing.get_type_hints(fn)
    except (NameError, TypeError):
        return None, False
    hint = hints.get(parameters[0].name)
    if _is_model(hint):
        return hint, False
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint) or (None,)
        if _is_model(item):
            return item, True
    return None, False


def _is_model(hint: Any) -> bool:
    return isinstance(hint, type) and issubclass(hint, pydantic.BaseModel)


SCOPES = ("group", "global")


def check_scope(owner: str, kind: str, scope: Any, key: Any) -> None:
    """Reject a ``scope`` that cannot work; ``owner`` names the accumulator."""
    if scope not in SCOPES:
        raise ValueError(f"{owner}: scope must be 'group' or 'global', got {scope!r}")
    if scope == "global" and kind != AccumulatorKind.STREAM.value:
        raise ValueError(
            f"{owner}: scope='global' is for stream accumulators (a Kafka topic read as a "
            f"table), not {kind}"
        )
    if scope == "global" and key is None:
        raise ValueError(f"{owner}: scope='global' keeps the latest value per key: give it key=")


def make_spec(fn: Callable[..., Any], kind: AccumulatorKind, **settings: Any) -> AccumulatorSpec:
    """Build a spec from a decorated function, checking every setting."""
    name = settings.pop("name", None) or fn.__name__
    owner = f"accumulator {name!r}"
    required = {AccumulatorKind.POLLING: "interval", AccumulatorKind.BATCH: "flush_interval"}
    for key in ("interval", "flush_interval"):
        if settings.get(key) is not None or required.get(kind) == key:
            settings[key] = parse_duration(settings.get(key), f"{owner} {key}")
    size = settings.get("max_buffer_size")
    if size is not None and (not isinstance(size, int) or size < 1):
        raise ValueError(f"{owner}: max_buffer_size must be a positive integer, got {size!r}")
    if not isinstance(settings.setdefault("strict", False), bool):
        raise ValueError(f"{owner}: strict must be true or false, got {settings['strict']!r}")
    channel_size = settings.setdefault("channel_size", DEFAULT_CHANNEL_SIZE)
    if not isinstance(channel_size, int) or channel_size < 1:
        raise ValueError(f"{owner}: channel_size must be a positive integer, got {channel_size!r}")
    if kind is AccumulatorKind.STREAM and not settings.get("topic"):
        raise ValueError(f"{owner}: a stream accumulator needs a topic")
    check_scope(owner, kind.value, settings.setdefault("scope", "group"), settings.get("key"))
    model, model_is_list = (None, False) if kind is AccumulatorKind.POLLING else find_model(fn)
    return AccumulatorSpec(
        name=name, kind=kind, fn=fn, model=model, model_is_list=model_is_list, **settings
    )
