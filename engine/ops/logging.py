"""Structured logs for the worker: JSON lines off a terminal, readable text on one.

``configure_logging(level, fmt)`` sets up structlog (and routes the standard library's
``logging``, e.g. uvicorn's, through the same renderer). Level and format come from the
command line, else ``HEADRACE_LOG_LEVEL`` / ``HEADRACE_LOG_FORMAT``, else the config file.
Values of keys that look like secrets (password, token, sasl, ...) are masked.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import MutableMapping
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
        renderer: Any = structlog.processors.JSONRenderer(default=repr, sort_keys=False)
        shared += [structlog.processors.format_exc_info, lead_fields]
    else:
        colors = hasattr(out, "isatty") and out.isatty() and not os.environ.get("NO_COLOR")
        renderer = structlog.dev.ConsoleRenderer(colors=colors)
    structlog.configure(
        processors=[*shared, scrub_secrets, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )

    handler = logging.StreamHandler(out)
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


__all__ = ["FORMATS", "LEVELS", "configure_logging", "redact_secrets", "resolve"]
