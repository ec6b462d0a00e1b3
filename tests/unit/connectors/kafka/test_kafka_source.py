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

from headrace.accumulators import batch_accumulator, stream_accumulator
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


# -- memory bounds (issue 7 item 5) -------------------------------------------------------


class SlowDeadLetters:
    """A dead-letter destination that holds every letter until ``open`` is set."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.sending = 0
        self.most_sending = 0
        self.letters: list[Any] = []

    async def send(self, letter: Any) -> None:
        self.sending += 1
        self.most_sending = max(self.most_sending, self.sending)
        try:
            await self.open.wait()
            self.letters.append(letter)
        finally:
            self.sending -= 1


@asynccontextmanager
async def running_with(
    monkeypatch: pytest.MonkeyPatch, dead_letters: Any, sink: MemorySink, **options: Any
) -> AsyncIterator[tuple[Runtime, KafkaSource, FakeConsumer]]:
    consumers = install(monkeypatch)
    source = KafkaSource(
        "fake:9092", "g1", commit_interval=0.05, poll_timeout=0.01, pause_after=0.01, **options
    )
    runtime = Runtime(sources=[source], sinks=[sink], dead_letters=dead_letters)
    async with runtime:
        try:
            yield runtime, source, consumers[0]
        finally:  # a failed check must not leave the shutdown waiting for held letters
            if isinstance(dead_letters, SlowDeadLetters):
                dead_letters.open.set()


async def test_dead_letters_in_flight_are_bounded_by_count(monkeypatch: pytest.MonkeyPatch) -> None:
    declare()
    letters, sink = SlowDeadLetters(), MemorySink()
    options = {"max_dead_letters_in_flight": 5}
    async with running_with(monkeypatch, letters, sink, **options) as (_, source, consumer):
        await on_thread(source, consumer.rebalance, "on_assign", [T0])
        consumer.add(T0, [b"not json"] * 50)
        await wait_until(lambda: T0 in consumer.paused, 10)
        await asyncio.sleep(0.2)  # it stays paused while the destination is slow
        assert letters.most_sending == 5
        assert source.health()["dead_letters_in_flight"] == 5
        letters.open.set()
        await wait_until(lambda: len(letters.letters) == 50, 10)
        await wait_until(lambda: consumer.committed.get(T0) == 50, 10)
    assert sorted(letter.offset for letter in letters.letters) == list(range(50))
    assert letters.most_sending <= 5


async def test_dead_letters_in_flight_are_bounded_by_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    declare()
    letters, sink = SlowDeadLetters(), MemorySink()
    options = {"max_dead_letter_bytes": 10_000}
    async with running_with(monkeypatch, letters, sink, **options) as (_, source, consumer):
        await on_thread(source, consumer.rebalance, "on_assign", [T0])
        consumer.add(T0, [b"x" * 2_000] * 40)  # not JSON: 40 dead letters of 2 KB
        await wait_until(lambda: T0 in consumer.paused, 10)
        await asyncio.sleep(0.2)
        assert source.health()["dead_letter_bytes_in_flight"] == 10_000
        letters.open.set()
        await wait_until(lambda: consumer.committed.get(T0) == 40, 10)
    assert len(letters.letters) == 40
    assert letters.most_sending == 5


async def test_offsets_in_flight_behind_a_stuck_head_are_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    declare()
    letters, sink = SlowDeadLetters(), MemorySink()
    options = {"max_in_flight_per_partition": 20}
    async with running_with(monkeypatch, letters, sink, **options) as (_, source, consumer):
        await on_thread(source, consumer.rebalance, "on_assign", [T0])
        # offset 0 is poison and its dead letter hangs: a head that does not move
        consumer.add(T0, [b"not json", *({"i": i} for i in range(1, 200))])
        await wait_until(lambda: T0 in consumer.paused, 10)
        await asyncio.sleep(0.2)
        assert source.tracker.in_flight(T0) == 20
        assert len(sink.results) == 19
        letters.open.set()
        await wait_until(lambda: consumer.committed.get(T0) == 200, 10)
    assert sorted(out["run"]["i"] for _, out in sink.results) == list(range(1, 200))
    assert [letter.offset for letter in letters.letters] == [0]


async def test_batch_events_held_are_bounded_not_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    gate = Gate()

    @batch_accumulator(topic="t", flush_interval="5ms", max_buffer_size=10)
    def b(events: list[Any]) -> Any:
        return [e["i"] for e in events]

    declare_reactor("rx", ["b"], strategy="sequential")

    async def run(b: Any) -> Any:
        await gate.wait()
        return b

    one_node_graph("g", "rx", ["b"], run)
    sink = MemorySink()
    options = {"max_batch_events": 50}
    async with running_with(monkeypatch, None, sink, **options) as (runtime, source, consumer):
        runner = runtime.accumulator("b")
        try:
            await on_thread(source, consumer.rebalance, "on_assign", [T0])
            consumer.add(T0, [{"i": i} for i in range(300)])
            most = 0
            for _ in range(300):  # sample for ~0.3 s while the graph holds every batch
                most = max(most, runner.held)
                await asyncio.sleep(0.001)
            assert T0 in consumer.paused
            assert 40 <= most <= 50, most  # the channel alone would hold 1024 batches
        finally:
            gate.release(1000)
        await wait_until(lambda: consumer.committed.get(T0) == 300, 10)
    assert sorted(i for _, out in sink.results for i in out["run"]) == list(range(300))


def test_the_worker_config_exposes_the_same_bounds_as_the_source() -> None:
    from headrace.connectors.kafka import source as module
    from headrace.engine.config.schema import WorkerConfig

    worker = WorkerConfig()
    assert worker.max_in_flight_per_partition == module.DEFAULT_MAX_IN_FLIGHT_PER_PARTITION
    assert worker.max_batch_events == module.DEFAULT_MAX_BATCH_EVENTS
    assert worker.max_dead_letters_in_flight == module.DEFAULT_MAX_DEAD_LETTERS_IN_FLIGHT
    assert worker.max_dead_letter_bytes == module.DEFAULT_MAX_DEAD_LETTER_BYTES


@pytest.mark.parametrize("name", ["max_in_flight_per_partition", "max_batch_events"])
def test_a_bound_below_one_is_refused_with_its_name(name: str) -> None:
    with pytest.raises(ValueError, match=name):
        KafkaSource("fake:9092", "g1", **{name: 0})


async def test_the_depth_limit_holds_with_and_without_the_bracket_shortcut(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Depth 64 passes, 65 is dead-lettered naming the accumulator and the limit; brackets
    inside strings (more than 64, so the walk runs) do not make a flat event too deep. The
    depth-64 document is 128 bytes (short enough to skip the count: at most 2 * 64 + 1), the
    depth-65 one 130 (counted), so an off-by-one in either shortcut fails here."""
    declare()
    letters, sink = SlowDeadLetters(), MemorySink()
    letters.open.set()
    deep_ok = json.dumps(json.loads("[" * 63 + "{}" + "]" * 63)).encode()
    too_deep = json.dumps(json.loads("[" * 64 + "{}" + "]" * 64)).encode()
    flat = json.dumps({"text": "[{" * 100}).encode()
    async with running_with(monkeypatch, letters, sink) as (_, source, consumer):
        await on_thread(source, consumer.rebalance, "on_assign", [T0])
        consumer.add(T0, [deep_ok, too_deep, flat])
        await wait_until(lambda: consumer.committed.get(T0) == 3, 10)
    assert [letter.offset for letter in letters.letters] == [1]
    assert "nested more than 64 levels" in letters.letters[0].reason
    assert letters.letters[0].accumulator == "s"
    assert [out["run"] for out in sink.outputs("g")] == [json.loads(deep_ok), json.loads(flat)]


