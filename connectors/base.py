"""The connector protocols in one place: what a source, a sink, a dead-letter sink and a
result store must provide. The concrete connectors live beside this module
(``sinks``, ``dead_letters``, ``kafka/``); these names are also importable from where they
were first defined (``headrace.engine.runtime.Source``, ``headrace.connectors.sinks.Sink``,
...).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from headrace.connectors.dead_letters import DeadLetter
    from headrace.engine.runtime import Runtime


@runtime_checkable
class Source(Protocol):
    """An external feed (e.g. Kafka) that drives some accumulators."""

    accumulators: frozenset[str]

    async def start(self, runtime: Runtime) -> None: ...

    async def stop(self) -> None:
        """Stop fetching; called first on shutdown."""

    async def close(self) -> None:
        """Commit and disconnect; called after reactors drained and sinks flushed."""

    def health(self) -> dict[str, Any]: ...


@runtime_checkable
class Sink(Protocol):
    """A destination for graph results."""

    async def send(self, graph: str, outputs: dict[str, Any]) -> None:
        """Deliver one execution's terminal outputs; return once they are durable."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...


@runtime_checkable
class DeadLetterSink(Protocol):
    """Where dead letters go; ``send`` returns once the letter is durable."""

    async def send(self, letter: DeadLetter) -> None: ...


@runtime_checkable
class ResultStore(Protocol):
    """Anything that keeps graph results, e.g. ``headrace.engine.store.state_store.StateStore``."""

    async def write_result(self, graph: str, outputs: dict[str, Any]) -> None:
        """Keep one execution's terminal outputs; return once they are durable."""


__all__ = ["DeadLetterSink", "ResultStore", "Sink", "Source"]
