"""Prometheus metrics for one runtime, in its own registry.

Counters the runtime reports through observer hooks (executions, node errors, latency,
dead letters) are kept here; everything the runtime already counts (events in, fires,
channel depth, paused, Kafka lag and commits) is read from ``health()`` at scrape time.

From each source's ``health()`` this reads, when present: ``name`` or ``type`` (the source
label), ``commits`` (int, successful commits); per partition: ``lag`` as
``{"topic[p]": lag}`` or ``{topic: {p: lag}}``, ``assigned`` and ``paused`` as lists of
``"topic[p]"``, or ``partitions``: a list of ``{"topic", "partition", "lag", "committed",
"commits", "paused"}``.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections import Counter as Tally
from collections.abc import Iterator, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any

import structlog
from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from headrace.connectors.dead_letters import DeadLetter
from headrace.engine.observers import ExecutionBatch, ExecutionRecord

if TYPE_CHECKING:
    from headrace.engine.runtime import Runtime
    from headrace.engine.store.state_store import StateStore

log = structlog.get_logger("headrace.metrics")

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

_TOPIC_PARTITION = re.compile(r"(.+)\[(\d+)\]")

LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)


def observe_many(histogram: Any, amounts: list[float]) -> None:
    """``histogram.observe(a)`` for each of ``amounts``, with one increment per bucket hit.

    prometheus_client observes one value at a time (a lock and a bucket scan each, ~0.6 µs,
    once per message in a batch); this finds each bucket with ``bisect`` and increments it
    once per batch. It uses the child's ``_upper_bounds``/``_buckets``/``_sum`` (stable
    since prometheus_client 0.4; tests/property/test_metrics_histogram.py compares it with
    ``observe``) and falls back to ``observe`` where they are missing."""
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None:
        for amount in amounts:
            histogram.observe(amount)
        return
    hits = Tally(map(partial(bisect_left, bounds), amounts))  # no Python frame per amount
    for index, count in hits.items():
        if index < len(buckets):  # NaN lands past +Inf, as observe() counts it nowhere
            buckets[index].inc(count)
    total.inc(sum(amounts))


class Metrics:
    """A runtime observer that renders Prometheus text. ``attach(runtime)`` before start."""

    def __init__(self, runtime: Runtime | None = None, *, store: StateStore | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.runtime: Runtime | None = None
        self.store = store
        self._commits: dict[tuple[str, str], float] = {}
        self._committed: dict[tuple[str, str], float] = {}
        self.executions = Counter(
            "headrace_executions",
            "Graph executions finished, by outcome.",
            ["graph", "status"],
            registry=self.registry,
        )
        self.node_errors = Counter(
            "headrace_node_errors",
            "Graph executions that failed for good, by the node that failed ('' outside nodes).",
            ["graph", "node"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "headrace_execution_duration_seconds",
            "Duration of graph executions including retries and sink delivery.",
            ["graph"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.dead_letters = Counter(
            "headrace_dead_letters",
            "Dead letters, by kind and source (accumulator, graph or topic).",
            ["kind", "source"],
            registry=self.registry,
        )
        self._counted: dict[tuple[str, str], Any] = {}
        self._timed: dict[str, Any] = {}
        self.registry.register(_RuntimeCollector(self))
        if runtime is not None:
            self.attach(runtime)

    def attach(self, runtime: Runtime) -> None:
        """Read gauges from ``runtime`` and observe it (adds itself to its observers)."""
        self.runtime = runtime
        if self not in runtime.observers.observers:
            runtime.observers.observers.append(self)

    # -- observer hooks ------------------------------------------------------------------
    def on_execution(self, record: ExecutionRecord) -> None:
        # Label children resolved once per graph/status (labels() costs a lock and a dict
        # per call; this runs once per message).
        graph, status = record.graph, record.status
        counted = self._counted.get((graph, status))
        if counted is None:
            counted = self._counted[(graph, status)] = self.executions.labels(graph, status)
        timed = self._timed.get(graph)
        if timed is None:
            timed = self._timed[graph] = self.latency.labels(graph)
        counted.inc()
        timed.observe(record.duration)
        if status != "ok":
            self.node_errors.labels(record.graph, record.node or "").inc()

    def on_executions(self, batch: ExecutionBatch) -> None:
        """A batch of successful executions: one counter increment, one observe each."""
        graph = batch.graph
        counted = self._counted.get((graph, "ok"))
        if counted is None:
            counted = self._counted[(graph, "ok")] = self.executions.labels(graph, "ok")
        timed = self._timed.get(graph)
        if timed is None:
            timed = self._timed[graph] = self.latency.labels(graph)
        counted.inc(len(batch.durations))
        observe_many(timed, batch.durations)

    def on_dead_letter(self, letter: DeadLetter) -> None:
        source = letter.accumulator or letter.graph or letter.topic or ""
        self.dead_letters.labels(letter.kind, source).inc()

    def on_commit(self, offsets: Mapping[tuple[str, int], int]) -> None:
        """Record one successful commit of ``{(topic, partition): next_offset}``."""
        for (topic, partition), offset in offsets.items():
            key = (topic, str(partition))
            self._commits[key] = self._commits.get(key, 0) + 1
            self._committed[key] = offset

    def render(self) -> bytes:
        """Everything in Prometheus text exposition format."""
        return generate_latest(self.registry)


class _RuntimeCollector(Collector):
    """Scrape-time values read from the runtime's and its sources' health."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        runtime = self.metrics.runtime
        if runtime is None:
            return
        yield from self._accumulators(runtime)
        yield from self._reactors(runtime)
        yield from self._sources(runtime)
        store = self.metrics.store
        if store is not None:
            health = store.health()
            dropped = CounterMetricFamily(
                "headrace_state_store_dropped_executions",
                "Execution records dropped because the state store's queue was full.",
            )
            dropped.add_metric([], health["dropped_executions"])
            yield dropped
            queued = GaugeMetricFamily(
                "headrace_state_store_queued", "Records waiting to be written to the state store."
            )
            queued.add_metric([], health["queued"])
            yield queued

    @staticmethod
    def _accumulators(runtime: Runtime) -> Iterator[Metric]:
        events = CounterMetricFamily(
            "headrace_events_in", "Events received by accumulators.", labels=["accumulator"]
        )
        delivered = CounterMetricFamily(
            "headrace_values_delivered",
            "Values accumulators delivered to reactors.",
            labels=["accumulator"],
        )
        errors = CounterMetricFamily(
            "headrace_accumulator_errors",
            "Events an accumulator rejected (invalid, or its function raised).",
            labels=["accumulator"],
        )
        depth = GaugeMetricFamily(
            "headrace_channel_depth",
            "Values waiting in the accumulator's fullest channel.",
            labels=["accumulator"],
        )
        capacity = GaugeMetricFamily(
            "headrace_channel_capacity",
            "Bound of the accumulator's channels.",
            labels=["accumulator"],
        )
        for name, runner in sorted(runtime.accumulators.items()):
            health = runner.health()
            events.add_metric([name], health["events_in"])
            delivered.add_metric([name], health["delivered"])
            errors.add_metric([name], health["errors"])
            depth.add_metric([name], health["channel_depth"])
            capacity.add_metric([name], health["channel_capacity"])
        yield from (events, delivered, errors, depth, capacity)

    @staticmethod
    def _reactors(runtime: Runtime) -> Iterator[Metric]:
        fires = CounterMetricFamily("headrace_fires", "Reactor fires.", labels=["reactor"])
        paused = GaugeMetricFamily(
            "headrace_paused", "1 when the reactor is paused.", labels=["reactor"]
        )
        failed = GaugeMetricFamily(
            "headrace_reactor_failed",
            "1 when the reactor stopped after a failure.",
            labels=["reactor"],
        )
        keys = GaugeMetricFamily(
            "headrace_reactor_keys", "Keys a keyed reactor keeps state for.", labels=["reactor"]
        )
        running = GaugeMetricFamily(
            "headrace_reactor_running_fires",
            "Fires of a keyed reactor running now.",
            labels=["reactor"],
        )
        oldest = GaugeMetricFamily(
            "headrace_reactor_oldest_pending_key_seconds",
            "How long the oldest value of a keyed reactor not taken by a fire has waited.",
            labels=["reactor"],
        )
        evictions = CounterMetricFamily(
            "headrace_reactor_key_evictions",
            "Idle keys a keyed reactor dropped (reason: max_keys or ttl).",
            labels=["reactor", "reason"],
        )
        restored = CounterMetricFamily(
            "headrace_reactor_restored_keys",
            "Keys a keyed reactor restored from its changelog (partitions assigned to it).",
            labels=["reactor"],
        )
        restore_seconds = GaugeMetricFamily(
            "headrace_reactor_last_restore_seconds",
            "How long the last restore of a changelog partition of a keyed reactor took.",
            labels=["reactor"],
        )
        for name, loop in sorted(runtime.reactors.items()):
            health = loop.health()
            fires.add_metric([name], health["fire_count"])
            paused.add_metric([name], 1 if health["paused"] else 0)
            failed.add_metric([name], 1 if health["state"] == "failed" else 0)
            if health.get("keyed"):
                keys.add_metric([name], health["keys"])
                running.add_metric([name], health["running_fires"])
                oldest.add_metric([name], health["oldest_pending_age"] or 0.0)
                for reason in ("max_keys", "ttl"):
                    evictions.add_metric([name, reason], health["evictions"].get(reason, 0))
                if health.get("changelog"):
                    restored.add_metric([name], health["restored_keys"])
                    restore_seconds.add_metric([name], health["last_restore_seconds"] or 0.0)
        yield from (fires, paused, failed, keys, running, oldest, evictions)
        yield from (restored, restore_seconds)

    def _sources(self, runtime: Runtime) -> Iterator[Metric]:
        lag = GaugeMetricFamily(
            "headrace_consumer_lag",
            "Messages behind the partition's end.",
            labels=["topic", "partition"],
        )
        committed = GaugeMetricFamily(
            "headrace_committed_offset",
            "Last committed (next) offset of the partition.",
            labels=["topic", "partition"],
        )
        partition_paused = GaugeMetricFamily(
            "headrace_partition_paused",
            "1 when fetching from the partition is paused (backpressure).",
            labels=["topic", "partition"],
        )
        source_commits = CounterMetricFamily(
            "headrace_source_commits", "Successful offset commits of a source.", labels=["source"]
        )
        commit_failures = CounterMetricFamily(
            "headrace_source_commit_failures",
            "Failed offset commits of a source.",
            labels=["source"],
        )
        commits = dict(self.metrics._commits)
        offsets = dict(self.metrics._committed)
        for index, source in enumerate(runtime.sources):
            try:
                health = source.health()
            except Exception as error:  # a scrape must not fail because a source's health does
                log.warning(
                    "source health failed; its metrics are left out of this scrape",
                    source=index,
                    error=repr(error),
                )
                continue
            label = str(health.get("name") or health.get("type") or f"source{index}")
            if isinstance(health.get("commits"), int | float):
                source_commits.add_metric([label], health["commits"])
            if isinstance(health.get("commit_failures"), int | float):
                commit_failures.add_metric([label], health["commit_failures"])
            for topic, partition, info in source_partitions(health):
                key = (topic, partition)
                if isinstance(info.get("lag"), int | float):
                    lag.add_metric([topic, partition], info["lag"])
                if isinstance(info.get("committed"), int | float):
                    offsets.setdefault(key, info["committed"])
                if isinstance(info.get("commits"), int | float):
                    commits[key] = max(commits.get(key, 0), info["commits"])
                if "paused" in info:
                    partition_paused.add_metric([topic, partition], 1 if info["paused"] else 0)
        commit_family = CounterMetricFamily(
            "headrace_commits", "Offset commits, by partition.", labels=["topic", "partition"]
        )
        for (topic, partition), count in sorted(commits.items()):
            commit_family.add_metric([topic, partition], count)
        for (topic, partition), offset in sorted(offsets.items()):
            committed.add_metric([topic, partition], offset)
        yield from (lag, committed, partition_paused, source_commits, commit_failures)
        yield commit_family
        yield from transaction_metrics(runtime)


