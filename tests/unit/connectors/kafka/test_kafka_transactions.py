"""The transaction coordinator's state machine, with a fake transactional client and fake
sources: what goes into a commit, the barrier, retries, aborts with rewinds, fencing."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterable
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from headrace.connectors.kafka import transactional_producer
from headrace.connectors.kafka.offsets import OffsetTracker
from headrace.connectors.kafka.transactional_producer import TransactionalProducer
from headrace.connectors.kafka.transactions import (
    TransactionCoordinator,
    check_guarantee,
    transaction_error_kind,
)

TP = tuple[str, int]


def error(code: int, **flags: bool) -> KafkaException:
    return KafkaException(KafkaError(code, "test", **flags))


class FakeClient:
    """The transactional calls, recorded; ``fail`` maps a call name to errors to raise."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.fail: dict[str, list[BaseException]] = {}
        self.pending: list[Any] = []
        self.delivery_error: KafkaError | None = None
        self.lock = threading.Lock()

    def _call(self, name: str, arg: Any = None) -> None:
        self.calls.append((name, arg))
        errors = self.fail.get(name)
        if errors:
            raise errors.pop(0)

    def init_transactions(self, timeout: float = 0) -> None:
        self._call("init")

    def begin_transaction(self) -> None:
        self._call("begin")

    def send_offsets_to_transaction(
        self, positions: list[Any], metadata: Any, timeout: float = 0
    ) -> None:
        self._call(
            "send_offsets", ({(tp.topic, tp.partition): tp.offset for tp in positions}, metadata)
        )

    def commit_transaction(self, timeout: float = 0) -> None:
        self._call("commit")

    def abort_transaction(self, timeout: float = 0) -> None:
        self._call("abort")

    def produce(self, topic: str, value: Any = None, key: Any = None, **kwargs: Any) -> None:
        self.calls.append(("produce", (topic, key, value)))
        errors = self.fail.get("produce")
        if errors:
            raise errors.pop(0)
        with self.lock:
            self.pending.append(kwargs["on_delivery"])

    def poll(self, timeout: float = 0) -> int:
        time.sleep(0.005)
        with self.lock:
            pending, self.pending = self.pending, []
        for report in pending:
            report(self.delivery_error, None)
        return len(pending)

    def flush(self, timeout: float = 0) -> int:
        return 0

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]


class FakeSource:
    def __init__(self, group: str = "g") -> None:
        self.group_id = group
        self.tracker = OffsetTracker()
        self.in_callback = False
        self.fetching = True
        self.count = 0
        self.seeks: list[dict[TP, int | None]] = []
        self.queued: dict[TP, int | None] = {}

    async def group_metadata(self) -> Any:
        return f"metadata:{self.group_id}"

    def taken(self) -> int:
        return self.count

    def take(self, tp: TP, offset: int) -> Any:
        self.count += 1
        return self.tracker.begin(tp, offset)

    def forget_uncommitted(self, exclude: Iterable[TP] = ()) -> dict[TP, int | None]:
        skip = set(exclude)
        rewound = {
            tp: self.tracker.partition(tp).committed
            for tp in self.tracker.partitions()
            if tp not in skip
        }
        self.tracker.revoke(rewound)
        self.queued.update(rewound)
        return rewound

    async def seek_back(self) -> None:
        self.seeks.append(dict(self.queued))
        self.queued = {}


class FakeRuntime:
    def __init__(self) -> None:
        self.failures: dict[str, str] = {}

        class Supervisor:
            failed = False

        self.supervisor = Supervisor()

    def fail(self, component: str, reason: Any) -> None:
        self.failures[component] = str(reason)
        self.supervisor.failed = True

    def supervise(self, task: Any, component: str) -> None:
        pass


OPEN: list[TransactionCoordinator] = []


@pytest.fixture(autouse=True)
async def _close_coordinators() -> Any:
    yield
    while OPEN:
        await OPEN.pop().close()  # stops the fake client's poll thread


async def started(
    **options: Any,
) -> tuple[TransactionCoordinator, FakeClient, FakeSource, FakeRuntime]:
    client = FakeClient()
    producer = TransactionalProducer("fake:9092", "txn-1", client_factory=lambda _config: client)
    options.setdefault("commit_interval", 3600.0)
    coordinator = TransactionCoordinator(producer, barrier_timeout=2.0, **options)
    source = FakeSource()
    coordinator.attach(source)
    OPEN.append(coordinator)
    runtime = FakeRuntime()
    await coordinator.start(runtime)  # type: ignore[arg-type]
    return coordinator, client, source, runtime


