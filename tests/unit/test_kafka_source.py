"""KafkaSource against a fake consumer: logging, closing, flow control (no broker)."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import structlog
from confluent_kafka import KafkaError, KafkaException

from headrace.accumulators import stream_accumulator
from headrace.connectors import KafkaSource, MemorySink
from headrace.engine import Runtime
from tests.unit.kafka_fakes import FakeConsumer, install
from tests.unit.support import Gate, declare_reactor, one_node_graph, wait_until

T0, T1 = ("t", 0), ("t", 1)


def declare(channel_size: int = 1024, gate: Gate | None = None) -> None:
    """Topic ``t`` -> stream accumulator ``s`` -> reactor -> a graph returning the event."""
    stream_accumulator(topic="t", name="s", channel_size=channel_size)(lambda event: event)
    declare_reactor("rx", ["s"], strategy="sequential")

    async def run(s: Any) -> Any:
        if gate is not None:
            await gate.wait()
        return s

    one_node_graph("g", "rx", ["s"], run)


@asynccontextmanager
async def running(
    monkeypatch: pytest.MonkeyPatch, sink: MemorySink | None = None, **options: Any
) -> AsyncIterator[tuple[Runtime, KafkaSource, FakeConsumer]]:
    consumers = install(monkeypatch)
    source = KafkaSource("fake:9092", "g1", commit_interval=0.05, poll_timeout=0.01, **options)
    runtime = Runtime(sources=[source], sinks=[sink or MemorySink()])
    async with runtime:
        yield runtime, source, consumers[0]


async def on_thread(source: KafkaSource, fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn`` on the source's consumer thread (where librdkafka runs callbacks)."""
    return await source._call(fn, *args)


def assert_json_safe(entries: list[dict[str, Any]]) -> None:
    for entry in entries:
        json.dumps(entry)  # raises on tuple keys and other non-JSON fields


async def test_rebalance_and_commit_logs_are_json_safe_and_close_survives_illegal_generation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    declare()
    sink = MemorySink()
    with structlog.testing.capture_logs() as entries:
        async with running(monkeypatch, sink) as (_, source, consumer):
            await on_thread(source, consumer.rebalance, "on_assign", [T0, T1])
            consumer.add(T0, [{"i": i} for i in range(5)])
            await wait_until(lambda: len(sink.results) == 5, 10)
            await wait_until(lambda: consumer.committed.get(T0) == 5, 10)
            await on_thread(source, consumer.rebalance, "on_revoke", [T1])
            consumer.add(T0, [{"i": 5}])
            await wait_until(lambda: len(sink.results) == 6, 10)
            # SIGTERM during a rebalance: the final commit fails with ILLEGAL_GENERATION
            consumer.commit_error = KafkaError(KafkaError.ILLEGAL_GENERATION)
    assert ("close", None) in consumer.calls, "the consumer must leave the group"
    assert consumer.closed
    warnings = [e for e in entries if e["event"] == "commit failed"]
    assert warnings and "ILLEGAL_GENERATION" in warnings[0]["error"]
    assert_json_safe(entries)
    revoked = [e for e in entries if e["event"] == "partitions revoked"]
    assert revoked[0]["partitions"] == ["t[1]"]


def component_failure(runtime: Runtime, component: str) -> str | None:
    failure = runtime.failures.get(component)
    return None if failure is None else failure.reason


@pytest.mark.parametrize(
    "error",
    [TypeError("keys must be str, int, float, bool or None, not tuple"), RuntimeError("closed")],
)
async def test_a_fetch_loop_that_dies_fails_the_worker_with_its_cause(
    monkeypatch: pytest.MonkeyPatch, error: BaseException
) -> None:
    declare()
    with structlog.testing.capture_logs() as entries:
        async with running(monkeypatch) as (runtime, source, consumer):
            await on_thread(source, consumer.rebalance, "on_assign", [T0])
            consumer.poll_raises = error  # e.g. a log call inside a rebalance callback
            await wait_until(lambda: "kafka-source" in runtime.failures, 10)
            assert type(error).__name__ in (component_failure(runtime, "kafka-source") or "")
            assert runtime.status() == "failed"
    assert any(e["event"] == "kafka fetch loop failed" for e in entries)


async def test_a_fatal_consumer_error_fails_the_consumer(monkeypatch: pytest.MonkeyPatch) -> None:
    declare()
    async with running(monkeypatch) as (runtime, source, _):
        fenced = KafkaError(KafkaError._FENCED, "fenced", fatal=True)
        await on_thread(source, source.config["error_cb"], fenced)
        await wait_until(lambda: "kafka-consumer" in runtime.failures, 10)
        assert "fenced" in (component_failure(runtime, "kafka-consumer") or "")


