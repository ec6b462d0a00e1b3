"""Failed deliveries and failed dead letters, with fakes: what is retried, dead-lettered,
held back, or fails the component. Real-broker proofs are in tests/integration."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from typing import Any

import pytest
import structlog
from confluent_kafka import KafkaError, KafkaException

from headrace.connectors import DeadLetter, MemoryDeadLetters, MemorySink
from headrace.connectors.dead_letters import DeadLetterError, FanOutDeadLetters
from headrace.connectors.kafka.dead_letters import KafkaDeadLetters
from headrace.connectors.kafka.producer import error_kind
from headrace.connectors.kafka.sink import KafkaSink, json_serializer
from headrace.connectors.sinks import SinkClosedError
from headrace.engine import Runtime
from tests.unit.support import pipeline, wait_until

UNREACHABLE = "127.0.0.1:9"  # nothing listens; the producers below never connect


def kafka(code: int, *, fatal: bool = False) -> KafkaException:
    return KafkaException(KafkaError(code, "injected", fatal=fatal))


# -- classification ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (kafka(KafkaError._MSG_TIMED_OUT), "retriable"),
        (kafka(KafkaError._TRANSPORT), "retriable"),
        (kafka(KafkaError._ALL_BROKERS_DOWN), "retriable"),
        (kafka(KafkaError.NOT_ENOUGH_REPLICAS), "retriable"),
        (BufferError("queue full"), "retriable"),
        (kafka(KafkaError.MSG_SIZE_TOO_LARGE), "permanent"),
        (kafka(KafkaError.TOPIC_AUTHORIZATION_FAILED), "permanent"),
        (kafka(KafkaError.INVALID_RECORD), "permanent"),
        (TypeError("not serializable"), "permanent"),
        (kafka(KafkaError._FENCED, fatal=True), "fatal"),
        (kafka(KafkaError._MSG_TIMED_OUT, fatal=True), "fatal"),
    ],
)
def test_delivery_errors_are_classified(error: BaseException, kind: str) -> None:
    assert error_kind(error) == kind


# -- a fake Kafka sink: submit/send whose outcomes the test scripts --------------------------


class ScriptedSink(MemorySink):
    """``submit`` reports ``delivery_errors`` in turn, ``send`` raises ``send_errors`` in turn,
    then both succeed. Classifies like the Kafka sink."""

    def __init__(
        self,
        delivery_errors: list[BaseException] = (),  # type: ignore[assignment]
        send_errors: list[BaseException] = (),  # type: ignore[assignment]
        submit_error: BaseException | None = None,
    ) -> None:
        super().__init__()
        self.delivery_errors = list(delivery_errors)
        self.send_errors = list(send_errors)
        self.submit_error = submit_error
        self.sends = 0

    classify = staticmethod(error_kind)

    def submit(self, graph: str, outputs: dict[str, Any], delivered: Callable[..., None]) -> bool:
        if self.submit_error is not None:
            raise self.submit_error
        error = self.delivery_errors.pop(0) if self.delivery_errors else None
        loop = asyncio.get_running_loop()
        if error is None:
            self.results.append((graph, outputs))
        loop.call_soon(delivered, error)
        return True

    async def send(self, graph: str, outputs: dict[str, Any]) -> None:
        self.sends += 1
        if self.send_errors:
            raise self.send_errors.pop(0)
        await super().send(graph, outputs)


async def offer(runtime: Runtime, value: Any, settled: list[Any]) -> None:
    await runtime.accumulator("a").offer(value, acks=(lambda: settled.append(value),))


# -- item 3: retriable delivery errors are retried while the inputs are held --------------


async def test_a_delivery_that_timed_out_is_sent_again_until_kafka_is_back_not_dead_lettered():
    pipeline(["a"], lambda a: a, retry_attempts=1, retry_backoff=0.001)
    sink = ScriptedSink(
        delivery_errors=[kafka(KafkaError._MSG_TIMED_OUT)],
        send_errors=[kafka(KafkaError._TRANSPORT)] * 3 + [kafka(KafkaError._MSG_TIMED_OUT)],
    )
    letters = MemoryDeadLetters()
    settled: list[Any] = []
    async with Runtime(graphs=["g"], sinks=[sink], dead_letters=letters) as runtime:
        await offer(runtime, 1, settled)
        await wait_until(lambda: sink.sends == 3)
        assert settled == [] and sink.outputs() == []  # held while Kafka is away
        await wait_until(lambda: settled == [1], timeout=10)
        health = runtime.health()["graphs"]["g"]
    assert sink.outputs() == [{"run": 1}] and sink.sends == 5
    assert letters.letters == [] and health["failures"] == 0 and health["redeliveries"] == 5


async def test_a_send_that_fails_retriably_blocks_the_fire_until_it_works():
    pipeline(["a"], lambda a: a, retry_attempts=1, retry_backoff=0.001)
    sink = MemorySink()
    failures = [kafka(KafkaError._ALL_BROKERS_DOWN)] * 4

    class Flaky(MemorySink):
        classify = staticmethod(error_kind)

        async def send(self, graph: str, outputs: dict[str, Any]) -> None:
            if failures:
                raise failures.pop(0)
            await sink.send(graph, outputs)

    letters = MemoryDeadLetters()
    settled: list[Any] = []
    async with Runtime(graphs=["g"], sinks=[Flaky()], dead_letters=letters) as runtime:
        await offer(runtime, 1, settled)
        await wait_until(lambda: settled == [1], timeout=10)
    assert sink.outputs() == [{"run": 1}] and letters.letters == []


async def test_a_permanent_delivery_error_is_dead_lettered_after_the_retries():
    pipeline(["a"], lambda a: a, retry_attempts=2, retry_backoff=0.001)
    sink = ScriptedSink(
        delivery_errors=[kafka(KafkaError.INVALID_RECORD)],
        send_errors=[kafka(KafkaError.INVALID_RECORD)],
    )
    letters = MemoryDeadLetters()
    settled: list[Any] = []
    async with Runtime(graphs=["g"], sinks=[sink], dead_letters=letters) as runtime:
        await offer(runtime, 1, settled)
        await wait_until(lambda: settled == [1])
    (letter,) = letters.letters
    assert letter.kind == "execution" and letter.reason.startswith("sink delivery failed")
    assert "INVALID_RECORD" in letter.reason
    assert sink.outputs() == [] and sink.sends == 1


# -- item 9: a fatal producer error fails the component; nothing is dead-lettered ----------


async def test_a_fatal_delivery_error_fails_the_sink_and_keeps_the_input_unsettled():
    pipeline(["a"], lambda a: a, retry_attempts=3, retry_backoff=0.001)
    sink = ScriptedSink(delivery_errors=[kafka(KafkaError._FENCED, fatal=True)])
    letters = MemoryDeadLetters()
    settled: list[Any] = []
    async with Runtime(graphs=["g"], sinks=[sink], dead_letters=letters) as runtime:
        await offer(runtime, 1, settled)
        await wait_until(lambda: bool(runtime.failures))
        assert not runtime.ready()
        failures = dict(runtime.failures)
    assert list(failures) == ["sink:ScriptedSink"]
    assert "_FENCED" in failures["sink:ScriptedSink"].reason
    assert letters.letters == [] and settled == [] and sink.sends == 0


async def test_a_fatal_error_at_produce_halts_the_reactor_without_dead_letters():
    pipeline(["a"], lambda a: a, retry_attempts=3, retry_backoff=0.001)
    sink = ScriptedSink(submit_error=kafka(KafkaError._FATAL, fatal=True))
    letters = MemoryDeadLetters()
    settled: list[Any] = []
    async with Runtime(graphs=["g"], sinks=[sink], dead_letters=letters) as runtime:
        await offer(runtime, 1, settled)
        await wait_until(lambda: "reactor:rx" in runtime.failures)
        failures = set(runtime.failures)
    assert failures == {"sink:ScriptedSink", "reactor:rx"}
    assert letters.letters == [] and settled == []


async def test_a_fatal_client_error_reported_by_librdkafka_fails_the_kafka_sink():
    pipeline(["a"])
    sink = KafkaSink(UNREACHABLE, "out", close_timeout=0.5)
    async with Runtime(graphs=["g"], sinks=[sink]) as runtime:
        transient = KafkaError(KafkaError._TRANSPORT, "broker down")
        fenced = KafkaError(KafkaError._FENCED, "producer fenced", fatal=True)
        await asyncio.to_thread(sink.producer.errors, transient)  # as from the poll thread
        await asyncio.sleep(0.05)
        assert runtime.failures == {}
        await asyncio.to_thread(sink.producer.errors, fenced)
        await wait_until(lambda: bool(runtime.failures))
        failures = dict(runtime.failures)
    assert list(failures) == ["sink:KafkaSink(out)"]
    assert "producer fenced" in failures["sink:KafkaSink(out)"].reason


# -- item 2: a failed execution dead letter never halts the reactor --------------------------


class FakeProducer:
    """Stands in for DeliveryProducer: records what is produced, raises what it is told."""

    def __init__(self, fail: Callable[[str, bytes | None], BaseException | None]) -> None:
        self.fail = fail
        self.produced: list[tuple[str, bytes | None]] = []
        self.on_fatal = None
        self.started = True

    def start(self) -> None:
        return None

    async def produce(self, topic: str, value: bytes | None, key: Any, headers: Any) -> None:
        error = self.fail(topic, value)
        if error is not None:
            raise error
        self.produced.append((topic, value))

    async def close(self, timeout: float | None = None) -> None:
        return None

    def health(self) -> dict[str, Any]:
        return {}


def kafka_letters(fail: Callable[[str, bytes | None], BaseException | None]) -> KafkaDeadLetters:
    letters = KafkaDeadLetters(UNREACHABLE)
    letters.producer = FakeProducer(fail)  # type: ignore[assignment]
    return letters


class FailingStore(MemoryDeadLetters):
    def __init__(self, error: BaseException | None) -> None:
        super().__init__()
        self.error = error

    async def send(self, letter: DeadLetter) -> None:
        if self.error is not None:
            raise self.error
        await super().send(letter)


def failing_graph() -> None:
    def bad(a: Any) -> Any:
        if a == "poison" or (isinstance(a, dict) and "poison" in a):
            raise ValueError("cannot handle it")
        return a

    pipeline(["a"], bad, retry_attempts=1, strategy="sequential")


async def run_one_poison(dead_letters: Any, poison: Any) -> tuple[Runtime, list[Any], MemorySink]:
    """Offer a poison input, then a good one; both must settle and the reactor keep running."""
    failing_graph()
    sink = MemorySink()
    settled: list[Any] = []
    async with Runtime(graphs=["g"], sinks=[sink], dead_letters=dead_letters) as runtime:
        await offer(runtime, poison, settled)
        await offer(runtime, "good", settled)
        await wait_until(lambda: len(settled) == 2, timeout=10)
        assert runtime.failed() == [] and runtime.failures == {}
    assert sink.outputs() == [{"run": "good"}]
    return runtime, settled, sink


async def test_an_execution_letter_with_a_huge_int_is_sent_in_full():
    letters = kafka_letters(lambda topic, value: None)
    poison = {"poison": 1, "id": 2**70}
    await run_one_poison(FanOutDeadLetters(letters), poison)
    ((topic, value),) = letters.producer.produced  # type: ignore[attr-defined]
    assert topic == "headrace.dead_letters"
    assert json.loads(value or b"")["inputs"] == {"a": poison}


def test_the_kafka_sink_serializes_ints_beyond_64_bits() -> None:
    assert json.loads(json_serializer({"n": {"id": 2**70, 1: [3]}})) == {
        "n": {"id": 2**70, "1": [3]}
    }


def test_the_kafka_sink_writes_non_string_keys_and_refuses_what_json_cannot_hold() -> None:
    assert json_serializer({"s": {2: [1]}, 1: "a"}) == b'{"s":{"2":[1]},"1":"a"}'
    assert json_serializer({"tags": {"x"}}) == b'{"tags":["x"]}'
    with pytest.raises(TypeError, match="not JSON serializable: object"):
        json_serializer({"o": object()})


async def test_an_execution_letter_too_large_at_produce_is_sent_cut_down():
    def too_large(topic: str, value: bytes | None) -> BaseException | None:
        return kafka(KafkaError.MSG_SIZE_TOO_LARGE) if len(value or b"") > 5_000 else None

    letters = kafka_letters(too_large)
    poison = {"poison": "x" * 50_000}
    await run_one_poison(FanOutDeadLetters(letters), poison)
    ((_topic, value),) = letters.producer.produced  # type: ignore[attr-defined]
    sent = json.loads(value or b"")
    assert "payload cut down" in sent["reason"] and sent["inputs"].startswith("{'a': {'poison'")
    assert len(value or b"") < 5_000


async def test_a_missing_dead_letter_topic_falls_back_to_the_store():
    letters = kafka_letters(lambda topic, value: kafka(KafkaError.UNKNOWN_TOPIC_OR_PART))
    store = FailingStore(None)
    await run_one_poison(FanOutDeadLetters(letters, store), "poison")
    (letter,) = store.letters
    assert letter.payload == {"a": "poison"} and letter.graph == "g"


async def test_a_store_error_falls_back_to_kafka():
    letters = kafka_letters(lambda topic, value: None)
    store = FailingStore(ConnectionError("database is down"))
    await run_one_poison(FanOutDeadLetters(store, letters), "poison")
    ((topic, value),) = letters.producer.produced  # type: ignore[attr-defined]
    assert topic == "headrace.dead_letters"
    assert json.loads(value or b"")["inputs"] == {"a": "poison"}


async def test_when_no_destination_takes_it_the_letter_is_logged_and_the_reactor_goes_on():
    letters = kafka_letters(lambda topic, value: kafka(KafkaError.TOPIC_AUTHORIZATION_FAILED))
    store = FailingStore(ConnectionError("database is down"))
    with structlog.testing.capture_logs() as logs:
        runtime, settled, _ = await run_one_poison(FanOutDeadLetters(letters, store), "poison")
    (line,) = [e for e in logs if e["event"].startswith("dead letter not sent: logged")]
    assert line["log_level"] == "error" and line["graph"] == "g"
    assert line["payload"] == "{'a': 'poison'}" and "TOPIC_AUTHORIZATION_FAILED" in line["error"]
    assert runtime.health()["graphs"]["g"]["lost_dead_letters"] == 1
    assert settled == ["poison", "good"]


async def test_fan_out_raises_only_when_every_destination_failed():
    store = FailingStore(ConnectionError("down"))
    with pytest.raises(DeadLetterError, match="no dead-letter destination took it"):
        await FanOutDeadLetters(store).send(DeadLetter(kind="execution", reason="r", payload=1))


# -- item 7: no results after close; stop waits for redeliveries; sources always close ------


async def test_a_kafka_sink_refuses_results_after_close() -> None:
    sink = KafkaSink(UNREACHABLE, "out", close_timeout=0.5)
    await sink.start()
    await sink.close()
    with pytest.raises(SinkClosedError, match=r"kafka sink for topic 'out' is closed"):
        await sink.send("g", {"run": 1})
    with pytest.raises(SinkClosedError):
        sink.submit("g", {"run": 1}, lambda error: None)
    assert not sink.producer.started  # no new producer was started behind our back


class RecordingSource:
    """A source that records the order of lifecycle calls and which acks were settled."""

    accumulators: frozenset[str] = frozenset()

    def __init__(self, settled: list[Any]) -> None:
        self.settled = settled
        self.calls: list[tuple[str, list[Any]]] = []

    async def start(self, runtime: Runtime) -> None:
        return None

    async def stop(self) -> None:
        self.calls.append(("stop", list(self.settled)))

    async def close(self) -> None:
        self.calls.append(("close", list(self.settled)))

    def health(self) -> dict[str, Any]:
        return {}


async def test_stop_waits_for_a_pending_redelivery_before_the_final_commit():
    pipeline(["a"], lambda a: a, retry_attempts=1, retry_backoff=0.2)
    sink = ScriptedSink(delivery_errors=[kafka(KafkaError._MSG_TIMED_OUT)])
    settled: list[Any] = []
    source = RecordingSource(settled)
    runtime = Runtime(graphs=["g"], sinks=[sink], sources=[source])
    await runtime.start()
    await offer(runtime, 1, settled)
    await wait_until(lambda: runtime.graphs["g"].pending() != [])
    await runtime.stop(timeout=10)
    assert source.calls == [("stop", []), ("close", [1])]  # settled before the commit
    assert sink.outputs() == [{"run": 1}]


async def test_sources_are_closed_even_when_the_drain_times_out_or_a_step_fails():
    class HangingSink(MemorySink):
        async def close(self) -> None:
            await asyncio.Event().wait()

    class BrokenSink(MemorySink):
        async def close(self) -> None:
            raise OSError("flush failed")

    pipeline(["a"])
    settled: list[Any] = []
    hung = RecordingSource(settled)
    runtime = Runtime(graphs=["g"], sinks=[HangingSink()], sources=[hung])
    await runtime.start()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(runtime.stop(), 0.5)
    assert [name for name, _ in hung.calls] == ["stop", "close"]

    broken = RecordingSource(settled)
    runtime = Runtime(graphs=["g"], sinks=[BrokenSink()], sources=[broken])
    await runtime.start()
    with pytest.raises(RuntimeError, match=r"closing sink BrokenSink: OSError: flush failed"):
        await runtime.stop()
    assert [name for name, _ in broken.calls] == ["stop", "close"]


def test_the_fatal_reporter_runs_on_any_thread() -> None:
    seen: list[str] = []
    sink = KafkaSink(UNREACHABLE, "out")
    sink.on_fatal = lambda error: seen.append(threading.current_thread().name)
    thread = threading.Thread(
        target=sink.producer.errors,
        args=(KafkaError(KafkaError._FENCED, "f", fatal=True),),
        name="poll",
    )
    thread.start()
    thread.join()
    assert seen == ["poll"] and sink.producer.errors.fatal is not None
