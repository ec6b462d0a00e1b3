"""The connector protocols in one place: what a source, a sink, a dead-letter sink and a
result store must provide, and what a source is given by the runtime that starts it
(``SourceContext``). The concrete connectors live beside this module
(``sinks``, ``dead_letters``, ``kafka/``); these names are also importable from where they
were first defined (``headrace.engine.runtime.Source``, ``headrace.connectors.sinks.Sink``,
...).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Mapping

    from headrace.accumulators.runners import AccumulatorRunner
    from headrace.connectors.dead_letters import DeadLetter
    from headrace.engine.observers import Observers
    from headrace.reactors.loop import ReactorLoop


@runtime_checkable
class SourceContext(Protocol):
    """What a source needs from the runtime that starts it, and nothing more; ``Runtime``
    provides it. A source feeds some of the running accumulators, sends what it cannot
    deliver to the dead letters (and tells the observers), has its long-lived task
    supervised, and fails a component on a fatal client error."""

    @property
    def accumulators(self) -> Mapping[str, AccumulatorRunner]:
        """The running accumulators by name."""

    @property
    def reactors(self) -> Mapping[str, ReactorLoop]:
        """The running reactors by name (keyed ones restore their state per partition)."""

    @property
    def dead_letters(self) -> DeadLetterSink:
        """Where undeliverable input goes; ``send`` returns once it is durable."""

    @property
    def observers(self) -> Observers:
        """The runtime's observers (``on_dead_letter`` after each letter)."""

    def supervise(self, task: asyncio.Task[Any], component: str) -> None:
        """Watch a long-lived task: if it raises or ends early, ``component`` fails."""

    def fail(self, component: str, reason: BaseException | str) -> None:
        """Fail ``component`` (from any thread): logged, health failed, the worker stops."""

    def failed(self) -> list[str]:
        """The names of the reactors that failed (their in-flight events never finish)."""


@runtime_checkable
class Source(Protocol):
    """An external feed (e.g. Kafka) that drives some accumulators."""

    accumulators: frozenset[str]

    async def start(self, runtime: SourceContext) -> None:
        """Start feeding ``runtime``'s accumulators (called once the runtime is wired)."""

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


__all__ = ["DeadLetterSink", "ResultStore", "Sink", "Source", "SourceContext"]
