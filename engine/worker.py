"""The long-running worker: a ``Runtime`` wired from loaded config files, run until a signal.

``Worker(config).run()`` opens the state store, starts the HTTP operations API, starts the
runtime (Kafka sources per consumer group, sinks, dead letters), restores the last values of
polling and passthrough accumulators, and waits. On SIGTERM or SIGINT it drains: stop
fetching, finish running graphs, flush sinks, commit, leave the group; then it exits 0. A
second signal exits at once with 128 + the signal number. A graph that halts
(``on_error = "stop"``) makes the worker drain and exit 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

import structlog

from headrace.connectors.dead_letters import (
    DeadLetter,
    DeadLetterSink,
    FanOutDeadLetters,
    MemoryDeadLetters,
)
from headrace.connectors.sinks import CallbackSink, LogSink, Sink, StoreSink
from headrace.engine import early_signals
from headrace.engine.config.loader import LoadedConfig, resolve_ref
from headrace.engine.config.schema import SinkConfig, reveal
from headrace.engine.runtime import Runtime, Source
from headrace.engine.supervision import ComponentFailure

GC_THRESHOLDS = (50_000, 20, 100)
"""Cyclic GC thresholds of a running worker (CPython's 700 made gen-0 collections ~8% of
the event loop's CPU: every message allocates a few containers, few of them cycles)."""

log = structlog.get_logger("headrace.worker")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2


class WorkerError(RuntimeError):
    """The worker could not start or stopped on a failure (exit code 1)."""


class Worker:
    """Builds every part from a ``LoadedConfig``; ``await run()`` returns the exit code."""

    def __init__(
        self,
        config: LoadedConfig,
        *,
        install_signals: bool = True,
        packages_dir: str | None = None,
    ) -> None:
        self.config = config
        self.packages_dir = packages_dir
        self.packages: Any = None
        self.install_signals = install_signals
        self.runtime: Runtime | None = None
        self.store: Any = None
        self.metrics: Any = None
        self.http: Any = None
        self.sources: list[Source] = []
        self.sinks: dict[str, Sink] = {}
        self.kafka_dead_letters: Any = None
        self.transactions: Any = None
        self._stop = asyncio.Event()
        self._signals = 0
        self.exit_code = EXIT_OK

    # -- building ------------------------------------------------------------------------
    def _kafka_settings(self) -> dict[str, Any]:
        worker = self.config.worker
        if not worker.bootstrap_servers:
            raise WorkerError("worker.bootstrap_servers is not set")
        return {"bootstrap_servers": worker.bootstrap_servers}

    def build_sink(self, name: str, cfg: SinkConfig) -> Sink:
        worker = self.config.worker
        if cfg.type == "kafka":
            from headrace.connectors.kafka.sink import KafkaSink

            producer = {**worker.producer_config(), **reveal(cfg.producer)}
            options: dict[str, Any] = {
                "producer_config": producer or None,
                "close_timeout": self.close_timeout,
            }
            if cfg.key is not None:
                options["key"] = cfg.key
            sink = KafkaSink(self._kafka_settings()["bootstrap_servers"], cfg.topic, **options)
            sink.on_fatal = self._fatal_reporter(f"sink:{name}")
            return sink
        if cfg.type == "log":
            return LogSink()
        if cfg.type == "callback":
            target, reason = resolve_ref(cfg.function or "")
            if reason is not None or not callable(target):
                raise WorkerError(f"sink {name!r}: {reason or 'function is not callable'}")
            return CallbackSink(target)
        if cfg.type == "state_store":
            if self.store is None:
                raise WorkerError(
                    f"sink {name!r}: a state_store sink needs worker.state_store enabled"
                )
            return StoreSink(self.store)
        raise WorkerError(f"sink {name!r}: unknown type {cfg.type!r}")

    def build_dead_letters(self) -> DeadLetterSink:
        worker = self.config.worker
        destinations: list[DeadLetterSink] = []
        if worker.dead_letters.kafka and worker.bootstrap_servers and self.config.needs_kafka:
            from headrace.connectors.kafka.dead_letters import KafkaDeadLetters

            self.kafka_dead_letters = KafkaDeadLetters(
                worker.bootstrap_servers,
                topic_suffix=worker.dead_letters.topic_suffix,
                execution_topic=worker.dead_letters.execution_topic,
                producer_config=worker.producer_config() or None,
                close_timeout=self.close_timeout,
            )
            self.kafka_dead_letters.on_fatal = self._fatal_reporter("dead-letters:kafka")
            destinations.append(self.kafka_dead_letters)
        if worker.dead_letters.state_store and self.store is not None:
            destinations.append(self.store)
        if not destinations:
            return MemoryDeadLetters()  # logs each letter itself
        # Each letter goes to every destination; one that fails falls back to the others.
        return LoggedDeadLetters(FanOutDeadLetters(*destinations))

    @property
    def close_timeout(self) -> float:
        """How long a producer's close waits for deliveries: a fifth of ``drain_timeout``,
        so the final commit after it always fits in the drain."""
        return max(0.5, self.config.worker.drain_timeout / 5)

    def _fatal_reporter(self, component: str) -> Callable[[Any], None]:
        def report(error: Any) -> None:
            if self.runtime is not None:
                self.runtime.fail(component, f"fatal Kafka error: {error}")

        return report

    def build_sources(self) -> list[Source]:
        groups = self.config.kafka_groups()
        if not groups:
            return []
        return [self.build_source(group, names) for group, names in groups.items()]

    def build_source(self, group: str, names: list[str]) -> Source:
        """The Kafka source of consumer group ``group`` feeding accumulators ``names``."""
        from headrace.connectors.kafka.source import KafkaSource

        worker = self.config.worker
        eos: dict[str, Any] = {}
        if worker.guarantee == "exactly_once":
            from headrace.engine.transactions import build_coordinator

            if self.transactions is None:  # one transactional producer per worker (KIP-447)
                self.transactions = build_coordinator(self.config)
            eos = {"guarantee": "exactly_once", "transactions": self.transactions}
        return KafkaSource(
            self._kafka_settings()["bootstrap_servers"],
            group,
            accumulators=names,
            consumer_config=worker.consumer_config() or None,
            commit_interval=worker.commit_interval,
            batch_size=worker.batch_size,
            max_in_flight_per_partition=worker.max_in_flight_per_partition,
            max_batch_events=worker.max_batch_events,
            max_dead_letters_in_flight=worker.max_dead_letters_in_flight,
            max_dead_letter_bytes=worker.max_dead_letter_bytes,
            **eos,
        )

    def build(self) -> Runtime:
        """Create the store, metrics, sinks, dead letters, sources and the runtime."""
        from headrace.engine.ops.metrics import Metrics

        cfg = self.config
        worker = cfg.worker
        if worker.state_store.enabled:
            from headrace.engine.store.state_store import StateStore

            self.store = StateStore(
                worker.state_store.url,
                retention_executions=worker.state_store.retention_executions,
                retention_dead_letters=worker.state_store.retention_dead_letters,
                retention_results=worker.state_store.retention_results,
                prune_interval=worker.state_store.prune_interval,
                limits=worker.limits.value_limits(),
            )
        self.metrics = Metrics(store=self.store)
        used = {name for names in cfg.graph_sinks.values() for name in names}
        self.sinks = {name: self.build_sink(name, cfg.sinks[name]) for name in sorted(used)}
        self.sources = self.build_sources()
        dead_letters = self.build_dead_letters()
        runtime = Runtime(
            graphs=list(cfg.graphs),
            accumulators=list(cfg.accumulators.values()),
            graph_sinks={g: [self.sinks[s] for s in names] for g, names in cfg.graph_sinks.items()},
            dead_letters=dead_letters,
            sources=self.sources,
            observers=[self.metrics],
            channel_size=worker.channel_size,
            guarantee=worker.guarantee,  # exactly_once: Kafka sinks, dead letters join
        )
        self.metrics.attach(runtime)
        if self.store is not None:
            self.store.attach(runtime)
        self.runtime = runtime
        if worker.packages.enabled:
            from pathlib import Path

            from headrace.engine.packages.worker import WorkerPackages

            directory = Path(self.packages_dir) if self.packages_dir else None
            self.packages = WorkerPackages(self, directory)
        return runtime

    def build_http(self) -> Any:
        if self.runtime is None:
            return None
        from headrace.engine.ops.http import build_http_server

        service = self.packages.service if self.packages is not None else None
        return build_http_server(
            self.runtime, self.config, metrics=self.metrics, store=self.store, packages=service
        )

    # -- signals -------------------------------------------------------------------------
    def request_stop(self, signum: int | None = None, reason: str = "signal") -> None:
        """First call: drain and stop. Second signal: exit at once, non-zero."""
        if signum is not None:
            self._signals += 1
            name = signal.Signals(signum).name
            if self._signals > 1:
                log.error("second signal: exiting without draining", signal=name)
                with contextlib.suppress(Exception):
                    sys.stdout.flush()
                    sys.stderr.flush()
                os._exit(128 + signum)
            log.info("draining: stop fetching, finish running graphs, flush, commit", signal=name)
        else:
            log.info("stopping", reason=reason)
        self._stop.set()

    def _install_signals(self) -> Callable[[], None]:
        loop = asyncio.get_running_loop()
        installed = []
        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(signum, self.request_stop, signum)
                installed.append(signum)
            except (NotImplementedError, RuntimeError):  # not the main thread
                pass
        early = early_signals.take() if installed else None
        if early is not None:  # arrived while the config loaded or the worker was built
            self.request_stop(early)

        def remove() -> None:
            for signum in installed:
                with contextlib.suppress(Exception):
                    loop.remove_signal_handler(signum)

        return remove

    # -- running ---------------------------------------------------------------------------
    def _on_failure(self, failure: ComponentFailure) -> None:
        """A supervised component failed: drain what can be drained, then exit 1."""
        self.exit_code = EXIT_FAILURE
        if self._stop.is_set():
            return
        if self.runtime is not None and self.runtime.failed():
            self._halted()
        else:
            log.error(
                "stopping the worker: a component failed",
                component=failure.component,
                reason=failure.reason,
            )
        self._stop.set()

    def _halted(self) -> None:
        assert self.runtime is not None
        failed = self.runtime.failed()
        errors = {name: self.runtime.reactors[name].last_error for name in failed}
        log.error("graph halted: stopping the worker", reactors=failed, errors=errors)

    def _threads(self) -> dict[str, Callable[[], bool]]:
        """Background threads that must stay alive while the worker runs, by component."""
        threads: dict[str, Callable[[], bool]] = {}
        writer = getattr(self.store, "_thread", None)
        if writer is not None:
            threads["state-store-writer"] = writer.is_alive
        parts = [(f"sink:{name}", sink) for name, sink in self.sinks.items()]
        parts.append(("dead-letters:kafka", self.kafka_dead_letters))
        for component, part in parts:
            producer = getattr(part, "producer", None)
            if producer is not None and hasattr(producer, "poll_thread_alive"):
                threads[component] = producer.poll_thread_alive
        return threads

    async def _watch(self, interval: float = 0.2) -> None:
        """Stop the worker when a graph halts (``on_error = "stop"``) or a thread died.

        Supervised tasks and reported failures stop it at once through ``_on_failure``.
        """
        assert self.runtime is not None
        while not self._stop.is_set():
            if self.runtime.failed():
                self._halted()
                self.exit_code = EXIT_FAILURE
                self._stop.set()
                return
            for component, alive in self._threads().items():
                if not alive():
                    self.runtime.fail(component, "background thread died")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), interval)

    async def start(self) -> None:
        """Open the store, start HTTP and the runtime, restore stored values."""
        runtime = self.runtime or self.build()
        runtime.add_failure_listener(self._on_failure)
        if self.store is not None:
            await asyncio.to_thread(self.store.open)
        self.http = self.build_http()
        if self.http is not None:
            await self.http.start()
            task = getattr(self.http, "_task", None)
            if task is not None:
                runtime.supervise(task, "http-api")
        await runtime.start()
        if self.packages is not None:
            await self.packages.start()
        if self.store is not None:
            restored = await self.store.restore_into(runtime)
            if restored:
                log.info("restored accumulator values", accumulators=restored)
        log.info(
            "worker ready",
            config=self.config.files,
            graphs=sorted(runtime.graphs),
            reactors=sorted(runtime.reactors),
            accumulators=sorted(runtime.accumulators),
            consumer_groups=self.config.kafka_groups(),
            http=self.http.url if self.http is not None else None,
            state_store=self.store.display_url if self.store is not None else None,
            packages=self.packages.health() if self.packages is not None else None,
        )
        gc.freeze()  # startup objects (modules, config, wiring) are never garbage: skip them
        gc.set_threshold(*GC_THRESHOLDS)  # per-message containers: collect gen 0 less often

    async def shutdown(self) -> None:
        """Drain the runtime (bounded by ``drain_timeout``), then stop HTTP and the store."""
        timeout = self.config.worker.drain_timeout
        if self.runtime is not None:
            self.runtime.supervisor.stopping = True  # parts ending from here on are stopping
            try:
                await asyncio.wait_for(self.runtime.stop(drain=True, timeout=timeout / 3), timeout)
            except TimeoutError:
                log.error("drain did not finish in time", drain_timeout=timeout)
                self.exit_code = EXIT_FAILURE
            except Exception:
                log.exception("drain failed")
                self.exit_code = EXIT_FAILURE
        if self.packages is not None:
            await self.packages.close()
        if self.kafka_dead_letters is not None:
            try:
                await self.kafka_dead_letters.close()
            except Exception:
                log.exception("flushing Kafka dead letters failed")
                self.exit_code = EXIT_FAILURE
        if self.transactions is not None:  # closed by its last source; after a failed start,
            try:  # here (an open transaction is aborted: its inputs were not committed)
                await self.transactions.close()
            except Exception:
                log.exception("closing the Kafka transactions failed")
                self.exit_code = EXIT_FAILURE
        if self.http is not None:
            try:
                await self.http.stop()
            except Exception:
                log.exception("stopping the HTTP server failed")
        if self.store is not None:
            try:
                await asyncio.to_thread(self.store.close)
            except Exception:
                log.exception("closing the state store failed")
                self.exit_code = EXIT_FAILURE

    async def run(self) -> int:
        """Start, wait for a signal or a halted graph, drain; return the exit code."""
        remove = self._install_signals() if self.install_signals else (lambda: None)
        try:
            if self._stop.is_set():  # a signal came while the config loaded: nothing started
                log.info("worker stopped before it started", exit_code=self.exit_code)
                return self.exit_code
            try:
                await self.start()
            except Exception as error:
                log.error("worker failed to start", error=f"{type(error).__name__}: {error}")
                self.exit_code = EXIT_FAILURE
                await self.shutdown()
                return self.exit_code
            if not self._stop.is_set():
                await self._watch()
            await self.shutdown()
            log.info("worker stopped", exit_code=self.exit_code)
            return self.exit_code
        finally:
            remove()


class LoggedDeadLetters:
    """Logs every dead letter (where it came from and why, never its payload), then sends it."""

    def __init__(self, inner: DeadLetterSink) -> None:
        self.inner = inner

    async def send(self, letter: DeadLetter) -> None:
        log.warning(
            "dead letter",
            kind=letter.kind,
            reason=letter.reason,
            **{
                key: value
                for key in ("graph", "node", "accumulator", "topic", "partition", "offset")
                if (value := getattr(letter, key)) is not None
            },
        )
        await self.inner.send(letter)


def run_worker(config: LoadedConfig, packages_dir: str | None = None) -> int:
    """Run a worker in a new event loop; returns the process exit code."""
    return asyncio.run(Worker(config, packages_dir=packages_dir).run())


__all__ = ["EXIT_CONFIG", "EXIT_FAILURE", "EXIT_OK", "Worker", "WorkerError", "run_worker"]