async def test_a_fatal_error_in_a_poll_result_fails_the_consumer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    declare()
    async with running(monkeypatch) as (runtime, source, consumer):
        await on_thread(source, consumer.rebalance, "on_assign", [T0])
        consumer.poll_error = KafkaError(KafkaError._FATAL, "producer fenced", fatal=True)
        await wait_until(lambda: "kafka-consumer" in runtime.failures, 10)


async def test_a_non_fatal_consume_error_is_retried_not_fatal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    declare()
    sink = MemorySink()
    async with running(monkeypatch, sink) as (runtime, source, consumer):
        await on_thread(source, consumer.rebalance, "on_assign", [T0])
        consumer.poll_error = KafkaError(KafkaError._TRANSPORT, "broker down")
        consumer.add(T0, [{"i": 1}])
        await wait_until(lambda: len(sink.results) == 1, 10)
        assert runtime.failures == {}
        assert source.stats["errors"] == 1


async def test_a_resume_that_raises_keeps_the_partition_paused_and_is_retried(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    declare()
    sink = MemorySink()
    async with running(monkeypatch, sink) as (runtime, source, consumer):
        await on_thread(source, consumer.rebalance, "on_assign", [T0])
        failures = {"left": 2}

        def assignment_fails_in_resume() -> None:
            # consumer.assignment() is called outside the resume's try block
            if sys._getframe(2).f_code.co_name == "_resume" and failures["left"] > 0:
                failures["left"] -= 1
                raise KafkaException(KafkaError(KafkaError._STATE, "not now"))

        consumer.assignment_hook = assignment_fails_in_resume
        source._pause(T0, None)
        await wait_until(lambda: failures["left"] == 0, 10)
        consumer.add(T0, [{"i": i} for i in range(3)])
        await wait_until(lambda: len(sink.results) == 3, 10)
        assert T0 not in consumer.paused
        assert runtime.failures == {}


async def test_a_seek_that_fails_during_a_concurrent_resume_is_retried_not_lost(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 7 item 8: the partition must not resume past messages it never took."""
    gate = Gate()
    declare(channel_size=2, gate=gate)
    sink = MemorySink()
    seeking, release = threading.Event(), threading.Event()
    seeks: list[int] = []

    def first_seek_blocks_then_fails(tp: tuple[str, int], offset: int) -> None:
        seeks.append(offset)
        if len(seeks) == 1:
            seeking.set()
            release.wait(10)
            raise KafkaException(KafkaError(KafkaError._STATE, "seek refused"))

    async with running(monkeypatch, sink) as (_, source, consumer):
        try:
            consumer.seek_hook = first_seek_blocks_then_fails
            await on_thread(source, consumer.rebalance, "on_assign", [T0])
            consumer.add(T0, [{"i": i} for i in range(10)])
            # the reactor holds one value at the gate, the channel two: the source pauses
            await wait_until(lambda: T0 in consumer.paused, 10)
            taken = source.tracker.partition(T0).last_begun + 1
            assert 0 < taken < 10
            # librdkafka fetched ahead before the pause: rewind to the first offset not taken
            consumer.positions[T0] = 10
            source._pause(T0, taken)
            await wait_until(seeking.is_set, 10)
            gate.release(1)  # the reactor takes one more value: room enough to resume
            await asyncio.sleep(0.05)
            source._try_resume()  # a resume racing the seek on the consumer thread
            await asyncio.sleep(0.05)
            release.set()  # ... and the seek fails
            gate.release(100)
            await wait_until(lambda: len(sink.results) == 10, 10)
        finally:
            release.set()
            gate.release(1000)
    assert sorted(out["run"]["i"] for _, out in sink.results) == list(range(10))
    assert seeks[:2] == [taken, taken]


async def test_a_paused_partition_revoked_and_assigned_back_consumes_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 7 item 1, against a fake that keeps the pause flag across unassign like
    librdkafka (#1849); the real-broker test is in tests/integration/test_kafka_group.py."""
    declare()
    sink = MemorySink()
    async with running(monkeypatch, sink) as (_, source, consumer):
        await on_thread(source, consumer.rebalance, "on_assign", [T0, T1])
        source._pause(T0, None)
        await wait_until(lambda: T0 in consumer.paused, 10)
        await on_thread(source, consumer.rebalance, "on_revoke", [T0])
        assert T0 not in consumer.paused, "resume before unassigning"
        consumer.paused.add(T0)  # as if the flag had survived anyway
        await on_thread(source, consumer.rebalance, "on_assign", [T0])
        consumer.add(T0, [{"i": i} for i in range(3)])
        await wait_until(lambda: len(sink.results) == 3, 10)
        assert ("resume", [T0]) in consumer.calls