def transaction_metrics(runtime: Runtime) -> Iterator[Metric]:
    """Exactly-once transactions (one coordinator per worker, seen through its sources)."""
    families = {
        "committed": CounterMetricFamily(
            "headrace_transactions_committed", "Kafka transactions committed.", labels=["id"]
        ),
        "aborted": CounterMetricFamily(
            "headrace_transactions_aborted", "Kafka transactions aborted.", labels=["id"]
        ),
        "last_duration": GaugeMetricFamily(
            "headrace_transaction_duration_seconds",
            "How long the last committed transaction was open.",
            labels=["id"],
        ),
        "last_records": GaugeMetricFamily(
            "headrace_transaction_records",
            "Records (outputs, dead letters, other writes) in the last committed transaction.",
            labels=["id"],
        ),
        "records_per_transaction": GaugeMetricFamily(
            "headrace_transaction_records_average",
            "Records per committed transaction, on average.",
            labels=["id"],
        ),
    }
    seen: set[str] = set()
    for source in runtime.sources:
        try:
            health = source.health().get("transactions")
        except Exception:
            continue  # logged by the source metrics of the same scrape
        if not isinstance(health, Mapping):
            continue
        name = str(health.get("producer", {}).get("transactional_id", "?"))
        if name in seen:
            continue
        seen.add(name)
        for key, family in families.items():
            if isinstance(health.get(key), int | float):
                family.add_metric([name], health[key])
    yield from families.values()


