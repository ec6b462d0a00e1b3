"""A reactor batch's results reported as one group: ``ReportGroup`` with fake reports, and
the Kafka sink's grouped path end to end over a fake confluent-kafka client (the real
``KafkaSink``, ``DeliveryProducer`` and ``GraphRunner``; only the client is scripted).
Real-broker proofs: tests/integration/test_kafka_sink.py and the fault tests."""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from typing import Any

import orjson
import pytest
from confluent_kafka import KafkaError, KafkaException
from hypothesis import given, settings
from hypothesis import strategies as st

from headrace.connectors import MemoryDeadLetters, MemorySink
from headrace.connectors.kafka import producer as producer_module
from headrace.connectors.kafka.deliveries import Deliveries, ReportGroup
from headrace.connectors.kafka.sink import KafkaSink
from headrace.engine import Runtime
from tests.unit.support import pipeline, wait_until


class Msg:
    """What confluent-kafka hands ``on_delivery``: the message's value and key."""

    def __init__(self, value: bytes | None, key: bytes | None = None) -> None:
        self._value, self._key = value, key

    def value(self) -> bytes | None:
        return self._value

    def key(self) -> bytes | None:
        return self._key


class Outcome:
    def __init__(self) -> None:
        self.calls: list[tuple[list[Any], list[tuple[Any, BaseException]]]] = []

    def __call__(self, delivered: list[Any], failed: list[tuple[Any, BaseException]]) -> None:
        self.calls.append((delivered, failed))


def opened(max_in_flight: int = 1000) -> Deliveries:
    deliveries = Deliveries("test", max_in_flight)
    deliveries.open(asyncio.new_event_loop())
    return deliveries


def produce(group: ReportGroup, deliveries: Deliveries, value: bytes, key: Any, token: Any) -> None:
    """What ``DeliveryProducer.produce_grouped`` records once the client took a message."""
    group.values.append(value)
    group.keys.append(key)
    group.tokens.append(token)
    deliveries.sent()


def report(group: ReportGroup, deliveries: Deliveries, error: Any, msg: Msg) -> None:
    """A report served inside the loop's own poll."""
    deliveries.polling_on_loop = True
    try:
        group.report(error, msg)
    finally:
        deliveries.polling_on_loop = False


def test_a_sealed_group_reports_once_when_its_last_report_is_in() -> None:
    deliveries, done = opened(), Outcome()
    group = ReportGroup(deliveries, done)
    for n in range(3):
        produce(group, deliveries, b"v%d" % n, None, f"t{n}")
    report(group, deliveries, None, Msg(b"v1"))
    group.seal()
    report(group, deliveries, None, Msg(b"v0"))
    # each report leaves in_flight at once; delivered moves when the group is done
    assert done.calls == [] and (deliveries.in_flight, deliveries.delivered) == (1, 0)
    report(group, deliveries, None, Msg(b"v2"))
    assert done.calls == [(["t0", "t1", "t2"], [])]
    assert (deliveries.in_flight, deliveries.delivered, deliveries.failed) == (0, 3, 0)


def test_a_group_whose_reports_came_before_the_seal_reports_at_the_seal() -> None:
    deliveries, done = opened(), Outcome()
    group = ReportGroup(deliveries, done)
    produce(group, deliveries, b"v", None, "t")
    report(group, deliveries, None, Msg(b"v"))
    assert done.calls == []
    group.seal()
    assert done.calls == [(["t"], [])] and deliveries.idle.is_set()


def test_an_empty_group_reports_nothing_delivered_at_the_seal() -> None:
    deliveries, done = opened(), Outcome()
    ReportGroup(deliveries, done).seal()
    assert done.calls == [([], [])] and deliveries.in_flight == 0


def test_a_failed_report_is_matched_to_its_token_by_value_and_key() -> None:
    deliveries, done = opened(), Outcome()
    group = ReportGroup(deliveries, done)
    produce(group, deliveries, b"same", "k1", "first")
    produce(group, deliveries, b"same", "k2", "second")
    produce(group, deliveries, b"other", None, "third")
    group.seal()
    timed_out = KafkaError(KafkaError._MSG_TIMED_OUT, "timed out")
    report(group, deliveries, None, Msg(b"other"))
    report(group, deliveries, timed_out, Msg(b"same", b"k2"))
    report(group, deliveries, None, Msg(b"same", b"k1"))
    ((delivered, failed),) = done.calls
    assert delivered == ["first", "third"]
    ((token, error),) = failed
    assert token == "second" and isinstance(error, KafkaException)
    assert error.args[0].code() == KafkaError._MSG_TIMED_OUT
    assert (deliveries.in_flight, deliveries.delivered, deliveries.failed) == (0, 2, 1)