async def park(coordinator: TransactionCoordinator, source: FakeSource) -> asyncio.Task[None]:
    """A fetch loop: parks at the gate whenever the coordinator holds it."""

    async def loop() -> None:
        while True:
            await coordinator.gate(source)  # type: ignore[arg-type]
            await asyncio.sleep(0.001)

    return asyncio.create_task(loop())


def test_guarantee_names_the_choices() -> None:
    assert check_guarantee("exactly_once") == "exactly_once"
    with pytest.raises(
        ValueError, match=r"worker.guarantee must be 'at_least_once'.*'exactly-once'"
    ):
        check_guarantee("exactly-once", "worker.guarantee")


def test_error_kinds() -> None:
    # a stale group generation comes with every cooperative rebalance: abort, not stop
    assert transaction_error_kind(error(KafkaError.ILLEGAL_GENERATION)) == "abortable"
    assert transaction_error_kind(error(KafkaError.UNKNOWN_MEMBER_ID)) == "abortable"
    assert transaction_error_kind(error(KafkaError.PRODUCER_FENCED, fatal=True)) == "fenced"
    assert transaction_error_kind(error(KafkaError._FENCED, fatal=True)) == "fenced"
    assert transaction_error_kind(error(KafkaError.INVALID_PRODUCER_EPOCH)) == "fenced"
    assert transaction_error_kind(error(KafkaError._STATE, fatal=True)) == "fatal"
    assert transaction_error_kind(error(KafkaError._TIMED_OUT, retriable=True)) == "retriable"
    assert (
        transaction_error_kind(error(KafkaError.REBALANCE_IN_PROGRESS, txn_requires_abort=True))
        == "abortable"
    )
    assert transaction_error_kind(RuntimeError("bug")) == "fatal"


async def test_commit_carries_outputs_and_the_positions_of_handled_inputs() -> None:
    coordinator, client, source, _ = await started()
    fetch = await park(coordinator, source)
    for offset in range(3):
        source.take(("in", 0), offset)()
    await coordinator.produce("out", b"k", b"v")
    assert await coordinator.commit("test")
    fetch.cancel()
    names = client.names()
    assert names[:2] == ["init", "begin"]
    assert names[2:] == ["produce", "send_offsets", "commit", "begin"]
    sent = dict(client.calls)["send_offsets"]
    assert sent == ({("in", 0): 3}, "metadata:g")
    assert source.tracker.partition(("in", 0)).committed == 3
    health = coordinator.health()
    assert health["committed"] == 1 and health["records"] == 1 and health["inputs"] == 3


async def test_commit_waits_for_inputs_in_flight() -> None:
    coordinator, client, source, _ = await started()
    fetch = await park(coordinator, source)
    source.take(("in", 0), 0)()
    ack = source.take(("in", 0), 1)
    commit = asyncio.create_task(coordinator.commit("test"))
    await asyncio.sleep(0.2)
    assert "commit" not in client.names(), "committed while an input was still in flight"
    ack()
    assert await commit
    fetch.cancel()
    assert dict(client.calls)["send_offsets"][0] == {("in", 0): 2}


async def test_nothing_to_commit_sends_nothing() -> None:
    coordinator, client, source, _ = await started()
    fetch = await park(coordinator, source)
    assert await coordinator.commit("test")
    fetch.cancel()
    assert "commit" not in client.names() and coordinator.stats["committed"] == 0


async def test_retriable_commit_is_retried() -> None:
    coordinator, client, source, runtime = await started()
    fetch = await park(coordinator, source)
    source.take(("in", 0), 0)()
    client.fail["commit"] = [error(KafkaError._TIMED_OUT, retriable=True)]
    assert await coordinator.commit("test")
    fetch.cancel()
    assert client.names().count("commit") == 2 and coordinator.stats["retries"] == 1
    assert not runtime.failures and source.tracker.partition(("in", 0)).committed == 1