def source_partitions(health: Mapping[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """``(topic, partition, info)`` per partition, merged from the shapes health may use."""
    merged: dict[tuple[str, str], dict[str, Any]] = {}

    def at(topic: Any, partition: Any) -> dict[str, Any]:
        return merged.setdefault((str(topic), str(partition)), {})

    partitions = health.get("partitions")
    if isinstance(partitions, Mapping):
        partitions = list(partitions.values())
    if isinstance(partitions, list):
        for info in partitions:
            if isinstance(info, Mapping) and "topic" in info and "partition" in info:
                at(info["topic"], info["partition"]).update(info)
    lag = health.get("lag")
    if isinstance(lag, Mapping):
        for key, value in lag.items():
            if isinstance(value, Mapping):  # {topic: {partition: lag}}
                for partition, partition_lag in value.items():
                    at(key, partition)["lag"] = partition_lag
            elif (parsed := _topic_partition(key)) is not None:  # {"topic[partition]": lag}
                at(*parsed)["lag"] = value
    for key, paused in (("assigned", False), ("paused", True)):
        names = health.get(key)
        if isinstance(names, list | tuple | set | frozenset):
            for name in names:
                if (parsed := _topic_partition(name)) is not None:
                    at(*parsed)["paused"] = paused
    for (topic, partition), info in sorted(merged.items()):
        yield topic, partition, info


def _topic_partition(key: Any) -> tuple[str, str] | None:
    """``"topic[3]"`` -> ``("topic", "3")``."""
    match = _TOPIC_PARTITION.fullmatch(key) if isinstance(key, str) else None
    return (match[1], match[2]) if match else None


__all__ = ["CONTENT_TYPE", "Metrics", "source_partitions"]