def test_reports_from_a_flush_on_another_thread_are_counted_on_the_loop() -> None:
    loop = asyncio.new_event_loop()
    deliveries, done = Deliveries("test", 10), Outcome()
    deliveries.open(loop)
    group = ReportGroup(deliveries, done)
    produce(group, deliveries, b"v", None, "t")
    group.seal()
    flusher = threading.Thread(target=group.report, args=(None, Msg(b"v")))
    flusher.start()
    flusher.join()
    assert done.calls == []  # not counted on the flushing thread
    loop.run_until_complete(asyncio.sleep(0.01))
    loop.close()
    assert done.calls == [(["t"], [])] and deliveries.in_flight == 0


@settings(max_examples=200, deadline=None)
@given(
    data=st.data(),
    values=st.lists(st.sampled_from([b"a", b"b", b"c"]), min_size=0, max_size=12),
)
def test_every_token_comes_back_exactly_once_whatever_the_order_and_failures(
    data: st.DataObject, values: list[bytes]
) -> None:
    """Property: in any report order, with any subset failing and the seal anywhere, the
    group reports once; delivered and failed tokens are exactly the produced ones, and a
    failed token's message has the failed report's value."""
    deliveries, done = opened(), Outcome()
    group = ReportGroup(deliveries, done)
    for token, value in enumerate(values):
        produce(group, deliveries, value, None, token)
    failing = data.draw(st.sets(st.sampled_from(range(len(values))))) if values else set()
    order = data.draw(st.permutations(range(len(values))))
    seal_at = data.draw(st.integers(0, len(values)))
    error = KafkaError(KafkaError.INVALID_RECORD, "bad")
    for step, index in enumerate(order):
        if step == seal_at:
            group.seal()
        report(group, deliveries, error if index in failing else None, Msg(values[index]))
    if seal_at == len(values):
        group.seal()
    assert len(done.calls) == 1
    delivered, failed = done.calls[0]
    assert sorted([*delivered, *(token for token, _ in failed)]) == list(range(len(values)))
    assert collections.Counter(values[t] for t, _ in failed) == collections.Counter(
        values[i] for i in failing
    )
    assert deliveries.in_flight == 0
    assert (deliveries.delivered, deliveries.failed) == (len(values) - len(failing), len(failing))


# -- the grouped path of the Kafka sink, over a scripted client ------------------------------


class ScriptedClient:
    """Stands in for confluent_kafka.Producer: ``poll`` reports what was produced, failing
    the values listed in ``failures`` (one error per produce of that value)."""

    failures: dict[bytes, list[KafkaError]] = {}
    delivered: list[bytes] = []
    grouped = 0

    def __init__(self, config: dict[str, Any]) -> None:
        self._pending: list[tuple[Any, bytes]] = []

    def produce(
        self,
        topic: str,
        value: bytes | None = None,
        key: Any = None,
        partition: int = -1,
        callback: Any = None,
        on_delivery: Any = None,
        timestamp: int = 0,
        headers: Any = None,
    ) -> None:
        callback = callback or on_delivery
        ScriptedClient.grouped += isinstance(getattr(callback, "__self__", None), ReportGroup)
        assert value is not None
        self._pending.append((callback, value))

    def poll(self, timeout: float = 0) -> int:
        pending, self._pending = self._pending, []
        for callback, value in pending:
            errors = ScriptedClient.failures.get(value)
            error = errors.pop(0) if errors else None
            if error is None:
                ScriptedClient.delivered.append(value)
            callback(error, Msg(value))
        return len(pending)

    def flush(self, timeout: float = 0) -> int:
        return self.poll()

    def __len__(self) -> int:
        return len(self._pending)


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch) -> type[ScriptedClient]:
    monkeypatch.setattr(producer_module, "Producer", ScriptedClient)
    ScriptedClient.failures, ScriptedClient.delivered, ScriptedClient.grouped = {}, [], 0
    return ScriptedClient


