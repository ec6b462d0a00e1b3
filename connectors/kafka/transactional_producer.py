"""A transactional confluent-kafka producer whose delivery reports come back on the loop.

One producer per worker (KIP-447): the Kafka sinks, the Kafka dead letters and any other
writer (say, a keyed-state changelog) produce through it, and ``commit`` puts the input
offsets into the same transaction. The transactional API calls (init, begin, send offsets,
commit, abort) block, so they run on one dedicated thread; a second thread polls delivery
reports and hands them to the event loop in batches. Messages are taken only while a
transaction is open; ``discard`` makes the producer swallow them instead (an abort is
coming and their inputs will be consumed again).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import structlog
from confluent_kafka import KafkaException, Producer, TopicPartition

from headrace.connectors.kafka.call_thread import CallThread
from headrace.connectors.kafka.deliveries import Delivered, Deliveries, DeliveryCounts
from headrace.connectors.kafka.producer import LIBRDKAFKA_LOGGER, ErrorLog

log = structlog.get_logger("headrace.kafka")

TP = tuple[str, int]

TRANSACTIONAL_DEFAULTS: dict[str, Any] = {
    "acks": "all",
    "linger.ms": 5,
    "compression.type": "none",
    # A worker killed mid-transaction blocks read_committed readers of its output partitions
    # until the broker aborts the transaction: keep that short (Kafka Streams uses 10 s).
    "transaction.timeout.ms": 10_000,
    "logger": LIBRDKAFKA_LOGGER,
}


class TransactionalClient(Protocol):
    """The part of ``confluent_kafka.Producer`` used here (fakes implement it in tests)."""

    def init_transactions(self, timeout: float = ...) -> None: ...
    def begin_transaction(self) -> None: ...
    def send_offsets_to_transaction(
        self, positions: list[Any], group_metadata: Any, timeout: float = ...
    ) -> None: ...
    def commit_transaction(self, timeout: float = ...) -> None: ...
    def abort_transaction(self, timeout: float = ...) -> None: ...
    def produce(self, topic: str, value: Any = ..., key: Any = ..., **kwargs: Any) -> None: ...
    def poll(self, timeout: float = ...) -> int: ...
    def flush(self, timeout: float = ...) -> int: ...


ClientFactory = Callable[[dict[str, Any]], TransactionalClient]


STUCK_GRACE = 15.0
"""Seconds past a transactional call's own timeout before the client is given up on."""


class TransactionalCallStuck(RuntimeError):
    """A transactional call outlived its own timeout: librdkafka's
    ``send_offsets_to_transaction`` can block past it while the coordinator is away
    (confluentinc/librdkafka#5456, #5511). The client is abandoned and a new one made."""


