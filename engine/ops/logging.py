"""Structured logs for the worker: JSON lines off a terminal, readable text on one.

``configure_logging(level, fmt)`` sets up structlog (and routes the standard library's
``logging``, e.g. uvicorn's, through the same renderer). Level and format come from the
command line, else ``HEADRACE_LOG_LEVEL`` / ``HEADRACE_LOG_FORMAT``, else the config file.
Values of keys that look like secrets (password, token, sasl, ...) are masked.

Logging never raises into the code that logs (a librdkafka callback, ``consumer.poll()``):
every field is made JSON-safe first (``jsonable_fields``: a topic-partition tuple and a
tuple dict key become ``"topic[p]"``, anything unknown its ``repr``), every processor is
guarded, and the renderer falls back to the ``repr`` of the whole event. Each fallback is
counted in ``LOG_FAILURES`` (the test suite fails a test that caused one).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import logging
import math
import os
import re
import sys
import threading
from collections.abc import Callable, Mapping, MutableMapping
from pathlib import PurePath
from typing import Any, TextIO

import structlog
from pydantic import SecretStr

from headrace.engine.ops.log_scrub import scrub_secrets

LEVELS = ("debug", "info", "warning", "error", "critical")
FORMATS = ("auto", "json", "console")

_SECRET = re.compile(r"password|passwd|secret|token|sasl|credential|authorization|api_key", re.I)
_MASK = "***"


def redact_secrets(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> Any:
    """Mask values of secret-looking keys, SecretStr values and passwords inside URLs."""
    for key, value in list(event.items()):
        secret_key = isinstance(key, str) and _SECRET.search(key) is not None
        if isinstance(value, SecretStr) or (secret_key and value not in (None, "", False)):
            event[key] = _MASK
        elif isinstance(value, dict):
            event[key] = {
                k: _MASK if isinstance(k, str) and _SECRET.search(k) and v else v
                for k, v in value.items()
            }
        elif isinstance(value, str) and "://" in value and "@" in value:
            event[key] = re.sub(r"(://[^:/@\s]+:)[^@\s]+@", r"\1***@", value)
    return event


class LogFailures:
    """How often a processor or the renderer failed and a fallback was logged instead."""

    def __init__(self) -> None:
        self.count = 0
        self.last: str | None = None
        self._lock = threading.Lock()

    def note(self, what: str, error: BaseException) -> None:
        with self._lock:
            self.count += 1
            self.last = f"{what}: {type(error).__name__}: {error}"


LOG_FAILURES = LogFailures()

_MAX_DEPTH = 12
_META_KEYS = frozenset({"exc_info", "stack_info", "exception", "stack"})


def topic_partition(topic: str, partition: int) -> str:
    """How a topic-partition reads in logs and health: ``"topic[p]"``."""
    return f"{topic}[{partition}]"


def _is_tp_tuple(value: Any) -> bool:
    return (
        type(value) is tuple
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
    )


def _is_tp_object(value: Any) -> bool:  # confluent_kafka.TopicPartition, without importing it
    return type(value).__name__ == "TopicPartition" and hasattr(value, "partition")


def safe_repr(value: Any) -> str:
    """``repr(value)``, or a placeholder naming the type when its ``__repr__`` raises."""
    try:
        return repr(value)
    except Exception as error:
        return f"<{type(value).__name__}: repr failed: {type(error).__name__}>"


def _key(key: Any) -> str:
    if isinstance(key, str):
        return key
    if _is_tp_tuple(key):
        return topic_partition(*key)
    if _is_tp_object(key):
        return topic_partition(key.topic, key.partition)
    if key is None or isinstance(key, bool | int | float):
        return json.dumps(key)
    if isinstance(key, enum.Enum):
        return str(key.value)
    return safe_repr(key)


def jsonable(value: Any, depth: int = 0) -> Any:
    """``value`` as JSON-native data (str/int/float/bool/None, lists, str-keyed dicts)."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else safe_repr(value)
    if depth >= _MAX_DEPTH:
        return safe_repr(value)
    if _is_tp_tuple(value):
        return topic_partition(*value)
    if _is_tp_object(value):
        offset = getattr(value, "offset", -1001)
        name = topic_partition(value.topic, value.partition)
        return f"{name}@{offset}" if isinstance(offset, int) and offset >= 0 else name
    if isinstance(value, Mapping):
        return {_key(k): jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(item, depth + 1) for item in value]
    if isinstance(value, set | frozenset):
        return sorted((jsonable(item, depth + 1) for item in value), key=safe_repr)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "backslashreplace")
    if isinstance(value, enum.Enum):
        return jsonable(value.value, depth + 1)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, BaseException):
        text = str(value)
        return f"{type(value).__name__}: {text}" if text else type(value).__name__
    return safe_repr(value)