def out(run: int) -> bytes:
    return orjson.dumps({"run": run})


async def run_values(values: list[int], letters: MemoryDeadLetters) -> tuple[list[int], KafkaSink]:
    sink = KafkaSink("127.0.0.1:9", "out", close_timeout=1.0)
    settled: list[int] = []
    async with Runtime(graphs=["g"], sinks=[sink], dead_letters=letters) as runtime:
        runtime.pause("g")  # the values queue up, then fire as one batch
        for value in values:
            await runtime.accumulator("a").offer(value, acks=(lambda v=value: settled.append(v),))
        runtime.resume("g")
        await wait_until(lambda: len(settled) == len(values), timeout=10)
        await runtime.wait_idle()
    return settled, sink


async def test_a_batch_is_produced_as_one_group_and_settles_once_delivered(client) -> None:
    pipeline(["a"], lambda a: a, strategy="sequential")
    settled, sink = await run_values(list(range(20)), MemoryDeadLetters())
    assert sorted(settled) == list(range(20)) and len(settled) == 20  # each exactly once
    assert client.delivered == [out(n) for n in range(20)]
    assert client.grouped == 20  # every result went through a group's report
    assert sink.producer.delivered == 20 and sink.producer.in_flight == 0


async def test_a_grouped_result_that_timed_out_is_sent_again_before_its_input_settles(
    client,
) -> None:
    pipeline(["a"], lambda a: a, strategy="sequential", retry_attempts=1, retry_backoff=0.001)
    client.failures = {out(3): [KafkaError(KafkaError._MSG_TIMED_OUT, "timed out")] * 2}
    letters = MemoryDeadLetters()
    settled, _ = await run_values(list(range(6)), letters)
    assert sorted(settled) == list(range(6)) and len(settled) == 6
    assert settled[-1] == 3  # held until its result was durable
    assert sorted(client.delivered) == sorted(out(n) for n in range(6))
    assert letters.letters == []


async def test_a_grouped_result_failing_for_good_is_dead_lettered_with_its_inputs(client) -> None:
    pipeline(["a"], lambda a: a, strategy="sequential", retry_attempts=2, retry_backoff=0.001)
    client.failures = {out(2): [KafkaError(KafkaError.INVALID_RECORD, "bad record")] * 2}
    letters = MemoryDeadLetters()
    settled, _ = await run_values(list(range(5)), letters)
    assert sorted(settled) == list(range(5))
    assert client.delivered == [out(n) for n in (0, 1, 3, 4)]
    (letter,) = letters.letters
    assert letter.kind == "execution" and letter.payload == {"a": 2}
    assert "INVALID_RECORD" in letter.reason


