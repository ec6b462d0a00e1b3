"""KafkaSource hands a batch's messages one offset range per partition run, and reads
message keys only for accumulators that key by them (fake consumer, no broker)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import structlog
from pydantic import BaseModel, field_validator

from headrace.accumulators import Channel, Envelope, stream_accumulator
from headrace.connectors import KafkaSource, MemorySink
from tests.unit.connectors.kafka.test_kafka_source import (
    T0,
    T1,
    SlowDeadLetters,
    declare,
    on_thread,
    running,
    running_with,
)
from tests.unit.kafka_fakes import FakeMessage
from tests.unit.support import Gate, declare_reactor, one_node_graph, wait_until


async def test_a_partition_run_of_a_batch_is_one_range_committed_after_its_last_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gate = Gate()
    declare(gate=gate)
    sink = MemorySink()
    async with running(monkeypatch, sink) as (_, source, consumer):
        try:
            await on_thread(source, consumer.rebalance, "on_assign", [T0, T1])
            consumer.add(T0, [{"i": i} for i in range(6)])
            await wait_until(lambda: source.stats["messages"] == 6, 10)
            state = source.tracker.partition(T0)
            assert [(w.first, w.last, w.count) for w in state._ranges] == [(0, 5, 6)]
            assert source.tracker.in_flight(T0) == 6
            gate.release(5)
            await wait_until(lambda: len(sink.results) == 5, 10)
            await asyncio.sleep(0.2)  # commit_interval 0.05: several commits were due
            committed = consumer.committed.get(T0)
            assert committed is None, f"committed {committed} inside a range still in flight"
            consumer.add(T1, [{"i": i} for i in range(3)])
            await wait_until(lambda: source.stats["messages"] == 9, 10)
            ranges = [(w.first, w.last, w.count) for w in source.tracker.partition(T1)._ranges]
            assert ranges == [(0, 2, 3)]
            gate.release(4)
            await wait_until(lambda: consumer.committed.get(T0) == 6, 10)
            await wait_until(lambda: consumer.committed.get(T1) == 3, 10)
            assert source.tracker.in_flight() == 0
        finally:
            gate.release(100)  # never leave the runtime's drain waiting on the gate


async def test_message_key_is_read_once_per_message_and_only_when_an_accumulator_keys_by_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reads: list[int] = []

    def key(message: FakeMessage) -> bytes:
        reads.append(message.offset())
        return b"k"

    monkeypatch.setattr(FakeMessage, "key", key)
    stream_accumulator(topic="t", name="plain")(lambda event: event)
    stream_accumulator(topic="u", name="by_key", key="@message")(lambda event: event)
    stream_accumulator(topic="u", name="also")(lambda event: event)
    declare_reactor("rx", ["plain"], strategy="sequential")
    declare_reactor("ry", ["by_key", "also"], strategy="sequential")

    one_node_graph("g", "rx", ["plain"], lambda plain: plain)
    one_node_graph("h", "ry", ["by_key", "also"], lambda by_key, also: by_key or also)
    sink = MemorySink()
    async with running(monkeypatch, sink) as (_, source, consumer):
        await on_thread(source, consumer.rebalance, "on_assign", [("t", 0), ("u", 0)])
        consumer.add(("t", 0), [{"i": i} for i in range(4)])
        await wait_until(lambda: len(sink.results) == 4, 10)
        assert reads == [], "no accumulator of topic t keys by the message key"
        consumer.add(("u", 0), [{"i": i} for i in range(3)])
        await wait_until(lambda: len(sink.results) == 10, 10)  # two accumulators: 2 fires each
        assert reads == [0, 1, 2], "read once per message, not once per accumulator"


# -- batched routes: a partition run goes to its one accumulator as one offer_many --------


class Order(BaseModel):
    i: int

    @field_validator("i")
    @classmethod
    def _explode(cls, i: int) -> int:
        if i == 7:  # not a ValueError: pydantic lets it through (a bug, not bad input)
            raise RuntimeError("validator exploded on 7")
        return i


def declare_picky(model: bool = False) -> None:
    """``picky``: raises for i % 4 == 1, filters i % 4 == 2, passes the rest."""

    def pick(event: Any) -> Any:
        i = event.i if model else event["i"]
        if i % 4 == 1:
            raise ValueError(f"odd one {i}")
        if i % 4 == 2:
            return None
        return {"i": i}

    def pick_order(event: Order) -> Any:
        return pick(event)

    stream_accumulator(topic="t", name="picky")(pick_order if model else pick)
    declare_reactor("rx", ["picky"], strategy="sequential")
    one_node_graph("g", "rx", ["picky"], lambda picky: picky)


def spy_runs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[tuple[str, int], list[int]]]:
    """The runs handed to ``_deliver_run``: their partition and the offsets in them."""
    runs: list[tuple[tuple[str, int], list[int]]] = []
    deliver_run = KafkaSource._deliver_run

    def spy(self: KafkaSource, route: Any, runner: Any, run: Any, acks: Any, tp: Any) -> None:
        runs.append((tp, [msg.offset() for msg in run.messages]))
        deliver_run(self, route, runner, run, acks, tp)

    monkeypatch.setattr(KafkaSource, "_deliver_run", spy)
    return runs


def outputs(sink: MemorySink) -> list[int]:
    return [out["run"]["i"] for out in sink.outputs("g")]


async def test_a_batched_run_dead_letters_its_refused_events_and_delivers_the_rest_in_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    declare_picky()
    runs = spy_runs(monkeypatch)
    letters, sink = SlowDeadLetters(), MemorySink()
    letters.open.set()
    async with running_with(monkeypatch, letters, sink) as (runtime, source, consumer):
        consumer.add(T0, [{"i": i} for i in range(12)])
        consumer.add(T1, [{"i": i} for i in range(100, 105)])
        # added before the assignment: the first fetch takes both partitions in one batch
        await on_thread(source, consumer.rebalance, "on_assign", [T0, T1])
        await wait_until(lambda: consumer.committed.get(T0) == 12, 10)
        await wait_until(lambda: consumer.committed.get(T1) == 5, 10)
        runner = runtime.accumulator("picky")
        counts = (runner.events_in, runner.delivered, runner.filtered, runner.errors)
    assert runs == [(T0, list(range(12))), (T1, list(range(5)))], "one offer_many per run"
    assert sorted((letter.partition, letter.offset) for letter in letters.letters) == [
        (0, 1),
        (0, 5),
        (0, 9),
        (1, 1),
    ]
    for letter in letters.letters:
        i = letter.offset if letter.partition == 0 else 100 + letter.offset
        assert letter.topic == "t" and letter.accumulator == "picky"
        assert letter.kind == "message"
        assert "function raised" in letter.reason and f"odd one {i}" in letter.reason
        assert json.loads(letter.payload) == {"i": i}
    assert outputs(sink) == [0, 3, 4, 7, 8, 11, 100, 103, 104]  # none of the filtered ones
    assert counts == (17, 9, 4, 4)


async def test_an_unexpected_error_in_a_batched_run_is_logged_and_dead_lettered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    declare_picky(model=True)
    letters, sink = SlowDeadLetters(), MemorySink()
    letters.open.set()
    with structlog.testing.capture_logs() as entries:
        async with running_with(monkeypatch, letters, sink) as (runtime, source, consumer):
            consumer.add(T0, [{"i": i} for i in range(10)])
            await on_thread(source, consumer.rebalance, "on_assign", [T0])
            await wait_until(lambda: consumer.committed.get(T0) == 10, 10)
            assert runtime.failures == {}
    by_offset = {letter.offset: letter for letter in letters.letters}
    assert sorted(by_offset) == [1, 5, 7, 9]
    assert by_offset[7].reason == "unexpected error: RuntimeError('validator exploded on 7')"
    assert by_offset[7].accumulator == "picky"
    assert "function raised" in by_offset[1].reason and by_offset[1].accumulator == "picky"
    logged = [e for e in entries if e["event"] == "unexpected error handling a message"]
    assert [(e["topic"], e["partition"], e["offset"]) for e in logged] == [("t", 0, 7)]
    assert outputs(sink) == [0, 3, 4, 8]


async def test_a_batched_route_under_backpressure_delivers_every_message_once_in_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gate = Gate()
    declare(channel_size=4, gate=gate)
    runs = spy_runs(monkeypatch)
    sink = MemorySink()
    async with running(monkeypatch, sink) as (runtime, source, consumer):
        try:
            channel = runtime.reactors["rx"].channels["s"]
            consumer.add(T0, [{"i": i} for i in range(50)])
            await on_thread(source, consumer.rebalance, "on_assign", [T0])
            await wait_until(lambda: T0 in consumer.paused, 10)
            assert channel.high_water == 4, "the channel filled up before the pause"
            await asyncio.sleep(0.05)
            assert len(sink.results) == 0 and source.stats["messages"] < 50
            for _ in range(50):  # one at a time: the partition pauses and resumes
                gate.release(1)
                await asyncio.sleep(0.002)
            await wait_until(lambda: consumer.committed.get(T0) == 50, 10)
            assert runtime.failures == {}
        finally:
            gate.release(100)
    assert [out["run"]["i"] for out in sink.outputs("g")] == list(range(50))
    assert channel.high_water == 4
    assert source.stats["pauses"] >= 1 and source.stats["resumes"] >= 1
    delivered = [offset for _, offsets in runs for offset in offsets]
    assert delivered == list(range(50)), "every offset in exactly one run, in order"
    assert max(len(offsets) for _, offsets in runs) <= 4, "no run is bigger than the channel"
    assert any(len(offsets) > 1 for _, offsets in runs)


async def test_a_run_cut_short_by_the_dead_letter_budget_resumes_from_its_next_offset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Dead letters going over budget mid-batch leave the run no room: the run ends there,
    the partition pauses at the next offset and is fetched from there again, once."""
    declare()
    runs = spy_runs(monkeypatch)
    letters, sink = SlowDeadLetters(), MemorySink()
    options = {"max_dead_letters_in_flight": 2}
    values: list[Any] = [{"i": 0}, b"not json", {"i": 2}, b"not json", *range(4, 20)]
    async with running_with(monkeypatch, letters, sink, **options) as (_, source, consumer):
        consumer.add(T0, [{"i": v} if isinstance(v, int) else v for v in values])
        await on_thread(source, consumer.rebalance, "on_assign", [T0])
        await wait_until(lambda: T0 in consumer.paused, 10)
        await wait_until(lambda: len(sink.results) == 2, 10)
        assert runs[0] == (T0, [0, 2]), "the run ends where the budget ran out"
        await asyncio.sleep(0.1)
        assert outputs(sink) == [0, 2]
        letters.open.set()
        await wait_until(lambda: consumer.committed.get(T0) == 20, 10)
    assert sorted(letter.offset for letter in letters.letters) == [1, 3]
    assert outputs(sink) == [0, 2, *range(4, 20)]
    assert [offset for _, offsets in runs for offset in offsets] == [0, 2, *range(4, 20)]


async def test_a_failing_put_many_fails_the_worker_and_commits_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    declare()
    calls: list[int] = []

    def put_many(self: Channel, envelopes: list[Envelope]) -> None:
        calls.append(len(envelopes))
        raise RuntimeError("put_many broke")

    monkeypatch.setattr(Channel, "put_many", put_many)
    sink = MemorySink()
    with structlog.testing.capture_logs() as entries:
        async with running(monkeypatch, sink, revoke_timeout=0.2) as (runtime, source, consumer):
            consumer.add(T0, [{"i": i} for i in range(6)])
            await on_thread(source, consumer.rebalance, "on_assign", [T0])
            await wait_until(lambda: "kafka-source" in runtime.failures, 10)
            assert "put_many broke" in runtime.failures["kafka-source"].reason
            assert runtime.status() == "failed"
            await asyncio.sleep(0.1)  # commit_interval 0.05: a commit would have been due
            assert consumer.committed.get(T0) in (None, 0)
    assert calls == [6]
    assert consumer.committed.get(T0) in (None, 0), "the failed run's offsets stay uncommitted"
    assert sink.results == []
    assert any(e["event"] == "kafka fetch loop failed" for e in entries)
