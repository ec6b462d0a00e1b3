"""Prometheus metrics read from a real in-process runtime."""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from headrace.connectors import DeadLetter
from headrace.engine import Runtime
from headrace.engine.observers import ExecutionRecord
from headrace.engine.ops.metrics import Metrics
from tests.unit.support import pipeline


class FakeSource:
    """A source that feeds nothing and reports Kafka-like health."""

    accumulators: frozenset[str] = frozenset()

    def __init__(self, health: dict[str, Any] | Exception) -> None:
        self._health = health

    async def start(self, runtime: Runtime) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def health(self) -> dict[str, Any]:
        if isinstance(self._health, Exception):
            raise self._health
        return self._health


def samples(text: bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """``{(sample name, labels): value}`` parsed from Prometheus text."""
    parsed = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            parsed[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return parsed


def value(parsed: dict, name: str, **labels: str) -> float:
    return parsed[(name, frozenset(labels.items()))]


async def test_counters_and_gauges_follow_the_runtime() -> None:
    def maybe_fail(a: int) -> int:
        if a < 0:
            raise ValueError("negative")
        return a

    graph = pipeline(["a"], maybe_fail, strategy="sequential")
    metrics = Metrics()
    source = FakeSource(
        {
            "name": "kafka",
            "commits": 7,
            "partitions": [
                {"topic": "t", "partition": 0, "lag": 12, "committed": 100, "paused": True},
                {"topic": "t", "partition": 1, "lag": 0, "committed": 5, "commits": 3},
            ],
        }
    )
    runtime = Runtime(graphs=[graph], sources=[source])
    metrics.attach(runtime)
    async with runtime:
        for event in (1, 2, -1):
            await runtime.push("a", event)
        await runtime.wait_idle()
        runtime.pause("g")
        await runtime.push("a", 3)
        await runtime.wait_idle()
        metrics.on_commit({("t", 0): 101, ("t", 2): 9})
        parsed = samples(metrics.render())
        runtime.resume("g")

    assert value(parsed, "headrace_events_in_total", accumulator="a") == 4
    assert value(parsed, "headrace_values_delivered_total", accumulator="a") == 4
    assert value(parsed, "headrace_fires_total", reactor="rx") == 3
    assert value(parsed, "headrace_executions_total", graph="g", status="ok") == 2
    assert value(parsed, "headrace_executions_total", graph="g", status="failed") == 1
    assert value(parsed, "headrace_node_errors_total", graph="g", node="run") == 1
    assert value(parsed, "headrace_execution_duration_seconds_count", graph="g") == 3
    assert value(parsed, "headrace_execution_duration_seconds_bucket", graph="g", le="+Inf") == 3
    assert value(parsed, "headrace_dead_letters_total", kind="execution", source="g") == 1
    assert value(parsed, "headrace_channel_depth", accumulator="a") == 1  # paused: waits
    assert value(parsed, "headrace_channel_capacity", accumulator="a") == 1024
    assert value(parsed, "headrace_paused", reactor="rx") == 1
    assert value(parsed, "headrace_reactor_failed", reactor="rx") == 0
    assert value(parsed, "headrace_consumer_lag", topic="t", partition="0") == 12
    assert value(parsed, "headrace_consumer_lag", topic="t", partition="1") == 0
    assert value(parsed, "headrace_partition_paused", topic="t", partition="0") == 1
    assert value(parsed, "headrace_source_commits_total", source="kafka") == 7
    # on_commit wins for offsets it reported; health fills the rest
    assert value(parsed, "headrace_committed_offset", topic="t", partition="0") == 101
    assert value(parsed, "headrace_committed_offset", topic="t", partition="1") == 5
    assert value(parsed, "headrace_committed_offset", topic="t", partition="2") == 9
    assert value(parsed, "headrace_commits_total", topic="t", partition="0") == 1
    assert value(parsed, "headrace_commits_total", topic="t", partition="1") == 3


def test_each_instance_has_its_own_registry_and_works_without_a_runtime() -> None:
    first, second = Metrics(), Metrics()
    record = ExecutionRecord("g", "rx", 1, 0.0, 0.02, "ok", 1)
    first.on_execution(record)
    first.on_execution(record)
    second.on_execution(record)
    second.on_dead_letter(DeadLetter(kind="message", reason="bad", payload=b"", topic="t"))
    one, two = samples(first.render()), samples(second.render())
    assert value(one, "headrace_executions_total", graph="g", status="ok") == 2
    assert value(two, "headrace_executions_total", graph="g", status="ok") == 1
    assert value(two, "headrace_dead_letters_total", kind="message", source="t") == 1
    assert value(one, "headrace_execution_duration_seconds_bucket", graph="g", le="0.025") == 2
    assert value(one, "headrace_execution_duration_seconds_bucket", graph="g", le="0.01") == 0
    assert not any(name == "headrace_fires_total" for name, _ in one)


async def test_a_failing_source_health_does_not_break_a_scrape() -> None:
    graph = pipeline(["a"])
    runtime = Runtime(graphs=[graph], sources=[FakeSource(RuntimeError("broker down"))])
    metrics = Metrics(runtime)
    assert runtime.observers.observers == [metrics]
    async with runtime:
        await runtime.push("a", 1)
        await runtime.wait_idle()
        parsed = samples(metrics.render())
    assert value(parsed, "headrace_fires_total", reactor="rx") == 1
    assert not any(name == "headrace_consumer_lag" for name, _ in parsed)


async def test_kafka_source_health_shape_is_understood() -> None:
    """The shape ``headrace.connectors.kafka.source.KafkaSource.health()`` reports."""
    graph = pipeline(["a"])
    kafka_like = {
        "type": "kafka",
        "assigned": ["orders[0]", "orders[1]", "odd[name][2]"],
        "paused": ["orders[1]"],
        "lag": {"orders[0]": 5, "orders[1]": 0, "odd[name][2]": 1},
        "commits": 4,
        "commit_failures": 1,
    }
    runtime = Runtime(graphs=[graph], sources=[FakeSource(kafka_like)])
    metrics = Metrics(runtime)
    async with runtime:
        parsed = samples(metrics.render())
    assert value(parsed, "headrace_consumer_lag", topic="orders", partition="0") == 5
    assert value(parsed, "headrace_consumer_lag", topic="odd[name]", partition="2") == 1
    assert value(parsed, "headrace_partition_paused", topic="orders", partition="0") == 0
    assert value(parsed, "headrace_partition_paused", topic="orders", partition="1") == 1
    assert value(parsed, "headrace_source_commits_total", source="kafka") == 4
    assert value(parsed, "headrace_source_commit_failures_total", source="kafka") == 1