async def test_a_fatal_error_at_grouped_produce_fails_the_sink_and_settles_nothing(
    client, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline(["a"], lambda a: a, strategy="sequential")

    def fenced(self: ScriptedClient, *args: Any, **kwargs: Any) -> None:
        raise KafkaException(KafkaError(KafkaError._FENCED, "fenced", fatal=True))

    monkeypatch.setattr(ScriptedClient, "produce", fenced)
    sink = KafkaSink("127.0.0.1:9", "out", close_timeout=0.5)
    settled: list[int] = []
    letters = MemoryDeadLetters()
    async with Runtime(graphs=["g"], sinks=[sink], dead_letters=letters) as runtime:
        await runtime.accumulator("a").offer(1, acks=(lambda: settled.append(1),))
        await wait_until(lambda: "reactor:rx" in runtime.failures)
        failures = set(runtime.failures)
    assert failures == {"sink:KafkaSink(out)", "reactor:rx"}
    assert settled == [] and letters.letters == []


async def run_batch(
    values: list[int], letters: MemoryDeadLetters, **sink_options: Any
) -> tuple[list[int], KafkaSink, int]:
    """``run_values`` that also returns the graph's execution count (a stall fails it)."""
    sink = KafkaSink("127.0.0.1:9", "out", close_timeout=1.0, **sink_options)
    settled: list[int] = []
    async with asyncio.timeout(30):
        async with Runtime(graphs=["g"], sinks=[sink], dead_letters=letters) as runtime:
            runtime.pause("g")
            for value in values:
                await runtime.accumulator("a").offer(
                    value, acks=(lambda v=value: settled.append(v),)
                )
            runtime.resume("g")
            await wait_until(lambda: len(settled) == len(values), timeout=10)
            await runtime.wait_idle()
            executions = runtime.graphs["g"].executions
    return settled, sink, executions


async def test_results_keep_fire_order_around_a_graph_that_fails_once(client) -> None:
    """The run before a failing fire goes to the sink before its retry, the rest after."""
    failed: list[int] = []

    def flaky(a: int) -> int:
        if a == 3 and not failed:
            failed.append(a)
            raise ValueError("flaky")
        return a

    pipeline(["a"], flaky, strategy="sequential", retry_attempts=2, retry_backoff=0.001)
    settled, _, executions = await run_batch(list(range(8)), MemoryDeadLetters())
    assert failed == [3]
    assert sorted(settled) == list(range(8)) and len(settled) == 8
    assert client.delivered == [out(n) for n in range(8)]
    assert executions == 8  # each fire counted once, the retried one included


async def test_a_result_that_cannot_be_encoded_is_dead_lettered_and_the_rest_delivered(
    client,
) -> None:
    pipeline(
        ["a"],
        lambda a: object() if a == 2 else a,
        strategy="sequential",
        retry_attempts=2,
        retry_backoff=0.001,
    )
    letters = MemoryDeadLetters()
    settled, _, executions = await run_batch(list(range(6)), letters)
    assert sorted(settled) == list(range(6)) and len(settled) == 6
    assert client.delivered == [out(n) for n in (0, 1, 3, 4, 5)]
    (letter,) = letters.letters
    assert letter.kind == "execution" and letter.payload == {"a": 2}
    assert "not JSON serializable" in letter.reason
    assert executions == 6


async def test_a_batch_larger_than_max_in_flight_is_sent_in_order_without_a_stall(
    client,
) -> None:
    """A group alone can fill the producer: each report frees room at once, so the results
    the producer refused are sent (waiting for room) instead of waiting for the seal."""
    pipeline(["a"], lambda a: a, strategy="sequential")
    settled, sink, executions = await run_batch(
        list(range(25)), MemoryDeadLetters(), max_in_flight=4
    )
    assert sorted(settled) == list(range(25)) and len(settled) == 25
    assert client.delivered == [out(n) for n in range(25)]
    assert sink.producer.in_flight == 0 and sink.producer.delivered == 25
    assert executions == 25


async def test_a_slow_graphs_results_go_out_during_its_batch_not_at_its_end(client) -> None:
    """A sync graph taking 3 ms per fire: its results reach the producer every
    ``MAX_RUN_AGE`` (2 ms), so the batch's last fire runs after most were produced."""
    produced_before: list[int] = []

    def slow(a: int) -> int:
        produced_before.append(ScriptedClient.grouped)
        time.sleep(0.003)
        return a

    pipeline(["a"], slow, strategy="sequential")
    settled, _, executions = await run_batch(list(range(10)), MemoryDeadLetters())
    assert sorted(settled) == list(range(10)) and executions == 10
    assert client.delivered == [out(n) for n in range(10)]
    assert produced_before[-1] >= 7, produced_before  # at the end of the batch it was 0


async def test_a_kafka_sink_beside_another_sink_groups_per_fire_and_both_get_every_result(
    client,
) -> None:
    """Two sinks: results go to each fire's sinks in turn (``_run_each``); the Kafka sink's
    still form the batch's group, and an input settles once both have its result."""
    pipeline(["a"], lambda a: a, strategy="sequential")
    sink, memory = KafkaSink("127.0.0.1:9", "out", close_timeout=1.0), MemorySink()
    settled: list[int] = []
    async with asyncio.timeout(30):
        async with Runtime(graphs=["g"], sinks=[sink, memory]) as runtime:
            runtime.pause("g")
            for value in range(12):
                await runtime.accumulator("a").offer(
                    value, acks=(lambda v=value: settled.append(v),)
                )
            runtime.resume("g")
            await wait_until(lambda: len(settled) == 12, timeout=10)
            await runtime.wait_idle()
            executions = runtime.graphs["g"].executions
    assert sorted(settled) == list(range(12)) and len(settled) == 12
    assert client.delivered == [out(n) for n in range(12)]
    assert client.grouped == 12
    assert [o["run"] for o in memory.outputs("g")] == list(range(12))
    assert executions == 12
