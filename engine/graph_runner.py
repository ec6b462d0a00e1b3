"""Runs one graph for one fire: retries, sinks, dead letters, the ``on_error`` policy.

A sink may ``classify(error)`` a delivery error as ``fatal`` (the sink is unusable: the
component fails, nothing is dead-lettered and the inputs stay unsettled), ``retriable``
(the destination was away: send again with backoff, the inputs held until it worked) or
``permanent`` (retry per the graph's policy, then dead-letter). Sending a dead letter
never fails the reactor: when no destination takes it, it is logged as the last resort.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any

import structlog

from headrace.connectors.dead_letters import (
    DeadLetter,
    DeadLetterSink,
    preview,
    send_with_fallback,
    where,
)
from headrace.connectors.sinks import Sink
from headrace.engine.errors import GraphHalted, NodeExecutionError, SinkFailed
from headrace.engine.graph.builder import ComputationGraph, OnError
from headrace.engine.observers import ExecutionBatch, ExecutionRecord, Observers
from headrace.reactors import Fire
from headrace.reactors.policy import settle_fires

log = structlog.get_logger("headrace.graphs")

MAX_RUN_AGE = 0.002
"""Seconds a batch's first unsubmitted result waits for the sink (a slow sync graph's
results go out every ~2 ms, not at the end of its batch)."""


class _ResultRun:
    """Fires executed by ``run_many`` whose results are not handed to the sink yet."""

    __slots__ = ("durations", "fires", "results")

    def __init__(self) -> None:
        self.fires: list[Fire] = []
        self.results: list[dict[str, Any]] = []
        self.durations: list[float] = []

    def clear(self) -> None:
        self.fires.clear()
        self.results.clear()
        self.durations.clear()


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
        fail: Callable[[str, BaseException | str], None] | None = None,
        max_redelivery_backoff: float = 5.0,
    ) -> None:
        self.graph = graph
        self.sinks = list(sinks)
        self.dead_letters = dead_letters
        self.observers = observers
        self.fail = fail
        self.max_redelivery_backoff = max_redelivery_backoff
        self.executions = 0
        self.failures = 0
        self.redeliveries = 0
        self.lost_dead_letters = 0
        self.last_error: str | None = None
        self.last_duration: float | None = None
        # Sinks with ``submit`` are not awaited per fire (on_error="stop" must see failures).
        self._defer = graph.on_error is OnError.DEAD_LETTER
        self._redeliveries: set[asyncio.Task[None]] = set()
        self._retry_logged_at = -1.0
        self._retries_unlogged = 0

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
                if not self._submit(fire, sink, outputs):
                    await self._send(sink, outputs)

    def _submit(self, fire: Fire, sink: Sink, outputs: dict[str, Any]) -> bool:
        """Hand the outputs to a sink that takes them without waiting (``submit``); the
        fire settles once they are durable, so the reactor can fire again while they are in
        flight. False when the sink cannot (no ``submit``, ``on_error="stop"``, or busy)."""
        submit = getattr(sink, "submit", None) if self._defer else None
        if submit is None:
            return False
        return self._submit_to(fire, sink, submit, outputs)

    def _submitters(self) -> list[tuple[Sink, Callable[..., bool] | None]]:
        """Each sink with the ``submit`` that ``_submit`` would use (None: send instead)."""
        return [
            (sink, getattr(sink, "submit", None) if self._defer else None) for sink in self.sinks
        ]

    def _submit_to(
        self, fire: Fire, sink: Sink, submit: Callable[..., bool], outputs: dict[str, Any]
    ) -> bool:
        """``_submit`` once ``submit`` is known (``run_many`` looks it up once per batch)."""
        release = fire.hold()
        try:
            accepted = submit(
                self.graph.name, outputs, partial(self._durable, fire, sink, outputs, release)
            )
        except Exception as error:
            release()
            self._fail_if_fatal(sink, error)
            raise
        except BaseException:
            release()
            raise
        if not accepted:
            release()
        return bool(accepted)

    async def run_many(self, fires: Iterable[Fire]) -> None:
        """Run a ``sequential`` reactor's fires in order, settling each once its graph is
        done with it (a submitted result still holds it until durable).

        A sync graph runs in one loop, without a coroutine, clock pair or
        ``ExecutionRecord`` per fire: its successes reach the observers as one
        ``ExecutionBatch``. A sink that groups results (``open_group``) takes the batch's
        results as one group, durable together: one delivery report call per result and
        one settling pass per batch; when it is the only sink, the results go to it in
        runs (``_submit_run``). A fire whose first attempt fails continues in ``run``
        (retries, dead letters, ``on_error``), as does every fire of an async graph."""
        executor = self.graph.executor
        if executor.is_async:
            for fire in fires:
                await self.run(fire)
                fire.settle()
            return
        plan = self._plan()
        numbers: list[int] = []
        durations: list[float] = []
        started = time.time()
        try:
            if len(plan) == 1 and plan[0][2] is not None:
                await self._run_into_group(fires, plan[0][0], plan[0][2], numbers, durations)
            else:
                await self._run_each(fires, plan, numbers, durations)
        finally:
            for _, _, group in plan:
                if group is not None:
                    group.seal()
            if numbers:
                self.executions += len(numbers)
                self.last_duration = durations[-1]
                if self.observers.observers:
                    self.observers.on_executions(
                        ExecutionBatch(
                            self.name, self.graph.reactor_name, numbers, started, durations
                        )
                    )

    async def _run_each(
        self,
        fires: Iterable[Fire],
        plan: list[tuple[Sink, Callable[..., bool] | None, Any]],
        numbers: list[int],
        durations: list[float],
    ) -> None:
        """``run_many`` with the sinks taking each fire's results before the next fire."""
        run_sync = self.graph.executor.run_sync
        submit_to = self._submit_to
        clock = time.perf_counter
        for fire in fires:
            begun = clock()
            try:
                outputs = run_sync(fire.inputs, fire.key)
                if outputs:
                    for sink, submit, group in plan:
                        if group is not None:
                            index, error = group.submit_many([outputs], [(fire, outputs)])
                            if error is not None:
                                self._fail_if_fatal(sink, error)
                                raise error
                            if index:
                                fire.holds += 1  # fire.hold(): released in _group_done
                                continue
                        elif submit is not None and submit_to(fire, sink, submit, outputs):
                            continue
                        await self._send(sink, outputs)
            except SinkFailed:
                raise
            except Exception as error:
                await self.run(fire, first_failure=(error, begun))
                fire.settle()
                continue
            numbers.append(fire.number)
            durations.append(clock() - begun)
            fire.settle()

    async def _run_into_group(
        self,
        fires: Iterable[Fire],
        sink: Sink,
        group: Any,
        numbers: list[int],
        durations: list[float],
    ) -> None:
        """``run_many`` for one grouping sink: the results of consecutive fires go to it as
        one run (``_submit_run``): at the end of the batch, once the run is
        ``MAX_RUN_AGE`` old, and before a failed fire continues in ``run``, so that results
        reach the sink in fire order."""
        run_sync = self.graph.executor.run_sync
        clock = time.perf_counter
        run = _ResultRun()
        run_began = 0.0  # when the first result of the run was begun
        ended = clock()  # one clock per fire: a fire begins where the one before ended
        try:
            for fire in fires:
                begun = ended
                try:
                    outputs = run_sync(fire.inputs, fire.key)
                except Exception as error:
                    await self._submit_run(sink, group, run, numbers, durations)
                    await self.run(fire, first_failure=(error, begun))
                    fire.settle()
                    ended = clock()
                    continue
                ended = clock()
                if outputs:
                    if not run.fires:
                        run_began = begun
                    run.fires.append(fire)
                    run.results.append(outputs)
                    run.durations.append(ended - begun)
                    if begun - run_began >= MAX_RUN_AGE:
                        await self._submit_run(sink, group, run, numbers, durations)
                        ended = clock()
                else:
                    numbers.append(fire.number)
                    durations.append(ended - begun)
                    fire.settle()
            await self._submit_run(sink, group, run, numbers, durations)
        finally:
            run.clear()  # not submitted (the sink failed): their inputs stay unsettled

    async def _submit_run(
        self,
        sink: Sink,
        group: Any,
        run: _ResultRun,
        numbers: list[int],
        durations: list[float],
    ) -> None:
        """Hand a run of results to ``group`` in order; each one taken or sent counts as an
        execution (``numbers``, ``durations``). A fire whose result the group took hands
        its hold to the group (released in ``_group_done``). One the producer had no room
        for is sent (waiting: backpressure). One that failed to encode, produce or send
        continues in ``run``, which counts it (a fatal error fails the sink)."""
        fires, results = run.fires, run.results
        if not fires:
            return
        tokens = list(zip(fires, results, strict=True))
        index, count = 0, len(fires)
        while index < count:
            taken_from = index
            index, error = group.submit_many(results, tokens, index)
            numbers.extend(fire.number for fire in fires[taken_from:index])
            durations.extend(run.durations[taken_from:index])
            if index == count:
                break
            fire, outputs = tokens[index]
            duration = run.durations[index]
            index += 1
            if error is None:
                try:
                    await self._send(sink, outputs)
                    numbers.append(fire.number)
                    durations.append(duration)
                except SinkFailed:
                    raise
                except Exception as failure:
                    error = failure
            if error is not None:
                self._fail_if_fatal(sink, error)
                await self.run(fire, first_failure=(error, time.perf_counter()))
            fire.settle()
        run.clear()

    def _plan(self) -> list[tuple[Sink, Callable[..., bool] | None, Any]]:
        """Per sink, for one batch: its ``submit`` (None: ``send``) and its open group
        (None: the sink does not group, or results are not deferred)."""
        plan: list[tuple[Sink, Callable[..., bool] | None, Any]] = []
        for sink, submit in self._submitters():
            open_group = getattr(sink, "open_group", None) if submit is not None else None
            group = (
                open_group(self.graph.name, partial(self._group_done, sink))
                if open_group is not None
                else None
            )
            plan.append((sink, submit, group))
        return plan

    def _group_done(
        self,
        sink: Sink,
        delivered: list[tuple[Fire, dict[str, Any]]],
        failed: list[tuple[tuple[Fire, dict[str, Any]], BaseException]],
    ) -> None:
        """A batch's group is durable: release its fires; a failed result is sent again
        (or dead-lettered) before its fire is released, as ``_durable`` does for one."""
        settle_fires(fire for fire, _ in delivered)
        for (fire, outputs), error in failed:
            self._durable(fire, sink, outputs, fire.settle, error)

    def _fail_if_fatal(self, sink: Sink, error: Exception) -> None:
        """A sink's ``submit`` raised ``error``: when it is fatal, fail the sink's component
        and raise ``SinkFailed`` (the caller re-raises any other error)."""
        if _kind(sink, error) == "fatal":
            self._sink_fatal(sink, error)
            raise SinkFailed(f"sink {_sink_name(sink)} failed for good: {error}") from error

    async def _send(self, sink: Sink, outputs: dict[str, Any]) -> None:
        """Deliver now; a retriable failure is retried here until it works (backpressure)."""
        try:
            await sink.send(self.name, outputs)
        except Exception as error:
            kind = _kind(sink, error)
            if kind == "fatal":
                self._sink_fatal(sink, error)
                raise SinkFailed(f"sink {_sink_name(sink)} failed for good: {error}") from error
            if kind != "retriable":
                raise
            await self._send_until_delivered(sink, outputs, error)

    async def _send_until_delivered(
        self, sink: Sink, outputs: dict[str, Any], error: BaseException
    ) -> None:
        """Send again with backoff while the errors are retriable; raise on any other."""
        attempt = 1
        while True:
            delay = min(self.max_redelivery_backoff, self.graph.retry.backoff * 2 ** (attempt - 1))
            self.redeliveries += 1
            self._log_retry(sink, attempt, delay, error)
            await asyncio.sleep(delay)
            attempt += 1
            try:
                await sink.send(self.name, outputs)
                return
            except Exception as failure:
                error = failure
                kind = _kind(sink, failure)
                if kind == "fatal":
                    self._sink_fatal(sink, failure)
                    raise SinkFailed(
                        f"sink {_sink_name(sink)} failed for good: {failure}"
                    ) from failure
                if kind != "retriable":
                    raise

    def _log_retry(self, sink: Sink, attempt: int, delay: float, error: BaseException) -> None:
        """At most one line a second: an outage fails every result in flight at once."""
        now = time.monotonic()
        if now - self._retry_logged_at < 1.0:
            self._retries_unlogged += 1
            return
        log.warning(
            "sink delivery failed; retrying",
            graph=self.name,
            sink=_sink_name(sink),
            attempt=attempt,
            retry_in=delay,
            error=str(error),
            also_retrying=self._retries_unlogged,
        )
        self._retry_logged_at, self._retries_unlogged = now, 0

    def _sink_fatal(self, sink: Sink, error: BaseException) -> None:
        if self.fail is not None:
            self.fail(f"sink:{_sink_name(sink)}", error)

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
        task.add_done_callback(self._redelivery_done)

    def _redelivery_done(self, task: asyncio.Task[None]) -> None:
        """A redelivery that raised left its inputs unsettled for good: fail the graph."""
        self._redeliveries.discard(task)
        if task.cancelled() or task.exception() is None:
            return
        error = task.exception()
        log.error("redelivery failed", graph=self.name, error=repr(error), exc_info=error)
        if self.fail is not None and error is not None:
            self.fail(f"graph:{self.name}", error)

    async def _redeliver(
        self,
        fire: Fire,
        sink: Sink,
        outputs: dict[str, Any],
        release: Callable[[], None],
        error: BaseException,
    ) -> None:
        """A submitted result failed: send it again (retriable errors: until it works; others:
        per the retry policy, then dead-letter the execution). A fatal sink error keeps the
        inputs unsettled (they are consumed again after a restart) and dead-letters nothing."""
        kind = _kind(sink, error)
        if kind == "fatal":
            self._sink_fatal(sink, error)
            return
        try:
            if kind == "retriable":
                await self._send_until_delivered(sink, outputs, error)
                release()
                return
            policy = self.graph.retry
            for attempt in range(2, policy.attempts + 1):
                log.warning(
                    "sink delivery failed", graph=self.name, attempt=attempt - 1, error=str(error)
                )
                await asyncio.sleep(policy.delay(attempt - 1))
                try:
                    await self._send(sink, outputs)
                    release()
                    return
                except SinkFailed:
                    return
                except Exception as failure:
                    error = failure
        except SinkFailed:
            return
        except Exception as failure:  # a permanent error after retriable ones
            error = failure
        self.failures += 1
        self.last_error = f"sink delivery failed: {error}"
        letter = DeadLetter(
            kind="execution", reason=self.last_error, payload=fire.inputs, graph=self.name
        )
        await self._dead_letter(letter)
        release()

    async def _dead_letter(self, letter: DeadLetter) -> None:
        """Send a dead letter (once more cut down if that fails); never raises: when no
        destination takes it, the letter is logged instead, as the last resort."""
        try:
            sent = await send_with_fallback(self.dead_letters, letter)
        except Exception as error:
            self.lost_dead_letters += 1
            log.error(
                "dead letter not sent: logged here as the last resort",
                error=f"{type(error).__name__}: {error}",
                payload=preview(letter.payload),
                **where(letter),
            )
            return
        self.observers.on_dead_letter(sent)

    async def run(self, fire: Fire, first_failure: tuple[Exception, float] | None = None) -> None:
        """Execute ``fire`` per the retry policy. ``first_failure``: its first attempt
        already failed with this error, begun at this ``perf_counter`` time (``run_many``)."""
        started, clock = time.time(), time.perf_counter()
        policy = self.graph.retry
        error: Exception | None = None
        attempt = 0
        for attempt in range(1, policy.attempts + 1):
            try:
                if first_failure is not None:
                    failed, clock = first_failure
                    first_failure = None
                    raise failed
                await self._attempt(fire)
                error = None
                break
            except SinkFailed:
                raise  # the sink is unusable: fail the reactor, keep the inputs unsettled
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
        await self._dead_letter(letter)

    def pending(self) -> list[asyncio.Task[None]]:
        """Redeliveries still running (each holds its fire's inputs unsettled)."""
        return list(self._redeliveries)

    def health(self) -> dict[str, Any]:
        return {
            "reactor": self.graph.reactor_name,
            "executions": self.executions,
            "failures": self.failures,
            "redeliveries": self.redeliveries,
            "lost_dead_letters": self.lost_dead_letters,
            "last_error": self.last_error,
            "last_duration": self.last_duration,
        }


def _kind(sink: Sink, error: BaseException) -> str:
    classify = getattr(sink, "classify", None)
    if classify is None:
        return "permanent"
    try:
        return str(classify(error))
    except Exception:
        return "permanent"


def _sink_name(sink: Sink) -> str:
    topic = getattr(sink, "topic", None)
    return f"{type(sink).__name__}({topic})" if topic else type(sink).__name__
