"""Graph-level helpers: run a graph over input snapshots; an in-memory runtime to push to."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from headrace.accumulators.clock import SYSTEM_CLOCK, Clock
from headrace.connectors.dead_letters import DeadLetter, MemoryDeadLetters
from headrace.connectors.sinks import MemorySink, Sink
from headrace.engine.graph.builder import ComputationGraphBuilder
from headrace.engine.graph.model import ComputationGraph
from headrace.engine.runtime import Runtime

GraphRef = ComputationGraph | ComputationGraphBuilder


def _graph(ref: GraphRef) -> ComputationGraph:
    if isinstance(ref, ComputationGraphBuilder):
        if ref.graph is None:
            raise RuntimeError(f"graph {ref.name!r} is not built yet: leave the 'with' block first")
        return ref.graph
    return ref


def run_snapshots(graph: GraphRef, snapshots: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Run ``graph`` once per snapshot (``{accumulator: value}``), in order, without a
    runtime; returns each run's ``{terminal_node: output}``. Works for async graphs too
    (outside a running event loop; inside one use :func:`run_snapshots_async`)."""
    built = _graph(graph)
    return [built.execute(snapshot) for snapshot in snapshots]


async def run_snapshots_async(
    graph: GraphRef, snapshots: Iterable[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    built = _graph(graph)
    return [await built.execute_async(snapshot) for snapshot in snapshots]


class MemoryRuntime(Runtime):
    """A :class:`Runtime` whose results land in :attr:`sink` (a ``MemorySink``) and whose
    dead letters in :attr:`dead_letter_sink`; ``push`` events in, ``wait_for`` results.

    ::

        async with MemoryRuntime(graphs=["alerts"]) as rt:
            await rt.push("prices", {"symbol": "X", "price": 10.0})
            (result,) = await rt.wait_for(1, graph="alerts")
    """

    def __init__(
        self,
        *,
        graphs: Iterable[str | ComputationGraph | ComputationGraphBuilder] | None = None,
        sinks: Sequence[Sink] = (),
        clock: Clock = SYSTEM_CLOCK,
        **options: Any,
    ) -> None:
        self.sink = MemorySink()
        self.dead_letter_sink = MemoryDeadLetters()
        super().__init__(
            graphs=graphs,
            sinks=[self.sink, *sinks],
            dead_letters=options.pop("dead_letters", self.dead_letter_sink),
            clock=clock,
            **options,
        )

    def outputs(self, graph: str | None = None) -> list[dict[str, Any]]:
        """Every result so far (of one graph, or of all)."""
        return self.sink.outputs(graph)

    @property
    def dead_letter_list(self) -> list[DeadLetter]:
        return list(self.dead_letter_sink.letters)

    async def push_many(self, accumulator: str, events: Iterable[Any]) -> None:
        for event in events:
            await self.push(accumulator, event)

    async def wait_for(
        self, count: int, *, graph: str | None = None, timeout: float = 10.0
    ) -> list[dict[str, Any]]:
        """Wait until ``count`` results (of ``graph``, or of any graph) arrived; return
        them. ``TimeoutError`` naming what arrived when they do not come in ``timeout``."""
        try:
            async with asyncio.timeout(timeout):
                while len(self.outputs(graph)) < count:
                    if self.failed():
                        raise RuntimeError(f"reactors failed: {self.failed()}")
                    await asyncio.sleep(0.001)
        except TimeoutError:
            got = self.outputs(graph)
            raise TimeoutError(
                f"expected {count} results{f' of graph {graph!r}' if graph else ''} in "
                f"{timeout}s, got {len(got)}: {got!r}"
            ) from None
        return self.outputs(graph)[:count]

    async def wait_for_dead_letters(self, count: int, timeout: float = 10.0) -> list[DeadLetter]:
        try:
            async with asyncio.timeout(timeout):
                while len(self.dead_letter_sink.letters) < count:
                    await asyncio.sleep(0.001)
        except TimeoutError:
            raise TimeoutError(
                f"expected {count} dead letters in {timeout}s, got "
                f"{len(self.dead_letter_sink.letters)}"
            ) from None
        return self.dead_letter_list[:count]
