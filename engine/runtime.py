"""The in-process runtime: wires accumulators, channels, reactors, graphs, sinks and sources."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from functools import partial
from types import TracebackType
from typing import Any

import structlog

from headrace.accumulators import (
    AccumulatorKind,
    AccumulatorRunner,
    AccumulatorSpec,
    BatchRunner,
    Channel,
    get_accumulator,
    make_runner,
)
from headrace.accumulators.clock import SYSTEM_CLOCK, Clock
from headrace.connectors.base import Source
from headrace.connectors.dead_letters import DeadLetter, DeadLetterSink, MemoryDeadLetters
from headrace.connectors.sinks import Sink
from headrace.engine.bound_graphs import BoundGraphs
from headrace.engine.errors import GraphHalted, RuntimeConfigError
from headrace.engine.graph.builder import ComputationGraph, ComputationGraphBuilder
from headrace.engine.graph.registry import get_graph, registered_graphs
from headrace.engine.graph_runner import GraphRunner
from headrace.engine.observers import Observers
from headrace.engine.supervision import ComponentFailure, FailureListener, Supervisor, describe
from headrace.reactors import (
    KeyedReactorLoop,
    ReactorLoop,
    ReactorSpec,
    find_reactor,
    reactor_name_of,
)
from headrace.reactors.keyed import keyless_accumulators, keyless_message
from headrace.reactors.keyed_loop import attach_tables

log = structlog.get_logger("headrace.runtime")


class Runtime:
    """Runs graphs in this process. Use ``async with Runtime(...) as runtime``.

    By default it runs every registered graph, the reactors they bind to and the
    accumulators those reactors watch. ``sinks`` receive every graph's results;
    ``graph_sinks`` adds sinks for single graphs. ``clock`` times polling and batch
    accumulators (tests pass ``headrace.testing.FakeClock``). ``guarantee="exactly_once"``
    needs Kafka sources of that guarantee sharing one ``TransactionCoordinator``: the Kafka
    sinks and Kafka dead letters then write inside its transactions.
    """

    def __init__(
        self,
        *,
        graphs: Iterable[str | ComputationGraph | ComputationGraphBuilder] | None = None,
        reactors: Iterable[Any] | None = None,
        accumulators: Iterable[str | AccumulatorSpec] | None = None,
        sinks: Sequence[Sink] = (),
        graph_sinks: Mapping[str, Sequence[Sink]] | None = None,
        dead_letters: DeadLetterSink | None = None,
        sources: Sequence[Source] = (),
        observers: Sequence[Any] = (),
        channel_size: int | None = None,
        redelivery_timeout: float = 30.0,
        clock: Clock = SYSTEM_CLOCK,
        guarantee: str = "at_least_once",
    ) -> None:
        self._graph_refs = graphs
        self._reactor_refs = reactors
        self._accumulator_refs = accumulators
        self.sinks = list(sinks)
        self.graph_sinks = {k: list(v) for k, v in (graph_sinks or {}).items()}
        self.dead_letters: DeadLetterSink = dead_letters or MemoryDeadLetters()
        self.sources = list(sources)
        self.observers = Observers(list(observers))
        self.channel_size = channel_size
        self.redelivery_timeout = redelivery_timeout
        self.clock = clock
        self.graphs: dict[str, GraphRunner] = {}
        self.reactors: dict[str, ReactorLoop] = {}
        self.accumulators: dict[str, AccumulatorRunner] = {}
        self.bound: dict[str, BoundGraphs] = {}
        self.started_at: float | None = None
        self.supervisor = Supervisor()
        self.guarantee = guarantee
        if guarantee != "at_least_once" or any(
            getattr(s, "guarantee", None) == "exactly_once" for s in self.sources
        ):  # Kafka sinks and dead letters write in the sources' transactions
            from headrace.engine.transactions import join_runtime

            every_sink = [*self.sinks, *(s for ss in self.graph_sinks.values() for s in ss)]
            join_runtime(guarantee, self.sources, every_sink, self.dead_letters)
        self._running = False
        self._stopped = False

    # -- wiring ------------------------------------------------------------------------
    def _resolve_graphs(self) -> list[ComputationGraph]:
        if self._graph_refs is None:
            return list(registered_graphs().values())
        resolved = []
        for ref in self._graph_refs:
            if isinstance(ref, ComputationGraphBuilder):
                ref = ref.graph or get_graph(ref.name)
            resolved.append(ref if isinstance(ref, ComputationGraph) else get_graph(ref))
        return resolved

    def _resolve_reactors(self, graphs: list[ComputationGraph]) -> dict[str, ReactorSpec]:
        names = [reactor_name_of(r) for r in self._reactor_refs or ()]
        names += [g.reactor_name for g in graphs]
        specs: dict[str, ReactorSpec] = {}
        for name in dict.fromkeys(names):
            spec = find_reactor(name)
            if spec is None:
                users = [g.name for g in graphs if g.reactor_name == name]
                raise RuntimeConfigError(
                    f"unknown reactor {name!r}"
                    + (f" (bound by graphs {users})" if users else "")
                    + ": declare it with @reactor or load the module that does"
                )
            specs[name] = spec
        for graph in graphs:
            graph.check_reactor(specs[graph.reactor_name])
        return specs

    def _resolve_accumulators(self, reactors: dict[str, ReactorSpec]) -> dict[str, AccumulatorSpec]:
        given: dict[str, AccumulatorSpec] = {}
        for ref in self._accumulator_refs or ():
            spec = ref if isinstance(ref, AccumulatorSpec) else get_accumulator(ref)
            given[spec.name] = spec
        resolved: dict[str, AccumulatorSpec] = {}
        for reactor in reactors.values():
            for name in reactor.accumulators:
                if name in given:
                    resolved[name] = given[name]
                    continue
                try:
                    resolved[name] = get_accumulator(name)
                except KeyError:
                    raise RuntimeConfigError(
                        f"reactor {reactor.name!r} watches unknown accumulator {name!r}: "
                        "declare it with an accumulator decorator or in a config file"
                    ) from None
            keyless = keyless_accumulators(reactor, resolved)
            if keyless:
                raise RuntimeConfigError(keyless_message(reactor, keyless))
        return resolved

    def _wire(self) -> None:
        graphs = self._resolve_graphs()
        reactor_specs = self._resolve_reactors(graphs)
        accumulator_specs = self._resolve_accumulators(reactor_specs)
        channels: dict[str, list[Channel]] = {name: [] for name in accumulator_specs}
        for reactor in reactor_specs.values():
            reactor_channels = {}
            for name in reactor.accumulators:
                size = self.channel_size or accumulator_specs[name].channel_size
                reactor_channels[name] = Channel(name, size)
                channels[name].append(reactor_channels[name])
            runners = [
                GraphRunner(
                    g,
                    self.sinks + self.graph_sinks.get(g.name, []),
                    self.dead_letters,
                    self.observers,
                    fail=self.fail,
                )
                for g in graphs
                if g.reactor_name == reactor.name
            ]
            self.graphs.update((r.name, r) for r in runners)
            loop_class = KeyedReactorLoop if reactor.keyed else ReactorLoop
            self.bound[reactor.name] = BoundGraphs(runners)
            self.reactors[reactor.name] = loop_class(
                reactor, reactor_channels, self.bound[reactor.name]
            )
            if len(runners) == 1 and not reactor.keyed:  # sequential fires, a batch a wake-up
                self.reactors[reactor.name].fire_many = runners[0].run_many
        for name, spec in accumulator_specs.items():
            runner = make_runner(spec, channels[name], self.clock)
            runner.on_delivered = self.observers.delivered_hook(name)
            if isinstance(runner, BatchRunner):
                runner.on_batch_failure = self._dead_letter_batch
            self.accumulators[name] = runner
        try:
            attach_tables(self.reactors, self.accumulators)
        except ValueError as error:
            raise RuntimeConfigError(str(error)) from error

    async def _dead_letter_batch(self, accumulator: str, events: list[Any], reason: str) -> None:
        letter = DeadLetter(kind="batch", reason=reason, payload=events, accumulator=accumulator)
        await self.dead_letters.send(letter)
        self.observers.on_dead_letter(letter)

    def _graph_runner(self, graph: ComputationGraph, sinks: Sequence[Sink] = ()) -> GraphRunner:
        return GraphRunner(
            graph,
            self.sinks + list(sinks),
            self.dead_letters,
            self.observers,
            fail=self.fail,
        )

    # -- supervision -------------------------------------------------------------------
    def supervise(self, task: asyncio.Task[Any], component: str) -> None:
        """Watch a long-lived task: if it raises, or ends at all while the runtime is not
        stopping, ``component`` fails (logged with the cause, health failed, listeners told).
        """
        self.supervisor.supervise(task, component)

    def fail(self, component: str, reason: BaseException | str) -> None:
        """Report a failure from a callback (say, a fatal librdkafka error); any thread."""
        self.supervisor.fail(component, reason)

    def add_failure_listener(self, listener: FailureListener) -> None:
        """``listener(failure)`` runs on the event loop for each component failure."""
        self.supervisor.add_listener(listener)

    @property
    def failures(self) -> dict[str, ComponentFailure]:
        """Failed components by name, first failure only."""
        return self.supervisor.failures

    @property
    def stopping(self) -> bool:
        return self.supervisor.stopping

    def _report_fatal_errors(self, part: Any, component: str) -> None:
        """A part with an ``on_fatal`` hook (Kafka sinks, dead letters) fails its component
        on a fatal client error, unless its owner set the hook already."""
        if hasattr(part, "on_fatal") and part.on_fatal is None:
            part.on_fatal = lambda error: self.fail(component, f"fatal client error: {error}")

    def _supervise_parts(self) -> None:
        for name, runner in self.accumulators.items():
            task = _task_of(runner)
            if task is not None:
                self.supervise(task, f"accumulator:{name}")
        for name, loop in self.reactors.items():
            task = _task_of(loop)
            if task is not None:
                self.supervisor.supervise(
                    task, f"reactor:{name}", explain=partial(_reactor_error, loop)
                )
        for source in self.sources:
            task = _task_of(source)
            if task is not None:
                group = getattr(source, "group_id", None)
                self.supervise(task, f"{type(source).__name__}:{group}" if group else "source")

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        """Check the wiring, then start sinks, accumulators, reactors and sources."""
        self.supervisor.bind(asyncio.get_running_loop())
        self.supervisor.stopping = False
        self._stopped = False
        self._wire()
        for sink in {id(s): s for s in self._all_sinks()}.values():
            self._report_fatal_errors(sink, f"sink:{_name_of(sink)}")
            await sink.start()
        self._report_fatal_errors(self.dead_letters, f"dead-letters:{_name_of(self.dead_letters)}")
        for name, runner in self.accumulators.items():
            runner.on_delivered = self.observers.delivered_hook(name)  # observers attached
            await runner.start()
        for loop in self.reactors.values():
            loop.start()
        for source in self.sources:
            await source.start(self)
        self._supervise_parts()
        self.started_at = time.time()
        self._running = True
        log.info(
            "runtime started",
            graphs=sorted(self.graphs),
            reactors=sorted(self.reactors),
            accumulators=sorted(self.accumulators),
        )

    def _all_sinks(self) -> list[Sink]:
        return self.sinks + [s for sinks in self.graph_sinks.values() for s in sinks]

    async def stop(self, drain: bool = True, timeout: float | None = None) -> None:
        """Stop fetching, flush batches, finish (and with ``drain``, empty) reactors, wait
        for redeliveries (up to ``timeout`` seconds, default ``redelivery_timeout``), flush
        sinks, commit.

        Every step runs even when an earlier one failed (a dead part must not keep the
        others from draining, nor the sources from committing and leaving their group);
        the failures are raised together at the end as ``RuntimeStopError``.
        """
        if not self._running:
            return
        self._running = False
        self.supervisor.stopping = True
        problems: list[str] = []
        try:
            for source in self.sources:
                await self._step(problems, f"stopping source {_name_of(source)}", source.stop())
            for name, runner in self.accumulators.items():
                await self._step(problems, f"stopping accumulator {name!r}", runner.stop())
            for name, loop in self.reactors.items():
                await self._step(problems, f"stopping reactor {name!r}", loop.stop(drain=drain))
            wait = self.redelivery_timeout if timeout is None else timeout
            await self._step(problems, "waiting for redeliveries", self._settle(wait))
            sinks = {id(s): s for s in self._all_sinks()}.values()
            await asyncio.gather(  # at once: each sink's close bound adds nothing to another's
                *(self._step(problems, f"closing sink {_name_of(s)}", s.close()) for s in sinks)
            )
        finally:
            for source in self.sources:
                await self._step(problems, f"closing source {_name_of(source)}", source.close())
            self._stopped = True
        if problems:
            log.error("runtime stopped with errors", errors=problems)
            raise RuntimeStopError("; ".join(problems))
        log.info("runtime stopped")

    @staticmethod
    async def _step(problems: list[str], what: str, step: Awaitable[Any]) -> None:
        """Await one shutdown step; a failure is logged and noted, not raised."""
        try:
            await step
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the stop itself is cancelled (drain timeout): not a step failure
            problems.append(f"{what}: cancelled")
            log.error("shutdown step failed", step=what, error="cancelled")
        except Exception as error:
            problems.append(f"{what}: {describe(error)}")
            log.error("shutdown step failed", step=what, error=describe(error), exc_info=error)

    async def _settle(self, timeout: float) -> None:
        """Wait for every graph's pending redeliveries (results retried after a failed
        delivery, or dead-lettered) so their inputs are settled before the final commit."""
        pending = [task for runner in self.graphs.values() for task in runner.pending()]
        if not pending:
            return
        log.info("waiting for pending redeliveries", count=len(pending), timeout=timeout)
        _done, still = await asyncio.wait(pending, timeout=timeout)
        if still:
            for task in still:
                task.cancel()
            await asyncio.gather(*still, return_exceptions=True)
            raise TimeoutError(
                f"{len(still)} redeliveries still pending after {timeout} s: their inputs "
                "stay uncommitted and will be consumed again"
            )

    async def __aenter__(self) -> Runtime:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- run-time changes (packages) -------------------------------------------------------
    def _new_runner(self, spec: AccumulatorSpec) -> AccumulatorRunner:
        runner = make_runner(spec, [], self.clock)
        runner.on_delivered = self.observers.delivered_hook(spec.name)
        if isinstance(runner, BatchRunner):
            runner.on_batch_failure = self._dead_letter_batch
        return runner

    async def add_accumulator(self, spec: AccumulatorSpec) -> AccumulatorRunner:
        """Start an accumulator in the running runtime (no reactor watches it yet)."""
        if spec.name in self.accumulators:
            raise RuntimeConfigError(f"accumulator {spec.name!r} is already running")
        runner = self._new_runner(spec)
        await runner.start()
        self.accumulators[spec.name] = runner
        task = _task_of(runner)
        if task is not None:
            self.supervise(task, f"accumulator:{spec.name}")
        return runner

    def add_reactor(self, spec: ReactorSpec, graphs: Iterable[GraphRunner] = ()) -> ReactorLoop:
        """Start a reactor over running accumulators, firing ``graphs`` (more bind later)."""
        if spec.name in self.reactors:
            raise RuntimeConfigError(f"reactor {spec.name!r} is already running")
        missing = [a for a in spec.accumulators if a not in self.accumulators]
        if missing:
            raise RuntimeConfigError(
                f"reactor {spec.name!r} watches accumulators that are not running: {missing}"
            )
        channels = {
            name: Channel(name, self.channel_size or self.accumulators[name].spec.channel_size)
            for name in spec.accumulators
        }
        bound = BoundGraphs(graphs)
        loop = (KeyedReactorLoop if spec.keyed else ReactorLoop)(spec, channels, bound)
        for name, channel in channels.items():
            self.accumulators[name].channels.append(channel)
        self.bound[spec.name] = bound
        self.reactors[spec.name] = loop
        for runner in bound.runners:
            self.graphs[runner.name] = runner
        loop.start()
        task = _task_of(loop)
        if task is not None:
            self.supervisor.supervise(
                task, f"reactor:{spec.name}", explain=partial(_reactor_error, loop)
            )
        return loop

    def swap_graphs(
        self,
        reactor: str,
        remove: Iterable[str],
        add: Iterable[ComputationGraph],
        sinks: Mapping[str, Sequence[Sink]] | None = None,
    ) -> list[GraphRunner]:
        """In one step, unbind graphs ``remove`` from ``reactor`` and bind ``add``; returns
        the removed runners (their running fires finish: see ``drain_graphs``)."""
        if reactor not in self.bound:
            raise RuntimeConfigError(f"reactor {reactor!r} is not running")
        spec = self.reactors[reactor].spec
        added = []
        for graph in add:
            graph.check_reactor(spec)
            added.append(self._graph_runner(graph, (sinks or {}).get(graph.name, ())))
        removed = self.bound[reactor].replace(remove, added)
        for runner in removed:
            if self.graphs.get(runner.name) is runner:
                del self.graphs[runner.name]
        for runner in added:
            self.graphs[runner.name] = runner
        return removed

    async def drain_graphs(self, reactor: str, runners: Iterable[GraphRunner]) -> None:
        """Wait for the fires and redeliveries of removed ``runners`` to finish."""
        bound = self.bound.get(reactor)
        for runner in runners:
            if bound is not None:
                await bound.drained(runner.name)
            pending = runner.pending()
            if pending:
                await asyncio.wait(pending, timeout=self.redelivery_timeout)

    async def remove_reactor(self, name: str) -> None:
        """Drain and stop a reactor with no graphs left; detach its channels."""
        bound = self.bound.get(name)
        if bound is not None and bound.runners:
            raise RuntimeConfigError(f"reactor {name!r} still fires graphs {bound.names}")
        loop = self.reactors[name]
        task = _task_of(loop)
        if task is not None:
            self.supervisor.release(task)
        await loop.stop(drain=True)
        for acc, channel in loop.channels.items():
            runner = self.accumulators.get(acc)
            if runner is not None and channel in runner.channels:
                runner.channels.remove(channel)
        del self.reactors[name]
        self.bound.pop(name, None)

    async def remove_accumulator(self, name: str) -> None:
        """Stop an accumulator no running reactor watches."""
        users = [r for r, loop in self.reactors.items() if name in loop.spec.accumulators]
        if users:
            raise RuntimeConfigError(f"accumulator {name!r} is still watched by reactors {users}")
        runner = self.accumulators[name]
        task = _task_of(runner)
        if task is not None:
            self.supervisor.release(task)
        await runner.stop()
        del self.accumulators[name]

    # -- operations ----------------------------------------------------------------------
    def accumulator(self, name: str) -> AccumulatorRunner:
        try:
            return self.accumulators[name]
        except KeyError:
            known = ", ".join(sorted(self.accumulators)) or "none"
            raise KeyError(f"unknown accumulator {name!r} (running: {known})") from None

    async def push(self, name: str, event: Any, message_key: Any = None) -> None:
        """Push one event into an accumulator; waits while its channel is full.

        ``message_key`` plays the message's key for an accumulator with ``key="@message"``.
        """
        runner = self.accumulator(name)
        if runner.spec.kind is AccumulatorKind.POLLING:
            raise ValueError(
                f"accumulator {name!r} is a polling accumulator; it cannot be pushed to"
            )
        owner = next((s for s in self.sources if name in s.accumulators), None)
        if owner is not None:
            raise ValueError(
                f"accumulator {name!r} is fed by {type(owner).__name__}; push to passthrough "
                "accumulators instead"
            )
        if message_key is None:
            await runner.offer(event)
        else:
            await runner.offer(event, message_key=message_key)

    def _reactor_for(self, name: str) -> ReactorLoop:
        if name in self.reactors:
            return self.reactors[name]
        if name in self.graphs:
            return self.reactors[self.graphs[name].graph.reactor_name]
        raise KeyError(f"unknown graph or reactor {name!r}")

    def pause(self, name: str) -> None:
        """Pause the reactor (or the reactor of the graph) called ``name``."""
        self._reactor_for(name).pause()

    def resume(self, name: str) -> None:
        self._reactor_for(name).resume()

    async def wait_idle(self, timeout: float = 30.0, poll: float = 0.005) -> None:
        """Wait until no channel holds values, no batch buffers any, and no fire runs."""
        async with asyncio.timeout(timeout):
            while True:
                buffered = any(getattr(r, "buffered", 0) for r in self.accumulators.values())
                if not buffered and not any(loop.busy for loop in self.reactors.values()):
                    return
                await asyncio.sleep(poll)

    def failed(self) -> list[str]:
        return [name for name, loop in self.reactors.items() if loop.state.value == "failed"]

    def status(self) -> str:
        """``failed`` once a component failed, else ``running``/``stopping``/``stopped``."""
        if self.supervisor.failed:
            return "failed"
        if self._running:
            return "running"
        return "stopping" if self.supervisor.stopping and not self._stopped else "stopped"

    def ready(self) -> bool:
        """Running and no component failed: what ``/v1/health/ready`` reports."""
        return self._running and not self.supervisor.failed

    def health(self) -> dict[str, Any]:
        graphs = {}
        for name, runner in self.graphs.items():
            loop = self.reactors[runner.graph.reactor_name]
            graphs[name] = {
                **loop.health(),
                **runner.health(),
                "accumulators": {a: self.accumulators[a].health() for a in loop.spec.accumulators},
            }
        return {
            "status": self.status(),
            "failures": self.supervisor.health(),
            "graphs": graphs,
            "reactors": {name: loop.health() for name, loop in self.reactors.items()},
            "accumulators": {name: r.health() for name, r in self.accumulators.items()},
            "sources": [source.health() for source in self.sources],
        }


class RuntimeStopError(RuntimeError):
    """One or more shutdown steps failed; the others still ran."""


def _name_of(part: Any) -> str:
    name = getattr(part, "group_id", None) or getattr(part, "topic", None)
    return f"{type(part).__name__}({name})" if name else type(part).__name__


def _task_of(part: Any) -> asyncio.Task[Any] | None:
    """The long-lived task a part runs (its ``task`` or ``_task``), if any."""
    task = getattr(part, "task", None) or getattr(part, "_task", None)
    return task if isinstance(task, asyncio.Task) else None


def _reactor_error(loop: ReactorLoop) -> str | None:
    return f"reactor stopped after a failed fire: {loop.last_error}" if loop.last_error else None


__all__ = ["ComponentFailure", "GraphHalted", "Runtime", "RuntimeStopError", "Source"]