def test_the_fetcher_backs_off_briefly_when_the_prefetch_queue_is_full() -> None:
    """librdkafka's 1000 ms backoff idled a consumer that drained its queue faster than
    that; the source's default is short, and a user's consumer_config still wins."""
    assert KafkaSource("b:9092", "g").config["fetch.queue.backoff.ms"] == 20
    chosen = KafkaSource("b:9092", "g", consumer_config={"fetch.queue.backoff.ms": 500})
    assert chosen.config["fetch.queue.backoff.ms"] == 500


class _Refused(Exception):
    """Raised by the recording consumer below once it has its settings."""


def test_changelog_restores_and_global_tables_read_ahead_like_sources(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Both read a topic from its start, the backlog case the long backoff idled."""
    from headrace.connectors.kafka import changelog, global_table

    seen: list[dict[str, Any]] = []

    def recording(config: dict[str, Any]) -> Any:
        seen.append(config)
        raise _Refused

    monkeypatch.setattr(changelog, "Consumer", recording)
    monkeypatch.setattr(global_table, "Consumer", recording)
    with pytest.raises(_Refused):
        changelog.read_partition("b:9092", "t.changelog", 0)
    with pytest.raises(_Refused):
        changelog.read_partition("b:9092", "t.changelog", 0, config={"fetch.queue.backoff.ms": 7})
    with pytest.raises(_Refused):
        global_table.GlobalTables("b:9092")._open()
    assert [c["fetch.queue.backoff.ms"] for c in seen] == [20, 7, 20]
