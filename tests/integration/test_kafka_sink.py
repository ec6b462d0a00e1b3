"""KafkaSink and KafkaDeadLetters against a real broker: durable before the input is done."""

from __future__ import annotations

import asyncio
import socket
import uuid

import orjson
import pytest

from headrace.accumulators import passthrough_accumulator
from headrace.connectors import DeadLetter, KafkaDeadLetters, KafkaSink, MemoryDeadLetters
from headrace.engine import ComputationGraphBuilder, Runtime, node
from headrace.engine.runtime import RuntimeStopError
from headrace.reactors import reactor
from tests.fixtures.kafka_broker import consume_all, create_topic, unique_topic

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(60)]


def declare(name: str) -> None:
    @passthrough_accumulator(name=f"{name}_in")
    def incoming(event: dict) -> dict:
        return event

    @reactor(name=f"{name}_rx", accumulators=[f"{name}_in"], strategy="sequential")
    class Rx:
        pass

    with ComputationGraphBuilder(
        name,
        reactor=f"{name}_rx",
        graph={"double": {"inputs": [f"{name}_in"]}},
        retry_attempts=2,
        retry_backoff="10ms",
    ):

        @node(name="double")
        def double(**inputs: dict) -> dict:
            event = inputs[f"{name}_in"]
            return {"id": event["id"], "twice": event["n"] * 2}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_results_are_durable_before_inputs_settle(kafka_bootstrap: str) -> None:
    topic = create_topic(kafka_bootstrap, unique_topic("sink"), partitions=2)
    declare("sink_ok")
    sink = KafkaSink(kafka_bootstrap, topic, key="double.id")
    settled: list[tuple[int, int]] = []  # (input, results confirmed when it settled)

    def ack(i: int) -> None:
        settled.append((i, sink.producer.delivered))

    async with Runtime(graphs=["sink_ok"], sinks=[sink]) as runtime:
        runner = runtime.accumulators["sink_ok_in"]
        for i in range(200):
            await runner.offer({"id": i, "n": i}, (lambda i=i: ack(i),))
        await runtime.wait_idle()
        for _ in range(200):
            if len(settled) == 200:
                break
            await asyncio.sleep(0.02)
        assert sorted(i for i, _ in settled) == list(range(200))
        # Each input settled only after its result was confirmed by the broker.
        assert all(confirmed >= n for n, (_, confirmed) in enumerate(settled, 1))
        assert sink.producer.in_flight == 0
        await sink.send("manual", {"double": {"id": -1, "twice": 0}})
    records = await asyncio.to_thread(consume_all, kafka_bootstrap, topic, 201, 30)
    values = sorted(orjson.loads(v)["double"]["id"] for _, v, _, _ in records)
    assert values == [-1, *range(200)]
    assert {k for k, _, _, _ in records} == {str(i).encode() for i in range(-1, 200)}


async def test_results_are_held_not_dead_lettered_while_the_broker_never_answers() -> None:
    """A broker that never answers: deliveries time out (_MSG_TIMED_OUT) and are sent again;
    the inputs stay unsettled (their offsets uncommitted) and nothing is dead-lettered."""
    declare("sink_down")
    sink = KafkaSink(
        f"127.0.0.1:{free_port()}",
        "nowhere",
        producer_config={"message.timeout.ms": 300, "log_level": 0},
        close_timeout=0.5,
    )
    dead_letters = MemoryDeadLetters()
    settled: list[int] = []
    runtime = Runtime(graphs=["sink_down"], sinks=[sink], dead_letters=dead_letters)
    await runtime.start()
    runner = runtime.accumulators["sink_down_in"]
    for i in range(3):
        await runner.offer({"id": i, "n": i}, (lambda i=i: settled.append(i),))
    graph = runtime.graphs["sink_down"]
    async with asyncio.timeout(30):
        while graph.redeliveries < 6:  # every result timed out and was sent again, twice
            await asyncio.sleep(0.05)
    assert settled == [] and dead_letters.letters == []
    with pytest.raises(RuntimeStopError, match=r"3 redeliveries still pending after 0.5 s"):
        await runtime.stop(timeout=0.5)
    assert settled == [] and dead_letters.letters == []  # consumed again after a restart
    assert graph.health()["failures"] == 0


async def test_a_result_too_large_for_the_broker_is_dead_lettered(kafka_bootstrap: str) -> None:
    """A permanent delivery error (MSG_SIZE_TOO_LARGE) is not retried for ever: after the
    graph's retries the execution is dead-lettered and its input settles."""
    declare("too_big")
    topic = create_topic(kafka_bootstrap, unique_topic("too-big"))
    sink = KafkaSink(kafka_bootstrap, topic, producer_config={"message.max.bytes": 1_000})
    dead_letters = MemoryDeadLetters()
    settled: list[int] = []
    async with Runtime(graphs=["too_big"], sinks=[sink], dead_letters=dead_letters) as runtime:
        runner = runtime.accumulators["too_big_in"]
        await runner.offer({"id": 1, "n": "x" * 5_000}, (lambda: settled.append(1),))
        await runner.offer({"id": 2, "n": 1}, (lambda: settled.append(2),))
        async with asyncio.timeout(30):
            while len(settled) < 2:
                await asyncio.sleep(0.02)
    (letter,) = dead_letters.letters
    assert letter.kind == "execution" and "MSG_SIZE_TOO_LARGE" in letter.reason
    assert letter.payload == {"too_big_in": {"id": 1, "n": "x" * 5_000}}
    ((_key, value, _p, _o),) = await asyncio.to_thread(consume_all, kafka_bootstrap, topic, 1, 20)
    assert orjson.loads(value) == {"double": {"id": 2, "twice": 2}}


async def test_dead_letters_land_beside_their_topic(kafka_bootstrap: str) -> None:
    source = unique_topic("src")
    dlq = create_topic(kafka_bootstrap, f"{source}.dlq")
    executions = create_topic(kafka_bootstrap, unique_topic("exec-dlq"))
    letters = KafkaDeadLetters(kafka_bootstrap, execution_topic=executions)
    await letters.send(
        DeadLetter(
            kind="message",
            reason="not JSON: unexpected character",
            payload=b"\xff{oops",
            accumulator="orders",
            topic=source,
            partition=2,
            offset=41,
        )
    )
    await letters.send(
        DeadLetter(
            kind="execution",
            reason="graph 'g', node 'n': raised ValueError('x')",
            payload={"orders": {"id": 1}, "when": uuid.UUID(int=5)},
            graph="g",
            node="n",
        )
    )
    await letters.close()
    (message,) = await asyncio.to_thread(consume_all, kafka_bootstrap, dlq, 1, 20)
    assert message[1] == b"\xff{oops"
    (execution,) = await asyncio.to_thread(consume_all, kafka_bootstrap, executions, 1, 20)
    body = orjson.loads(execution[1])
    assert body["graph"] == "g" and body["node"] == "n" and "ValueError" in body["reason"]
    assert body["inputs"]["orders"] == {"id": 1}