async def test_abortable_commit_aborts_rewinds_and_begins_again() -> None:
    coordinator, client, source, runtime = await started()
    fetch = await park(coordinator, source)
    source.take(("in", 0), 0)()
    source.take(("in", 1), 5)()
    client.fail["commit"] = [error(KafkaError.REBALANCE_IN_PROGRESS, txn_requires_abort=True)]
    assert not await coordinator.commit("test")
    fetch.cancel()
    assert client.names()[-2:] == ["abort", "begin"]
    assert source.seeks == [{("in", 0): None, ("in", 1): None}]  # never committed: the group's
    assert source.tracker.partitions() == []  # in-flight state dropped
    assert coordinator.stats["aborted"] == 1 and not runtime.failures
    assert coordinator.producer.is_open


async def test_outputs_while_aborting_are_discarded_not_produced() -> None:
    coordinator, client, source, _ = await started()
    fetch = await park(coordinator, source)
    ack = source.take(("in", 0), 0)

    async def late_output() -> None:
        await asyncio.sleep(0.1)
        await coordinator.produce("out", b"late", b"v")  # produced while the abort drains
        ack()

    task = asyncio.create_task(late_output())
    await coordinator.abort("lost")
    await task
    fetch.cancel()
    assert ("produce", ("out", b"late", b"v")) not in client.calls
    assert coordinator.producer.discarded == 1 and coordinator.stats["aborted"] == 1


async def test_a_fenced_producer_is_reinitialised_and_the_partitions_rewound() -> None:
    """A broker outage longer than the transaction timeout fences the producer (the broker
    aborted its transaction and bumped its epoch): a fresh epoch, a rewind, and on."""
    coordinator, client, source, runtime = await started()
    fetch = await park(coordinator, source)
    source.take(("in", 0), 0)()
    client.fail["commit"] = [error(KafkaError._FENCED, fatal=True)]
    assert not await coordinator.commit("test")
    assert client.names().count("init") == 2, client.names()
    assert source.seeks == [{("in", 0): None}] and not runtime.failures
    assert not coordinator.stopped and coordinator.stats["recoveries"] == 1
    assert source.tracker.partition(("in", 0)).committed is None
    source.take(("in", 0), 0)()  # consumed again after the rewind
    assert await coordinator.commit("after")
    fetch.cancel()
    assert source.tracker.partition(("in", 0)).committed == 1


