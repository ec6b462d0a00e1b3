"""KafkaSource hands a batch's messages one offset range per partition run, and reads
message keys only for accumulators that key by them (fake consumer, no broker)."""

from __future__ import annotations

import asyncio

import pytest

from headrace.accumulators import stream_accumulator
from headrace.connectors import MemorySink
from tests.unit.connectors.kafka.test_kafka_source import T0, T1, declare, on_thread, running
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