class TransactionalProducer(DeliveryCounts):
    """Produces inside the open transaction; ``commit``/``abort`` end it and open the next."""

    def __init__(
        self,
        bootstrap_servers: str,
        transactional_id: str,
        config: Mapping[str, Any] | None = None,
        *,
        max_in_flight: int = 100_000,
        operation_timeout: float = 30.0,
        client_factory: ClientFactory = Producer,
    ) -> None:
        if not transactional_id:
            raise ValueError("TransactionalProducer: transactional_id must not be empty")
        self.errors = ErrorLog("transactional producer")
        self.config: dict[str, Any] = {
            **TRANSACTIONAL_DEFAULTS,
            "error_cb": self.errors,
            **(config or {}),
            "bootstrap.servers": bootstrap_servers,
            "transactional.id": transactional_id,
            "enable.idempotence": True,
        }
        limit = int(self.config["transaction.timeout.ms"])
        if int(self.config.get("message.timeout.ms", 300_000)) > limit:
            # librdkafka refuses a message timeout beyond the transaction's
            self.config["message.timeout.ms"] = limit
        self.transactional_id = transactional_id
        self.max_in_flight = max_in_flight
        self.operation_timeout = operation_timeout
        self.client_factory = client_factory
        self.deliveries = Deliveries("transactional", max_in_flight, self._settle)
        self.discarded = 0
        self.produced_in_transaction = 0
        self.is_open = False
        self.discarding = False
        self._offsets_sent = 0
        self.doomed = False
        """A message of the open transaction failed: it can only abort."""
        self._doom_next: str | None = None
        self.stuck = False
        """A call never returned: the client is abandoned on ``restart``."""
        self.on_doomed: Callable[[], None] | None = None
        self._client: TransactionalClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._calls: CallThread | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._open = asyncio.Event()

    @property
    def started(self) -> bool:
        return self._client is not None

    def poll_thread_alive(self) -> bool:
        return self._client is None or (self._thread is not None and self._thread.is_alive())

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        assert self._calls is not None
        return await self._calls.call(fn, *args)

    async def _bounded(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``_call`` a transactional API that takes ``operation_timeout``, with a deadline
        of its own (``TransactionalCallStuck`` past it)."""
        limit = self.operation_timeout + STUCK_GRACE
        try:
            return await asyncio.wait_for(self._call(fn, *args), limit)
        except TimeoutError:
            self.stuck = True
            name = getattr(fn, "__name__", "transactional call")
            raise TransactionalCallStuck(
                f"{name} did not return {limit:.0f} s after it was called "
                f"(its timeout is {self.operation_timeout:.0f} s)"
            ) from None

    async def start(self) -> None:
        """Create the client, fence older producers of this transactional id, begin."""
        if self._client is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._calls = CallThread("headrace-transactions")
        self._client = self.client_factory(self.config)
        self._stopping.clear()
        self.deliveries.open(self._loop)
        self._thread = threading.Thread(
            target=self._poll_forever, name="headrace-transactions-poll", daemon=True
        )
        self._thread.start()
        await self._bounded(self._client.init_transactions, self.operation_timeout)
        await self.begin()

    async def begin(self) -> None:
        assert self._client is not None
        await self._call(self._client.begin_transaction)
        self.produced_in_transaction = 0
        self._offsets_sent = 0
        self.doomed = False
        self.is_open = True
        self._open.set()
        if self._doom_next is not None:
            reason, self._doom_next = self._doom_next, None
            self._failed_in_transaction(RuntimeError(reason))

    def doom(self, reason: str) -> None:
        """A writer could not put a record it needs into the transaction: it must abort
        (its inputs are consumed again). Between transactions, the next one is doomed."""
        if self.is_open:
            self._failed_in_transaction(RuntimeError(reason))
        else:
            self._doom_next = reason

    # -- the poll thread ---------------------------------------------------------------
    def _poll_forever(self) -> None:
        while not self._stopping.is_set():
            try:
                assert self._client is not None
                self._client.poll(0.05)
                self.deliveries.hand_over()
            except Exception:
                log.exception("transactional producer poll failed")

    # -- on the loop -------------------------------------------------------------------
    def _settle(self, delivered: Delivered, error: BaseException | None) -> None:
        """A failed message dooms its transaction (the commit fails, it is aborted and its
        inputs consumed again): sending it once more would repeat it, so the writer is told
        it is done and the abort takes care of it."""
        if error is not None:
            self._doom(error)
        delivered(None)

    def _failed_in_transaction(self, error: BaseException) -> None:
        """A message refused before it was sent (or a writer's record lost): doomed."""
        self.deliveries.failed += 1
        self._doom(error)

    def _doom(self, error: BaseException) -> None:
        if not self.doomed:
            self.doomed = True
            log.warning(
                "a message failed in the open transaction: it will abort and its inputs be "
                "consumed again",
                error=str(error),
            )
            if self.on_doomed is not None:
                self.on_doomed()

    def produce_nowait(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | str | None,
        headers: list[tuple[str, bytes]] | None,
        delivered: Delivered,
        partition: int | None = None,
    ) -> bool:
        """Produce into the open transaction; False when none is open or too many are in
        flight (try again later). While discarding, the message is dropped and reported
        delivered: its inputs are rewound and consumed again."""
        if self.discarding:
            self.discarded += 1
            assert self._loop is not None
            self._loop.call_soon(delivered, None)
            return True
        deliveries = self.deliveries
        if not self.is_open or deliveries.full():
            deliveries.refused()
            return False
        assert self._client is not None
        options: dict[str, Any] = {
            "headers": headers,
            "on_delivery": deliveries.callback(delivered),
        }
        if partition is not None:
            options["partition"] = partition
        try:
            self._client.produce(topic, value, key, **options)
        except BufferError:
            deliveries.refused()
            return False
        except KafkaException as error:
            # The transaction is in an error state (librdkafka refuses every message until
            # it is aborted): the same as a failed delivery.
            self._failed_in_transaction(error)
            assert self._loop is not None
            self._loop.call_soon(delivered, None)
            return True
        deliveries.sent()
        self.produced_in_transaction += 1
        return True

    async def produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | str | None = None,
        headers: list[tuple[str, bytes]] | None = None,
        partition: int | None = None,
    ) -> None:
        """Produce into the open transaction and return once the broker has the message
        (it becomes visible to read_committed readers when the transaction commits)."""
        assert self._loop is not None, "the transactional producer is not started"
        future: asyncio.Future[None] = self._loop.create_future()

        def delivered(error: BaseException | None) -> None:
            if not future.done():
                if error is None:
                    future.set_result(None)
                else:
                    future.set_exception(error)

        while not self.produce_nowait(topic, value, key, headers, delivered, partition):
            waiter = self.deliveries.space if self.is_open else self._open
            waiter.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter.wait(), 0.05)
        await future

    async def drain(self, timeout: float | None = None) -> bool:
        """Wait until every produced message has its delivery report handled."""
        return await self.deliveries.drain(timeout)

    # -- ending transactions (blocking calls on the transactions thread) -----------------
    def _close_gate(self) -> None:
        self.is_open = False
        self._open.clear()

    async def commit(self, offsets: list[tuple[dict[TP, int], Any]]) -> None:
        """Send ``offsets`` (per consumer group: positions and group metadata) and commit.

        Raises the client's ``KafkaException``; the transaction is closed either way (the
        caller aborts, retries or stops). Call ``begin`` for the next one.
        """
        assert self._client is not None
        self._close_gate()
        client, timeout = self._client, self.operation_timeout
        for index, (positions, metadata) in enumerate(offsets):
            if positions and index >= self._offsets_sent:
                tps = [TopicPartition(t, p, o) for (t, p), o in sorted(positions.items())]
                await self._bounded(client.send_offsets_to_transaction, tps, metadata, timeout)
            self._offsets_sent = index + 1
        await self._bounded(client.commit_transaction, timeout)

    async def retry_commit(self, offsets: list[tuple[dict[TP, int], Any]]) -> None:
        """``commit`` again after a retriable error (librdkafka allows both calls again):
        offsets already sent are not sent twice; the rest go, then the commit."""
        await self.commit(offsets)

    async def abort(self) -> None:
        assert self._client is not None
        self._close_gate()
        await self._bounded(self._client.abort_transaction, self.operation_timeout)
        # aborted messages get their reports (errors) from the poll thread: wait for them
        await self.drain(self.operation_timeout)

    async def restart(self) -> None:
        """A new client for the same transactional id (after this one was fenced: its
        epoch is gone, e.g. the broker aborted a transaction that outlived its timeout);
        ``init_transactions`` then takes a fresh epoch and a transaction begins."""
        await self.close()
        self.stuck = False
        self.is_open = False
        self._open.clear()
        await self.start()  # a new client: nothing in flight

    async def close(self, timeout: float = 10.0) -> None:
        """Abort any open transaction (its inputs were not committed) and stop."""
        if self._client is None:
            return
        if self.is_open and self.produced_in_transaction and not self.stuck:
            with contextlib.suppress(Exception):
                await self.abort()
        self._close_gate()
        self._stopping.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, timeout)
            self._thread = None
        self.deliveries.hand_over()
        await asyncio.sleep(0)
        if self._calls is not None:
            # a stuck call keeps its thread: abandon it (the new client fences the old one)
            self._calls.shutdown(wait=not self.stuck)
            self._calls = None
        self._client = None

    def health(self) -> dict[str, Any]:
        return {
            "transactional_id": self.transactional_id,
            "open": self.is_open,
            "in_flight": self.in_flight,
            "delivered": self.delivered,
            "failed": self.failed,
            "discarded": self.discarded,
            "client_errors": self.errors.count,
        }
