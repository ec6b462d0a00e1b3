"""Keeps browsers and oversized requests out of the operations API.

- ``Host`` must name the bind address (any loopback name when it is loopback; any IP literal
  when it is a wildcard such as 0.0.0.0) or one of ``worker.http.allowed_hosts``: a
  DNS-rebinding page sends its own host name and is refused with 421.
- a request carrying an ``Origin`` header (every cross-site browser request does) is refused
  with 403 unless that origin is in ``worker.http.allowed_origins`` (default: none) or is
  the worker's own (its ``/docs`` page).
- push bodies: ``Content-Type: application/json`` or 415; at most ``max_bytes`` or 413,
  decided from ``Content-Length`` before reading and by counting streamed bytes.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

import orjson
from fastapi import HTTPException, Request
from starlette.types import ASGIApp, Receive, Scope, Send

from headrace.engine.ops.net import is_loopback

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARDS = frozenset({"0.0.0.0", "::", ""})


def host_name(header: str) -> str:
    """The host of a ``Host`` header value, without port or IPv6 brackets, lowercased."""
    value = header.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    if value.count(":") == 1:
        value = value.split(":", 1)[0]
    return value.rstrip(".")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class HostPolicy:
    """Which ``Host`` header values a worker bound to ``bind_host`` answers."""

    def __init__(self, bind_host: str, allowed_hosts: Iterable[str] = ()) -> None:
        self.bind = host_name(bind_host)
        self.names = {host_name(h) for h in allowed_hosts} | {self.bind}
        self.wildcard = self.bind in WILDCARDS
        if self.wildcard or is_loopback(self.bind):
            self.names |= LOOPBACK_NAMES

    def allows(self, header: str | None) -> bool:
        if not header:
            return False
        name = host_name(header)
        if name in self.names:
            return True
        if _is_ip(name):
            return self.wildcard or (is_loopback(self.bind) and is_loopback(name))
        return False


def normalize_origin(origin: str) -> str:
    return origin.strip().rstrip("/").lower()


class BrowserGuard:
    """ASGI middleware: refuses disallowed ``Host`` (421) and ``Origin`` (403) headers, for
    HTTP requests and WebSocket handshakes alike."""

    def __init__(self, app: ASGIApp, hosts: HostPolicy, allowed_origins: Iterable[str]) -> None:
        self.app = app
        self.hosts = hosts
        self.origins = frozenset(normalize_origin(o) for o in allowed_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        host = headers.get("host")
        if not self.hosts.allows(host):
            detail = f"Host {host!r} is not served here: add it to worker.http.allowed_hosts"
            await _refuse(scope, send, 421, detail)
            return
        origin = headers.get("origin")
        if (
            origin is not None
            and normalize_origin(origin) not in self.origins
            and not _same_origin(origin, host or "", scope)
        ):
            detail = f"Origin {origin!r} is not allowed (worker.http.allowed_origins)"
            await _refuse(scope, send, 403, detail)
            return
        await self.app(scope, receive, send)


def _same_origin(origin: str, host: str, scope: Scope) -> bool:
    """A page the worker served itself (``/docs``): its origin is this very scheme and host
    (already checked above, so a rebinding name never gets here)."""
    scheme = {"ws": "http", "wss": "https"}.get(scope.get("scheme", "http"), scope.get("scheme"))
    return normalize_origin(origin) == f"{scheme}://{host.strip().lower()}"


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}


async def _refuse(scope: Scope, send: Send, status: int, detail: str) -> None:
    body = orjson.dumps({"detail": detail})
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if scope["type"] == "websocket":
        if "websocket.http.response" in scope.get("extensions", {}):
            await send(
                {"type": "websocket.http.response.start", "status": status, "headers": headers}
            )
            await send({"type": "websocket.http.response.body", "body": body})
        else:
            await send({"type": "websocket.close", "code": 1008, "reason": detail[:120]})
        return
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def require_json(request: Request) -> None:
    """415 unless the request says ``Content-Type: application/json``."""
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != "application/json":
        raise HTTPException(
            415, f"pushes need Content-Type: application/json, got {media or 'none'!r}"
        )


async def read_capped_body(
    request: Request, max_bytes: int, setting: str = "worker.limits.max_bytes"
) -> bytes:
    """The body, refusing (413, naming ``setting``) one over ``max_bytes``: from
    ``Content-Length`` before reading anything, else as soon as the streamed bytes pass
    the limit."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise HTTPException(400, f"invalid Content-Length {declared!r}") from None
        if size > max_bytes:
            raise HTTPException(413, _too_big(f"{size} bytes", max_bytes, setting), headers=_CLOSE)
    chunks: list[bytes] = []
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > max_bytes:
            detail = _too_big(f"over {max_bytes} bytes", max_bytes, setting)
            raise HTTPException(413, detail, headers=_CLOSE)
        chunks.append(chunk)
    return b"".join(chunks)


_CLOSE = {"Connection": "close"}  # do not read (and discard) the rest of the body


def _too_big(size: str, max_bytes: int, setting: str) -> str:
    return f"body is {size}; the limit is {max_bytes} bytes ({setting})"


__all__ = [
    "BrowserGuard",
    "HostPolicy",
    "host_name",
    "read_capped_body",
    "require_json",
]