async def test_a_call_stuck_past_its_timeout_abandons_the_client(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """librdkafka#5456: send_offsets_to_transaction can block past its timeout while the
    coordinator is away; the worker must not wait for it forever."""
    monkeypatch.setattr(transactional_producer, "STUCK_GRACE", 0.2)
    coordinator, client, source, runtime = await started()
    coordinator.producer.operation_timeout = 0.1
    release = threading.Event()
    plain = client.send_offsets_to_transaction

    def blocks_once(positions: list[Any], metadata: Any, timeout: float = 0) -> None:
        client.send_offsets_to_transaction = plain  # type: ignore[method-assign]
        release.wait(30)

    client.send_offsets_to_transaction = blocks_once  # type: ignore[method-assign]
    fetch = await park(coordinator, source)
    source.take(("in", 0), 0)()
    assert not await coordinator.commit("stuck")
    release.set()
    assert coordinator.stats["recoveries"] == 1 and not runtime.failures
    assert client.names().count("init") == 2 and source.seeks == [{("in", 0): None}]
    source.take(("in", 0), 0)()
    assert await coordinator.commit("after")
    fetch.cancel()
    assert source.tracker.partition(("in", 0)).committed == 1


async def test_a_fencing_that_keeps_coming_back_stops_the_worker() -> None:
    coordinator, client, source, runtime = await started(max_recoveries=1)
    fetch = await park(coordinator, source)
    source.take(("in", 0), 0)()
    client.fail["commit"] = [error(KafkaError._FENCED, fatal=True)]
    assert not await coordinator.commit("first")  # recovered once
    assert not runtime.failures
    source.take(("in", 0), 0)()
    client.fail["commit"] = [error(KafkaError._FENCED, fatal=True)]
    assert not await coordinator.commit("second")
    fetch.cancel()
    assert "transaction fenced" in runtime.failures["kafka-transactions"]
    assert coordinator.stopped


async def test_fencing_stops_the_worker_with_a_clear_reason() -> None:
    coordinator, client, source, runtime = await started(max_recoveries=0)
    fetch = await park(coordinator, source)
    source.take(("in", 0), 0)()
    client.fail["commit"] = [error(KafkaError.PRODUCER_FENCED, fatal=True)]
    assert not await coordinator.commit("test")
    fetch.cancel()
    assert "transaction fenced" in runtime.failures["kafka-transactions"]
    assert coordinator.stopped and "abort" not in client.names()
    assert source.tracker.partition(("in", 0)).committed is None
    assert not await coordinator.commit("again")  # nothing more after a fence


async def test_a_stale_group_generation_aborts_and_rewinds() -> None:
    coordinator, client, source, runtime = await started()
    fetch = await park(coordinator, source)
    source.take(("in", 0), 0)()
    client.fail["send_offsets"] = [error(KafkaError.ILLEGAL_GENERATION, txn_requires_abort=True)]
    assert not await coordinator.commit("test")
    fetch.cancel()
    assert "commit" not in client.names() and client.names()[-2:] == ["abort", "begin"]
    assert source.seeks == [{("in", 0): None}] and not runtime.failures


async def test_fatal_commit_error_stops_the_worker_once_recoveries_are_spent() -> None:
    coordinator, client, source, runtime = await started(max_recoveries=0)
    fetch = await park(coordinator, source)
    source.take(("in", 0), 0)()
    client.fail["commit"] = [error(KafkaError._STATE, fatal=True)]
    assert not await coordinator.commit("test")
    fetch.cancel()
    assert "failed for good (fatal)" in runtime.failures["kafka-transactions"]


async def test_max_inputs_commits_before_the_interval() -> None:
    coordinator, client, source, _ = await started(max_inputs=5)
    for offset in range(5):
        source.take(("in", 0), offset)()
    fetch = await park(coordinator, source)  # the gate sees 5 inputs and wakes the timer
    async with asyncio.timeout(5):
        while "commit" not in client.names():
            await asyncio.sleep(0.01)
    fetch.cancel()
    assert dict(client.calls)["send_offsets"][0] == {("in", 0): 5}


async def test_produce_waits_while_no_transaction_is_open() -> None:
    coordinator, client, _source, _ = await started()
    coordinator.producer.is_open = False
    coordinator.producer._open.clear()
    task = asyncio.create_task(coordinator.produce("out", None, b"v"))
    await asyncio.sleep(0.1)
    assert not task.done() and "produce" not in client.names()
    await coordinator.producer.begin()
    await asyncio.wait_for(task, 5)
    assert "produce" in client.names()
    await coordinator.close()


def test_kafka_source_checks_its_guarantee() -> None:
    from headrace.connectors.kafka.source import KafkaSource

    with pytest.raises(ValueError, match="KafkaSource: guarantee must be"):
        KafkaSource("b:9092", "g", guarantee="exactly-once")
    with pytest.raises(ValueError, match="needs transactions=TransactionCoordinator"):
        KafkaSource("b:9092", "g", guarantee="exactly_once")
    producer = TransactionalProducer("b:9092", "t", client_factory=lambda _c: FakeClient())
    coordinator = TransactionCoordinator(producer)
    source = KafkaSource("b:9092", "g", guarantee="exactly_once", transactions=coordinator)
    assert source.config["isolation.level"] == "read_committed"
    assert coordinator.sources == [source]
    assert KafkaSource("b:9092", "g").config.get("isolation.level") is None


async def test_retriable_abort_is_retried_until_it_works() -> None:
    coordinator, client, source, runtime = await started()
    fetch = await park(coordinator, source)
    source.take(("in", 0), 0)()
    client.fail["abort"] = [error(KafkaError._TIMED_OUT, retriable=True)] * 3
    await coordinator.abort("lost")
    fetch.cancel()
    assert client.names().count("abort") == 4 and not runtime.failures
    assert coordinator.stats["aborted"] == 1 and coordinator.producer.is_open


async def test_a_failed_message_aborts_its_transaction_instead_of_being_sent_again() -> None:
    coordinator, client, source, runtime = await started()
    fetch = await park(coordinator, source)
    ack = source.take(("in", 0), 0)
    client.delivery_error = KafkaError(KafkaError._MSG_TIMED_OUT, "test")
    await coordinator.produce("out", b"k", b"v")  # told done: a resend would repeat it
    ack()
    client.delivery_error = None
    async with asyncio.timeout(5):  # the failure wakes the timer: it aborts, never commits
        while coordinator.stats["aborted"] == 0:
            await asyncio.sleep(0.01)
    fetch.cancel()
    assert "commit" not in client.names() and client.names().count("produce") == 1
    assert source.seeks == [{("in", 0): None}] and not runtime.failures
    assert not coordinator.producer.doomed and coordinator.producer.is_open


async def test_offsets_that_failed_to_go_are_sent_again_before_the_commit() -> None:
    coordinator, client, source, runtime = await started()
    fetch = await park(coordinator, source)
    source.take(("in", 0), 0)()
    client.fail["send_offsets"] = [error(KafkaError._TIMED_OUT, retriable=True)]
    assert await coordinator.commit("test")
    fetch.cancel()
    ending = client.names()[2:]
    assert ending == ["send_offsets", "send_offsets", "commit", "begin"], ending
    assert not runtime.failures and source.tracker.partition(("in", 0)).committed == 1


async def test_a_refused_message_dooms_the_transaction_too() -> None:
    coordinator, client, source, runtime = await started()
    fetch = await park(coordinator, source)
    ack = source.take(("in", 0), 0)
    client.fail["produce"] = [error(KafkaError._STATE)]
    await coordinator.produce("out", b"k", b"v")  # no raise: the abort takes care of it
    ack()
    async with asyncio.timeout(5):
        while coordinator.stats["aborted"] == 0:
            await asyncio.sleep(0.01)
    fetch.cancel()
    assert "commit" not in client.names() and not runtime.failures


class FakeLoop:
    """A reactor loop as the coordinator sees it: ``busy`` while it fires or owes a fire."""

    busy = False


async def test_a_commit_leaves_out_inputs_a_waiting_reactor_holds_instead_of_waiting() -> None:
    """A when_all half (or a batch before its flush) holds an input across commits: the
    commit covers the offsets below it at once (no barrier timeout), and its outputs come
    with a later commit. While a reactor fires, the commit still waits."""
    coordinator, client, source, runtime = await started()
    join = FakeLoop()
    runtime.reactors = {"join": join}  # type: ignore[attr-defined]
    fetch = await park(coordinator, source)
    source.take(("in", 0), 0)()
    held = source.take(("in", 0), 1)  # waits in the reactor for its other half
    assert await coordinator.commit("test")
    assert coordinator.stats["barrier_timeouts"] == 0, "the commit waited for a held input"
    assert dict(client.calls)["send_offsets"][0] == {("in", 0): 1}

    join.busy = True  # the other half came: the reactor fires
    commit = asyncio.create_task(coordinator.commit("again"))
    await asyncio.sleep(0.2)
    assert client.names().count("commit") == 1, "committed while a fire ran"
    await coordinator.produce("out", b"k", b"joined")
    held()
    join.busy = False
    assert await commit
    fetch.cancel()
    assert [arg for name, arg in client.calls if name == "send_offsets"][-1][0] == {("in", 0): 2}
    assert coordinator.stats["barrier_timeouts"] == 0


async def test_a_doom_between_transactions_dooms_the_next_one() -> None:
    """A writer that could not put a record in (the gate was closed for a commit) makes
    the next transaction abort, so its inputs are consumed again."""
    coordinator, client, source, runtime = await started()
    fetch = await park(coordinator, source)
    producer = coordinator.producer
    producer.is_open = False  # between commit and begin
    producer.doom("changelog record not taken")
    assert not producer.doomed
    await producer.begin()
    assert producer.doomed
    ack = source.take(("in", 0), 0)
    ack()
    assert not await coordinator.commit("test")
    fetch.cancel()
    assert "abort" in client.names() and "commit" not in client.names()
    assert coordinator.stats["aborted"] == 1 and not runtime.failures


async def test_a_busy_probe_holds_the_commit_back() -> None:
    coordinator, client, source, _ = await started()
    firing = [True]
    coordinator.add_busy(lambda: firing[0])
    fetch = await park(coordinator, source)
    source.take(("in", 0), 0)()
    commit = asyncio.create_task(coordinator.commit("test"))
    await asyncio.sleep(0.2)
    assert "commit" not in client.names(), "committed while a keyed fire ran"
    firing[0] = False
    assert await commit
    fetch.cancel()
    assert "commit" in client.names()
