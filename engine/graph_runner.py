"""Runs one graph for one fire: retries, sinks, dead letters, the ``on_error`` policy."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import structlog

from headrace.connectors.dead_letters import DeadLetter, DeadLetterSink
from headrace.connectors.sinks import Sink
from headrace.engine.errors import GraphHalted, NodeExecutionError
from headrace.engine.graph.builder import ComputationGraph, OnError
from headrace.engine.observers import ExecutionRecord, Observers
from headrace.reactors import Fire

log = structlog.get_logger("headrace.graphs")


class GraphRunner:
    """Executes a graph on each fire and hands its outputs to every sink.

    An attempt is the execution plus delivery to the sinks; a failed attempt is retried
    per the graph's ``RetryPolicy``. When attempts run out the execution is dead-lettered
    (its inputs count as handled) or, with ``on_error = "stop"``, ``GraphHalted`` is raised.
    """

    def __init__(
        self,
        graph: ComputationGraph,
        sinks: Sequence[Sink],
        dead_letters: DeadLetterSink,
        observers: Observers,
    ) -> None:
        self.graph = graph
        self.sinks = list(sinks)
        self.dead_letters = dead_letters
        self.observers = observers
        self.executions = 0
        self.failures = 0
        self.last_error: str | None = None
        self.last_duration: float | None = None
        # Sinks with ``submit`` are not awaited per fire (on_error="stop" must see failures).
        self._defer = graph.on_error is OnError.DEAD_LETTER
        self._redeliveries: set[asyncio.Task[None]] = set()

    @property
    def name(self) -> str:
        return self.graph.name

    async def _attempt(self, fire: Fire) -> None:
        executor = self.graph.executor
        if executor.is_async:
            outputs = await executor.run(fire.inputs, fire.key)
        else:
            outputs = executor.run_sync(fire.inputs, fire.key)
        if outputs:
            for sink in self.sinks:
                submit = getattr(sink, "submit", None) if self._defer else None
                if submit is not None:
                    # Hand the outputs over and let the fire settle once they are durable,
                    # so the reactor can fire again while they are in flight.
                    release = fire.hold()
                    try:
                        accepted = submit(
                            self.name, outputs, partial(self._durable, fire, sink, outputs, release)
                        )
                    except BaseException:
                        release()
                        raise
                    if accepted:
                        continue
                    release()
                await sink.send(self.name, outputs)

    def _durable(
        self,
        fire: Fire,
        sink: Sink,
        outputs: dict[str, Any],
        release: Callable[[], None],
        error: BaseException | None,
    ) -> None:
        """A submitted result was confirmed (or failed): release the fire, or retry."""
        if error is None:
            release()
            return
        task = asyncio.get_running_loop().create_task(
            self._redeliver(fire, sink, outputs, release, error)
        )
        self._redeliveries.add(task)
        task.add_done_callback(self._redeliveries.discard)

    async def _redeliver(
        self,
        fire: Fire,
        sink: Sink,
        outputs: dict[str, Any],
        release: Callable[[], None],
        error: BaseException,
    ) -> None:
        """Retry a failed delivery per the retry policy, then dead-letter the execution."""
        policy = self.graph.retry
        for attempt in range(2, policy.attempts + 1):
            log.warning(
                "sink delivery failed", graph=self.name, attempt=attempt - 1, error=str(error)
            )
            await asyncio.sleep(policy.delay(attempt - 1))
            try:
                await sink.send(self.name, outputs)
                release()
                return
            except Exception as failure:
                error = failure
        self.failures += 1
        self.last_error = f"sink delivery failed: {error}"
        letter = DeadLetter(
            kind="execution", reason=self.last_error, payload=fire.inputs, graph=self.name
        )
        try:
            await self.dead_letters.send(letter)
        except Exception:  # neither delivered nor dead-lettered: the inputs stay unsettled
            log.exception("dead letter for an undeliverable result failed", graph=self.name)
            return
        self.observers.on_dead_letter(letter)
        release()

    async def run(self, fire: Fire) -> None:
        started, clock = time.time(), time.perf_counter()
        policy = self.graph.retry
        error: Exception | None = None
        attempt = 0
        for attempt in range(1, policy.attempts + 1):
            try:
                await self._attempt(fire)
                error = None
                break
            except Exception as failure:
                error = failure
                log.warning(
                    "graph execution failed",
                    graph=self.name,
                    node=getattr(failure, "node", None),
                    reactor=self.graph.reactor_name,
                    fire=fire.number,
                    attempt=attempt,
                    attempts=policy.attempts,
                    error=str(failure),
                )
                if attempt < policy.attempts:
                    await asyncio.sleep(policy.delay(attempt))
        self.executions += 1
        self.last_duration = time.perf_counter() - clock
        node = error.node if isinstance(error, NodeExecutionError) else None
        if error is None and not self.observers.observers:
            return
        self.observers.on_execution(
            ExecutionRecord(
                graph=self.name,
                reactor=self.graph.reactor_name,
                fire=fire.number,
                started_at=started,
                duration=self.last_duration,
                status="ok" if error is None else "failed",
                attempts=attempt,
                error=None if error is None else str(error),
                node=node,
            )
        )
        if error is not None:
            await self._give_up(fire, error, node)

    async def _give_up(self, fire: Fire, error: Exception, node: str | None) -> None:
        self.failures += 1
        self.last_error = str(error)
        if self.graph.on_error is OnError.STOP:
            raise GraphHalted(f"graph {self.name!r} halted (on_error=stop): {error}") from error
        letter = DeadLetter(
            kind="execution",
            reason=str(error),
            payload=fire.inputs,
            graph=self.name,
            node=node,
        )
        await self.dead_letters.send(letter)
        self.observers.on_dead_letter(letter)

    def health(self) -> dict[str, Any]:
        return {
            "reactor": self.graph.reactor_name,
            "executions": self.executions,
            "failures": self.failures,
            "last_error": self.last_error,
            "last_duration": self.last_duration,
        }
