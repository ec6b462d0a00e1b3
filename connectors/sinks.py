"""Where graph results go. ``send`` returns only once the result is flushed."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import structlog

log = structlog.get_logger("headrace.sinks")


class SinkClosedError(RuntimeError):
    """A result was handed to a sink after it was closed."""


@runtime_checkable
class Sink(Protocol):
    """A destination for graph results."""

    async def send(self, graph: str, outputs: dict[str, Any]) -> None:
        """Deliver one execution's terminal outputs; return once they are durable."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...


class BaseSink:
    """No-op lifecycle for sinks that need none."""

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None


class CallbackSink(BaseSink):
    """Calls ``callback(graph, outputs)`` (sync or async) for every result."""

    def __init__(self, callback: Callable[[str, dict[str, Any]], Awaitable[None] | None]) -> None:
        self.callback = callback

    async def send(self, graph: str, outputs: dict[str, Any]) -> None:
        result = self.callback(graph, outputs)
        if inspect.isawaitable(result):
            await result


@dataclass
class MemorySink(BaseSink):
    """Keeps every result in memory, for tests; ``wait_for(n)`` waits for ``n`` results."""

    results: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def send(self, graph: str, outputs: dict[str, Any]) -> None:
        self.results.append((graph, outputs))
        self._changed.set()

    def outputs(self, graph: str | None = None) -> list[dict[str, Any]]:
        return [out for name, out in self.results if graph is None or name == graph]

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[tuple[str, dict[str, Any]]]:
        async with asyncio.timeout(timeout):
            while len(self.results) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.results


class ResultStore(Protocol):
    """Anything that keeps graph results, e.g. ``headrace.engine.store.state_store.StateStore``."""

    async def write_result(self, graph: str, outputs: dict[str, Any]) -> None:
        """Keep one execution's terminal outputs; return once they are durable."""


class StoreSink(BaseSink):
    """Writes every result to a store (the worker's state store for ``type = "state_store"``).

    The store's lifecycle belongs to its owner: the sink neither opens nor closes it.
    """

    def __init__(self, store: ResultStore) -> None:
        self.store = store

    async def send(self, graph: str, outputs: dict[str, Any]) -> None:
        await self.store.write_result(graph, outputs)


class LogSink(BaseSink):
    """Logs every result as a structured line."""

    async def send(self, graph: str, outputs: dict[str, Any]) -> None:
        log.info("graph result", graph=graph, outputs=outputs)
