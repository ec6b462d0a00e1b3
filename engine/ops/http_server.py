"""uvicorn, run inside the worker's event loop, with bounded connections.

- at most ``max_connections`` open connections: over it the oldest connection still waiting
  for its request headers is closed (an idle flood cannot starve liveness, and never runs
  the process out of file descriptors);
- ``header_timeout``: a connection that has not sent complete request headers in time is
  closed (slow-loris), ``keep_alive_timeout`` between requests, request heads capped at
  ``max_header_bytes`` (h11's incomplete-event limit);
- WebSocket frames capped at the push size limit, no per-message compression;
- accept errors (EMFILE and the like) are logged at most once per ``accept_log_interval``
  with a count, instead of once per loop iteration;
- a refused WebSocket handshake (an HTTP denial response) completes cleanly: uvicorn's
  sans-I/O protocol would log "ASGI callable returned without completing handshake" at
  error level for each one.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import h11
import structlog
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from headrace.accumulators.limits import DEFAULT_MAX_BYTES

log = structlog.get_logger("headrace.http")


@dataclass(frozen=True)
class ConnectionLimits:
    max_connections: int = 1000
    header_timeout: float = 10.0
    keep_alive_timeout: float = 5.0
    max_header_bytes: int = 16 * 1024
    max_frame_bytes: int = DEFAULT_MAX_BYTES
    accept_log_interval: float = 10.0


def guarded_http_protocol(limits: ConnectionLimits) -> type[H11Protocol]:
    """An h11 protocol class enforcing ``limits``; its idle bookkeeping is per server."""
    idle: OrderedDict[GuardedH11Protocol, None] = OrderedDict()

    class GuardedH11Protocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._wait_for_headers()
            if len(self.connections) > limits.max_connections:
                oldest = next(iter(idle), self)
                oldest._shed()

        def _wait_for_headers(self) -> None:
            idle[self] = None
            if self._header_timer is not None:
                self._header_timer.cancel()
            self._header_timer = self.loop.call_later(limits.header_timeout, self._shed)

        def _got_headers(self) -> None:
            idle.pop(self, None)
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _shed(self) -> None:
            """Close a connection that has not sent its request headers (yet)."""
            if self not in idle:
                return
            self._got_headers()
            if not self.transport.is_closing():
                self.transport.close()

        def handle_events(self) -> None:
            super().handle_events()
            if self.conn.their_state is not h11.IDLE:
                self._got_headers()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                self._wait_for_headers()

        def connection_lost(self, exc: Exception | None) -> None:
            self._got_headers()
            super().connection_lost(exc)

    return GuardedH11Protocol


class CleanDenialWebSocketProtocol(WebSocketsSansIOProtocol):
    """Marks the handshake complete once an HTTP denial response is sent."""

    async def send(self, message: Any) -> None:
        await super().send(message)
        if message["type"] == "websocket.http.response.body" and not message.get("more_body"):
            self.handshake_complete = True


class AcceptErrorThrottle:
    """Loop exception handler: accept failures are logged once per interval, with a count;
    every other context goes to the handler that was there before."""

    PREFIX = "socket.accept() out of system resource"

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float) -> None:
        self.loop = loop
        self.interval = interval
        self.previous = loop.get_exception_handler()
        self.suppressed = 0
        self.next_log = 0.0

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if str(context.get("message", "")).startswith(self.PREFIX):
            now = time.monotonic()
            if now < self.next_log:
                self.suppressed += 1
                return
            self.next_log = now + self.interval
            log.warning(
                "http api: accepting a connection failed (out of file descriptors?); "
                "further failures are counted for a while",
                error=repr(context.get("exception")),
                suppressed_since_last=self.suppressed,
                interval=self.interval,
            )
            self.suppressed = 0
            return
        if self.previous is not None:
            self.previous(loop, context)
        else:
            loop.default_exception_handler(context)

    def install(self) -> None:
        self.loop.set_exception_handler(self)

    def remove(self) -> None:
        if self.loop.get_exception_handler() is self:
            self.loop.set_exception_handler(self.previous)


class _InLoopServer(uvicorn.Server):
    """uvicorn without signal handlers: the worker owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def uvicorn_config(app: Any, limits: ConnectionLimits) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=5,
        http=guarded_http_protocol(limits),
        ws=CleanDenialWebSocketProtocol,
        ws_max_size=limits.max_frame_bytes,
        ws_max_queue=8,
        ws_per_message_deflate=False,
        # the connection cap above keeps connections <= max_connections (+1 while shedding);
        # this bounds concurrent requests as well, answering 503 beyond it
        limit_concurrency=limits.max_connections + 2,
        timeout_keep_alive=limits.keep_alive_timeout,  # type: ignore[arg-type]
        h11_max_incomplete_event_size=limits.max_header_bytes,
        server_header=False,
    )


def bind_socket(host: str, port: int, backlog: int = 1024) -> socket.socket:
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


__all__ = [
    "AcceptErrorThrottle",
    "CleanDenialWebSocketProtocol",
    "ConnectionLimits",
    "bind_socket",
    "guarded_http_protocol",
    "uvicorn_config",
]
