"""Keeps credentials out of log lines: query-string secrets and registered secret values.

``scrub_secrets`` is a structlog processor run last before rendering, on structlog events and
on stdlib records (uvicorn's access, handshake and error lines) alike. It masks the value of
every query parameter that looks like a credential (``?token=...``, ``&ticket=...``) in any
string field, tracebacks included, and replaces every value registered with
``register_secret`` (the API token) wherever it appears.
"""

from __future__ import annotations

import re
import threading
from collections.abc import MutableMapping
from typing import Any

MASK = "***"

_QUERY_SECRET = re.compile(
    r"([?&;](?:[\w.-]*(?:token|ticket|secret|password|passwd|key|auth|credential|sig)[\w.-]*)=)"
    r"[^&;\s\"'#]*",
    re.IGNORECASE,
)

_lock = threading.Lock()
_secrets: frozenset[str] = frozenset()


def register_secret(value: str | None) -> None:
    """Mask ``value`` in every later log line (values shorter than 4 characters are ignored:
    masking them would garble ordinary text)."""
    global _secrets
    if value and len(value) >= 4:
        with _lock:
            _secrets = _secrets | {value}


def forget_secrets() -> None:
    """Drop every registered value (tests)."""
    global _secrets
    with _lock:
        _secrets = frozenset()


def scrub_text(text: str) -> str:
    """``text`` with query-string credentials and registered secrets masked."""
    if "=" in text:
        text = _QUERY_SECRET.sub(rf"\1{MASK}", text)
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def _scrub(value: Any, depth: int = 0) -> Any:
    if isinstance(value, str):
        return scrub_text(value)
    if depth < 4 and isinstance(value, dict):
        return {key: _scrub(item, depth + 1) for key, item in value.items()}
    if depth < 4 and isinstance(value, list | tuple):
        return type(value)(_scrub(item, depth + 1) for item in value)
    return value


def scrub_secrets(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> Any:
    """structlog processor: mask credentials in every string field (run it last)."""
    for key, value in list(event.items()):
        if key.startswith("_"):
            continue
        event[key] = _scrub(value)
    return event


__all__ = ["MASK", "forget_secrets", "register_secret", "scrub_secrets", "scrub_text"]