def jsonable_fields(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> Any:
    """Make every field JSON-safe (keys too); see ``jsonable``."""
    safe: dict[str, Any] = {}
    for key, value in event.items():
        if isinstance(key, str) and (key in _META_KEYS or key.startswith("_")):
            safe[key] = value  # exc_info & co. are the renderer's; _record is stdlib's
        else:
            safe[_key(key)] = jsonable(value)
    return safe


Processor = Callable[[Any, str, MutableMapping[str, Any]], Any]


def guarded(processor: Processor) -> Processor:
    """Run ``processor``; if it raises, keep the event as it was and note the failure."""
    name = getattr(processor, "__name__", type(processor).__name__)

    def run(logger: Any, method: str, event: MutableMapping[str, Any]) -> Any:
        try:
            return processor(logger, method, event)
        except structlog.DropEvent:
            raise
        except Exception as error:
            LOG_FAILURES.note(name, error)
            event["log_processor_error"] = f"{name}: {type(error).__name__}: {error}"
            return event

    run.__name__ = f"guarded_{name}"
    return run


@dataclasses.dataclass
class SafeRenderer:
    """Renders with ``renderer``; on any error, a JSON line with the event's ``repr``."""

    renderer: Processor

    def __call__(self, logger: Any, method: str, event: MutableMapping[str, Any]) -> Any:
        try:
            return self.renderer(logger, method, event)
        except Exception as error:
            LOG_FAILURES.note("renderer", error)
            return fallback_line(method, event, error)


def fallback_line(method: str, event: Mapping[str, Any], error: BaseException) -> str:
    """A line that always renders: level, event name, the error and the event's repr."""
    try:
        fields = repr(dict(event))
    except Exception:
        fields = "<event not representable>"
    try:
        return json.dumps(
            {
                "level": str(method),
                "event": str(event.get("event", "")),
                "log_render_error": f"{type(error).__name__}: {error}",
                "fields": fields,
            }
        )
    except Exception:
        return fields


def lead_fields(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> Any:
    """Put timestamp, level and event first, so JSON lines read well in a terminal too."""
    head = {key: event.pop(key) for key in ("timestamp", "level", "event") if key in event}
    return {**head, **event}


def resolve(level: str | None, fmt: str | None, stream: TextIO | None = None) -> tuple[str, str]:
    """The effective level and format (``auto`` becomes ``json`` or ``console``)."""
    level = (level or os.environ.get("HEADRACE_LOG_LEVEL") or "info").lower()
    fmt = (fmt or os.environ.get("HEADRACE_LOG_FORMAT") or "auto").lower()
    if level not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, got {level!r}")
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "auto":
        out = stream or sys.stdout
        fmt = "console" if hasattr(out, "isatty") and out.isatty() else "json"
    return level, fmt


def configure_logging(
    level: str | None = None, fmt: str | None = None, *, stream: TextIO | None = None
) -> tuple[str, str]:
    """Configure structlog and stdlib logging; returns the effective (level, format)."""
    level, fmt = resolve(level, fmt, stream)
    out = stream or sys.stdout
    numeric = getattr(logging, level.upper())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_secrets,
        structlog.processors.StackInfoRenderer(),
    ]
    if fmt == "json":
        renderer = SafeRenderer(structlog.processors.JSONRenderer(default=repr, sort_keys=False))
        shared += [structlog.processors.format_exc_info, jsonable_fields, lead_fields]
    else:
        colors = hasattr(out, "isatty") and out.isatty() and not os.environ.get("NO_COLOR")
        renderer = SafeRenderer(structlog.dev.ConsoleRenderer(colors=colors))
        shared.append(jsonable_fields)
    shared = [guarded(processor) for processor in shared]
    structlog.configure(
        processors=[*shared, scrub_secrets, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=SafePrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )

    handler = SharedWriterHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                scrub_secrets,
                renderer,
            ],
            foreign_pre_chain=[
                structlog.stdlib.add_logger_name,
                *shared,
            ],
        )
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    for noisy in ("uvicorn.access",):
        logging.getLogger(noisy).setLevel(max(numeric, logging.WARNING))
    return level, fmt


class SafePrintLogger(structlog.PrintLogger):
    """A ``PrintLogger`` whose write errors (closed stream, broken pipe) are only counted."""

    def msg(self, message: str) -> None:
        try:
            super().msg(message)
        except Exception as error:
            LOG_FAILURES.note("write", error)

    log = debug = info = warn = warning = err = error = critical = exception = fatal = msg


class SharedWriterHandler(logging.Handler):
    """The stdlib side (librdkafka's log callback, uvicorn) writes each line through a
    ``SafePrintLogger`` too, so both sides hold structlog's one lock per stream: a
    ``StreamHandler`` has a lock of its own, and a line from another thread could land in
    the middle of a structlog line (a torn JSON line)."""

    def __init__(self, file: TextIO | None = None) -> None:
        super().__init__()
        self._writer = SafePrintLogger(file)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self._writer.msg(line)


class SafePrintLoggerFactory:
    def __init__(self, file: TextIO | None = None) -> None:
        self._file = file

    def __call__(self, *args: Any) -> SafePrintLogger:
        return SafePrintLogger(self._file)


__all__ = [
    "FORMATS",
    "LEVELS",
    "LOG_FAILURES",
    "SafeRenderer",
    "configure_logging",
    "jsonable",
    "jsonable_fields",
    "redact_secrets",
    "resolve",
    "topic_partition",
]
