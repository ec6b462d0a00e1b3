"""Exactly-once Kafka to Kafka: one transaction carries outputs, dead letters and offsets.

A ``TransactionCoordinator`` owns the worker's one ``TransactionalProducer``. Kafka sinks
and Kafka dead letters ``join`` it (their producer is replaced by a view of the shared
one); other writers produce inside the open transaction with ``produce``. The Kafka
sources (``guarantee="exactly_once"``) read with ``isolation.level=read_committed``, never
commit offsets themselves, and park at ``gate`` whenever a transaction ends.

Ending a transaction is a barrier: the sources stop fetching, every taken input is
handled (its outputs are in the transaction) or held by a reactor that waits for more (a
``when_all`` half, a batch before its flush: the positions stop below it), and no
``add_busy`` probe is busy (a keyed reactor firing on values its changelog already
holds); then the input positions go in with ``send_offsets_to_transaction`` (the
consumer's group metadata, KIP-447) and the transaction commits (``add_commit_listener``
hears of it); the next one begins at once. A writer that cannot put a record it needs
into the transaction dooms it (``TransactionalProducer.doom``): it aborts. Commits happen every
``commit_interval`` seconds or after ``max_inputs`` inputs, on revoke (synchronously,
before the partitions go) and on close. On lost partitions, or an abortable error, the
transaction is aborted and every partition is rewound to its last committed offset, its
in-flight state dropped (``add_abort_listener`` tells other holders of state). Fencing
(another worker owns the partitions now) and fatal errors stop the worker non-zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Literal, Protocol

import structlog
from confluent_kafka import KafkaError

from headrace.connectors.kafka.flow import labelled
from headrace.connectors.kafka.offsets import OffsetTracker
from headrace.connectors.kafka.producer import Delivered, kafka_error
from headrace.connectors.kafka.transactional_producer import (
    TransactionalCallStuck,
    TransactionalProducer,
)

if TYPE_CHECKING:
    from headrace.engine.runtime import Runtime

log = structlog.get_logger("headrace.kafka.transactions")

TP = tuple[str, int]
Guarantee = Literal["at_least_once", "exactly_once"]
GUARANTEES: tuple[str, ...] = ("at_least_once", "exactly_once")
COMPONENT = "kafka-transactions"

FENCING_CODES = frozenset(
    {
        KafkaError._FENCED,
        KafkaError.PRODUCER_FENCED,
        KafkaError.INVALID_PRODUCER_EPOCH,
        KafkaError.FENCED_INSTANCE_ID,
    }
)
"""This producer is a zombie: a newer one of its transactional id (or of its static group
instance) exists, or the broker aborted its transaction past the timeout: stop."""

GROUP_MOVED_CODES = frozenset(
    {
        KafkaError.ILLEGAL_GENERATION,
        KafkaError.UNKNOWN_MEMBER_ID,
        KafkaError.REBALANCE_IN_PROGRESS,
    }
)
"""``send_offsets_to_transaction`` with an old group generation: the group rebalanced since
(in ordinary cooperative rebalances too, not only for zombies). The transaction cannot
commit: it is aborted (nothing of it becomes visible) and the partitions still ours are
rewound; partitions that moved are revoked or lost at the consumer's next poll."""

ErrorKind = Literal["fenced", "stuck", "fatal", "abortable", "retriable"]


def check_guarantee(value: object, where: str = "guarantee") -> Guarantee:
    """``value`` if it names a guarantee, else a ``ValueError`` naming ``where``."""
    if value not in GUARANTEES:
        raise ValueError(
            f"{where} must be 'at_least_once' (the default) or 'exactly_once', got {value!r}"
        )
    return value  # type: ignore[return-value]


def transaction_error_kind(error: BaseException) -> ErrorKind:
    """What to do about a transactional call's error: stop (``fenced``/``fatal``), abort
    and rewind (``abortable``), or call again (``retriable``)."""
    if isinstance(error, TransactionalCallStuck):
        return "stuck"
    kafka = kafka_error(error)
    if kafka is None:
        return "fatal"
    if kafka.code() in FENCING_CODES:
        return "fenced"
    if kafka.code() in GROUP_MOVED_CODES:
        return "abortable"
    if kafka.fatal():
        return "fatal"
    if kafka.txn_requires_abort():
        return "abortable"
    if kafka.retriable():
        return "retriable"
    return "fatal"


def default_transactional_id(group_id: str) -> str:
    """Unique per worker instance (KIP-447 needs no more): group, host and process id."""
    return f"headrace-{group_id}-{socket.gethostname()}-{os.getpid()}"


class Participant(Protocol):
    """A Kafka source as the coordinator sees it (``KafkaSource`` under exactly_once)."""

    group_id: str
    tracker: OffsetTracker
    in_callback: bool

    @property
    def fetching(self) -> bool:
        """Its fetch loop runs (a stopped source needs no parking)."""

    async def group_metadata(self) -> Any:
        """The consumer's ``consumer_group_metadata()``, read on its own thread."""

    def taken(self) -> int:
        """Inputs taken so far (a counter)."""

    def forget_uncommitted(self, exclude: Iterable[TP] = ()) -> dict[TP, int | None]:
        """Drop the in-flight state of partitions that took inputs since their last commit;
        returns them with that offset (None: ask the broker) to seek back to."""

    async def seek_back(self) -> None:
        """Apply the seeks ``forget_uncommitted`` queued (consumer thread)."""


class TransactionStopped(RuntimeError):
    """The coordinator stopped the worker (fenced or fatal); nothing more is committed."""


class TransactionCoordinator:
    """Begins, fills, commits and aborts the worker's transactions (see the module doc)."""

    def __init__(
        self,
        producer: TransactionalProducer,
        *,
        commit_interval: float = 1.0,
        max_inputs: int = 10_000,
        barrier_timeout: float = 10.0,
        max_retries: int = 5,
        max_recoveries: int = 3,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not commit_interval > 0:
            raise ValueError(f"commit_interval must be > 0 seconds, got {commit_interval!r}")
        if not isinstance(max_inputs, int) or max_inputs < 1:
            raise ValueError(f"max_inputs must be an integer >= 1, got {max_inputs!r}")
        self.producer = producer
        producer.on_doomed = self._wake_now  # a failed message: end (abort) it soon
        self.commit_interval = commit_interval
        self.max_inputs = max_inputs
        self.barrier_timeout = barrier_timeout
        self.max_retries = max_retries
        self.max_recoveries = max_recoveries
        """Fenced producers re-initialised per minute before a fencing stops the worker."""
        self._recoveries: list[float] = []
        self.clock = clock
        self.sources: list[Participant] = []
        self.runtime: Runtime | None = None
        self.stopped = False
        self._lock = asyncio.Lock()
        self._hold = False
        self._released = asyncio.Event()
        self._released.set()
        self._parked: set[int] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._started: asyncio.Future[None] | None = None
        self._opened_at = clock()
        self._taken_at_commit: dict[int, int] = {}
        self._abort_listeners: list[Callable[[list[TP]], None]] = []
        self._commit_listeners: list[Callable[[], None]] = []
        self._busy: list[Callable[[], bool]] = []
        self.stats: dict[str, Any] = {
            "committed": 0,
            "aborted": 0,
            "retries": 0,
            "recoveries": 0,
            "barrier_timeouts": 0,
            "records": 0,
            "inputs": 0,
            "last_duration": None,
            "max_duration": 0.0,
            "total_duration": 0.0,
            "last_records": 0,
            "max_records": 0,
        }

    # -- wiring ------------------------------------------------------------------------
    def attach(self, source: Participant) -> None:
        if source not in self.sources:
            self.sources.append(source)

    def join(self, part: Any, name: str) -> None:
        """Make a Kafka sink or Kafka dead-letter sink (anything with a ``producer``
        attribute) produce inside the transactions."""
        part.producer = TransactionalView(self, name)

    def add_abort_listener(self, listener: Callable[[list[TP]], None]) -> None:
        """``listener(partitions)`` runs on the loop after an abort rewound ``partitions``
        (keyed caches reload from their changelog, say)."""
        self._abort_listeners.append(listener)

    def add_commit_listener(self, listener: Callable[[], None]) -> None:
        """``listener()`` runs on the loop after each transaction committed."""
        self._commit_listeners.append(listener)

    def add_busy(self, busy: Callable[[], bool]) -> None:
        """A commit's barrier also waits while ``busy()`` (work on inputs already acked, say
        a keyed fire on values the changelog holds: its outputs belong to this transaction)."""
        self._busy.append(busy)

    async def start(self, runtime: Runtime | None = None) -> None:
        """Open the producer (fences older instances of its id) and start the commit timer;
        idempotent (every attached source calls it)."""
        if runtime is not None and self.runtime is None:
            self.runtime = runtime
        if self._started is not None:
            await asyncio.shield(self._started)
            return
        self._started = asyncio.get_running_loop().create_future()
        try:
            await self.producer.start()
        except BaseException as error:
            self._started.set_exception(error)
            self._started.exception()  # retrieved: others see it through shield
            raise
        self._started.set_result(None)
        self._opened_at = self.clock()
        self._task = asyncio.create_task(self._timer(), name=COMPONENT)
        if self.runtime is not None:
            self.runtime.supervise(self._task, COMPONENT)
        log.info(
            "exactly-once transactions started",
            transactional_id=self.producer.transactional_id,
            commit_interval=self.commit_interval,
            max_inputs=self.max_inputs,
        )

    # -- producing (the hook for other writers) -----------------------------------------
    def produce_nowait(
        self,
        topic: str,
        key: bytes | str | None,
        value: bytes | None,
        delivered: Delivered,
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> bool:
        """Produce inside the open transaction; False: none open or full (use ``produce``)."""
        return self.producer.produce_nowait(topic, value, key, headers, delivered, partition)

    async def produce(
        self,
        topic: str,
        key: bytes | str | None,
        value: bytes | None,
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        """Produce inside the open transaction; returns once the broker has the message.
        It commits (or aborts) with the inputs being handled now."""
        await self.producer.produce(topic, value, key, headers, partition)

    # -- the sources' side ---------------------------------------------------------------
    async def gate(self, source: Participant) -> None:
        """Awaited by a source before each fetch: parks it while a transaction ends, and
        asks for a commit once ``max_inputs`` inputs were taken."""
        if self._hold:
            self._parked.add(id(source))
            try:
                while self._hold:
                    await self._released.wait()
            finally:
                self._parked.discard(id(source))
        if self.inputs_since_commit() >= self.max_inputs:
            self._wake.set()

    def inputs_since_commit(self) -> int:
        return sum(s.taken() - self._taken_at_commit.get(id(s), 0) for s in self.sources)

    def in_flight(self) -> int:
        return sum(s.tracker.in_flight() for s in self.sources)

    def _quiet(self, callback: Participant | None, held_ok: bool) -> bool:
        return (
            all(
                id(s) in self._parked or s.in_callback or not s.fetching or s is callback
                for s in self.sources
            )
            and (not self.in_flight() or (held_ok and self._only_held()))
            and not any(busy() for busy in self._busy)
        )

    def _only_held(self) -> bool:
        """Every input still in flight is held by a reactor that waits for more (a
        ``when_all`` for its other half, a batch for its flush): no reactor fires or owes a
        fire, no dead letter is on its way. A commit leaves those inputs out (each
        partition's position stops below its lowest one) instead of waiting for them."""
        reactors = getattr(self.runtime, "reactors", None)
        if reactors is None:
            return False
        if any(loop.busy for loop in reactors.values()):
            return False
        return not any(getattr(s, "dead_letters_in_flight", 0) for s in self.sources)

    async def _barrier(self, callback: Participant | None, held_ok: bool = False) -> bool:
        """Hold the sources and wait until every taken input is handled (``held_ok``: or
        held by a waiting reactor, see ``_only_held``); False on timeout."""
        self._hold = True
        self._released.clear()
        deadline = self.clock() + self.barrier_timeout
        while not self._quiet(callback, held_ok):
            if self.clock() >= deadline or self._failed():
                return False
            await asyncio.sleep(0.002)
        return await self.producer.drain(max(0.0, deadline - self.clock()))

    def _release(self) -> None:
        self._hold = False
        self._released.set()

    def _failed(self) -> bool:
        return self.runtime is not None and bool(self.runtime.supervisor.failed)

    def _wake_now(self) -> None:
        self._wake.set()

    # -- committing ----------------------------------------------------------------------
    async def _timer(self) -> None:
        """Commit every ``commit_interval`` or once ``max_inputs`` inputs were taken."""
        while not self.stopped:
            due = self._opened_at + self.commit_interval - self.clock()
            if (
                due > 0
                and self.inputs_since_commit() < self.max_inputs
                and not self.producer.doomed
            ):
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), due)
                continue
            await self.commit("interval")

    async def commit(self, reason: str, callback: Participant | None = None) -> bool:
        """End the open transaction with the positions of every handled input.

        ``callback``: the source calling from inside a rebalance callback (its consumer
        thread waits for this; it is not parked). Returns whether it committed.
        """
        async with self._lock:
            if self.stopped or not self.producer.is_open:
                return False
            started = self.clock()
            try:
                settled = await self._barrier(callback, held_ok=True)
                if not settled:
                    self.stats["barrier_timeouts"] += 1
                    log.warning(
                        "transaction commits with inputs still in flight: their outputs may "
                        "repeat after a crash (a fire or a sink is stuck)",
                        reason=reason,
                        in_flight=self.in_flight(),
                        barrier_timeout=self.barrier_timeout,
                    )
                if self.producer.doomed:
                    await self._abort(f"{reason}: a message of the transaction failed", callback)
                    return False
                offsets = [(s.tracker.committable(), s) for s in self.sources]
                records = self.producer.produced_in_transaction
                if not records and not any(positions for positions, _ in offsets):
                    self._opened_at = self.clock()
                    self._mark_taken()
                    return True
                committed = await self._end(offsets, reason, callback)
                if committed:
                    self._record(started, records, offsets)
                return committed
            finally:
                self._release()

    async def _end(
        self,
        offsets: list[tuple[dict[TP, int], Participant]],
        reason: str,
        callback: Participant | None,
    ) -> bool:
        with_metadata = [
            (positions, await s.group_metadata()) for positions, s in offsets if positions
        ]
        try:
            await self.producer.commit(with_metadata)
        except Exception as error:
            if not await self._after_commit_error(error, reason, callback, with_metadata):
                return False
        for positions, source in offsets:
            source.tracker.mark_committed(positions)  # type: ignore[arg-type]
        for listener in self._commit_listeners:
            try:
                listener()
            except Exception:
                log.exception("commit listener failed")
        await self.producer.begin()
        return True

    async def _after_commit_error(
        self,
        error: BaseException,
        reason: str,
        callback: Participant | None,
        offsets: list[tuple[dict[TP, int], Any]],
    ) -> bool:
        """Retry a retriable commit; abort and rewind an abortable one; stop otherwise.
        True when the commit went through after all."""
        kind = transaction_error_kind(error)
        for _ in range(self.max_retries):
            if kind != "retriable":
                break
            self.stats["retries"] += 1
            log.warning("transaction commit failed; retrying", reason=reason, error=str(error))
            await asyncio.sleep(0.1)
            try:
                await self.producer.retry_commit(offsets)
                return True
            except Exception as again:
                error, kind = again, transaction_error_kind(again)
        if kind == "abortable" or kind == "retriable":
            log.warning("transaction commit failed; aborting", reason=reason, error=str(error))
            await self._abort(f"commit failed: {error}", callback)
            return False
        if self._client_unusable(kind, error):
            await self._recover(error, reason, callback)
            return False
        self._stop(kind, error, reason)
        return False

    @staticmethod
    def _client_unusable(kind: str, error: BaseException) -> bool:
        """The producer client cannot go on, but a new one can: fenced, a call stuck, or a
        fatal Kafka error (e.g. INVALID_TXN_STATE after the broker aborted a transaction
        that outlived its timeout during an outage)."""
        return kind in ("fenced", "stuck") or (kind == "fatal" and kafka_error(error) is not None)

    def _may_recover(self) -> bool:
        """Whether a fenced producer may be re-initialised (at most ``max_recoveries`` a
        minute); counts this one."""
        now = self.clock()
        self._recoveries = [t for t in self._recoveries if now - t < 60.0]
        if len(self._recoveries) >= self.max_recoveries:
            return False
        self._recoveries.append(now)
        return True

    async def _recover(
        self, error: BaseException, reason: str, callback: Participant | None
    ) -> None:
        """A fenced producer: its open transaction is gone. Take a fresh epoch for the same
        transactional id and rewind every partition to its last commit, like an abort.

        Safe for a real zombie too: its offsets carry an old group generation, so its next
        commit is refused and rewound until the group gives it partitions again. A fencing
        that keeps coming back (another live worker shares the transactional id) stops the
        worker after ``max_recoveries`` in a minute."""
        if not self._may_recover():
            self._stop(transaction_error_kind(error), error, reason)
            return
        log.warning(
            "transactional producer unusable (fenced: its transaction outlived the broker's "
            "timeout or another instance took its id; or a call stuck past its timeout); "
            "re-initialising it and rewinding to the last commit",
            reason=reason,
            error=str(error),
            transactional_id=self.producer.transactional_id,
        )
        self.producer.discarding = True
        try:
            if not await self._barrier(callback):
                self._stop(
                    "fatal",
                    RuntimeError(
                        f"inputs still in flight {self.barrier_timeout} s after a fencing: "
                        "their outputs cannot be discarded"
                    ),
                    reason,
                )
                return
            try:
                await self.producer.restart()
            except Exception as again:
                self._stop(transaction_error_kind(again), again, reason)
                return
            rewound: list[TP] = []
            for source in self.sources:
                rewound.extend(source.forget_uncommitted())
                if source is not callback and not source.in_callback:
                    await source.seek_back()
        finally:
            self.producer.discarding = False
        self.stats["aborted"] += 1
        self.stats["recoveries"] += 1
        self._opened_at = self.clock()
        self._mark_taken()
        self._rewound(rewound, f"{reason}: fenced")

    def _rewound(self, rewound: list[TP], reason: str) -> None:
        """Log an abort's rewind and tell the abort listeners (keyed state reloads)."""
        log.warning(
            "transaction aborted; partitions rewound to their last commit",
            reason=reason,
            partitions=sorted(f"{t}[{p}]" for t, p in rewound),
        )
        for listener in self._abort_listeners:
            try:
                listener(rewound)
            except Exception:
                log.exception("abort listener failed")

    def _stop(self, kind: str, error: BaseException, reason: str) -> None:
        self.stopped = True
        self._release()
        if kind == "fenced":
            message = (
                "transaction fenced: another worker owns these partitions now (newer group "
                f"generation or producer epoch); stopping this worker: {error}"
            )
        else:
            message = f"transaction failed for good ({kind}); stopping this worker: {error}"
        if kind != "fenced" and self.stats["recoveries"]:
            message += f" (after {self.stats['recoveries']} re-initialised producers)"
        log.error(message, reason=reason, transactional_id=self.producer.transactional_id)
        if self.runtime is not None:
            self.runtime.fail(COMPONENT, message)

    def _mark_taken(self) -> None:
        self._taken_at_commit = {id(s): s.taken() for s in self.sources}

    def _record(
        self, started: float, records: int, offsets: list[tuple[dict[TP, int], Participant]]
    ) -> None:
        now = self.clock()
        duration = now - self._opened_at
        inputs = self.inputs_since_commit()
        stats = self.stats
        stats["committed"] += 1
        stats["records"] += records
        stats["inputs"] += inputs
        stats["last_duration"] = duration
        stats["max_duration"] = max(stats["max_duration"], duration)
        stats["total_duration"] += duration
        stats["last_records"] = records
        stats["max_records"] = max(stats["max_records"], records)
        stats["last_commit_seconds"] = now - started
        self._opened_at = now
        self._mark_taken()
        log.debug(
            "transaction committed",
            records=records,
            inputs=inputs,
            offsets=[labelled(positions) for positions, _ in offsets if positions],
        )

    # -- aborting ------------------------------------------------------------------------
    async def abort(
        self, reason: str, callback: Participant | None = None, exclude: Iterable[TP] = ()
    ) -> None:
        """Abort the open transaction and rewind every partition (but ``exclude``)."""
        async with self._lock:
            if self.stopped or not self.producer.started:
                return
            try:
                await self._abort(reason, callback, exclude)
            finally:
                self._release()

    async def _abort(
        self, reason: str, callback: Participant | None, exclude: Iterable[TP] = ()
    ) -> None:
        """Discard what is still in flight (it is consumed again), abort, rewind, begin."""
        exclude = list(exclude)
        self.producer.discarding = True
        try:
            settled = await self._barrier(callback)
            if not settled:
                self._stop(
                    "fatal",
                    RuntimeError(
                        f"inputs still in flight {self.barrier_timeout} s after an abort began: "
                        "their outputs cannot be discarded"
                    ),
                    reason,
                )
                return
            if not await self._abort_until_done(reason):
                return
            rewound: list[TP] = []
            for source in self.sources:
                rewound.extend(source.forget_uncommitted(exclude))
                if source is not callback and not source.in_callback:
                    await source.seek_back()
        finally:
            self.producer.discarding = False
        self.stats["aborted"] += 1
        self._opened_at = self.clock()
        self._mark_taken()
        self._rewound(rewound, reason)
        if not self.producer.is_open:  # a re-initialised producer has begun already
            await self.producer.begin()

    async def _abort_until_done(self, reason: str) -> bool:
        """``abort_transaction``, again while its errors are retriable (Kafka away: as long
        as it takes, like deliveries); False when it failed for good (the worker stops)."""
        delay = 0.1
        while True:
            try:
                await self.producer.abort()
                return True
            except Exception as error:
                kind = transaction_error_kind(error)
                if self._client_unusable(kind, error) and self._may_recover():
                    log.warning(
                        "transactional producer unusable while aborting (fenced, stuck or fatal); "
                        "re-initialising it",
                        reason=reason,
                        error=str(error),
                        transactional_id=self.producer.transactional_id,
                    )
                    try:
                        await self.producer.restart()  # its transaction is gone already
                    except Exception as again:
                        self._stop(transaction_error_kind(again), again, reason)
                        return False
                    self.stats["recoveries"] += 1
                    return True
                if kind != "retriable" or self._failed():
                    self._stop(kind, error, reason)
                    return False
                self.stats["retries"] += 1
                log.warning("transaction abort failed; retrying", reason=reason, error=str(error))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    # -- closing -------------------------------------------------------------------------
    async def detach(self, source: Participant) -> None:
        """A source closes: commit what it handled; the last one closes the producer."""
        if source not in self.sources:
            return
        try:
            await self.commit("close")
        finally:
            with contextlib.suppress(ValueError):
                self.sources.remove(source)
        if not self.sources:
            await self.close()

    async def close(self) -> None:
        self.stopped = True
        self._release()
        self._wake.set()
        if self._task is not None:
            task, self._task = self._task, None
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await task
        await self.producer.close()

    def health(self) -> dict[str, Any]:
        stats = self.stats
        committed = stats["committed"]
        return {
            **stats,
            "average_duration": stats["total_duration"] / committed if committed else None,
            "records_per_transaction": stats["records"] / committed if committed else None,
            "open_records": self.producer.produced_in_transaction,
            "producer": self.producer.health(),
        }


class TransactionalView:
    """What a Kafka sink or dead-letter sink sees as its ``producer``: the shared
    transactional producer, whose lifecycle the coordinator owns."""

    def __init__(self, coordinator: TransactionCoordinator, name: str) -> None:
        self.coordinator = coordinator
        self.name = name
        self.on_fatal: Callable[[Any], None] | None = None
        self.produced = 0

    @property
    def started(self) -> bool:
        return True

    def start(self) -> None:
        """The coordinator starts the producer (with the first source)."""

    def poll_thread_alive(self) -> bool:
        return self.coordinator.producer.poll_thread_alive()

    def produce_nowait(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | str | None,
        headers: list[tuple[str, bytes]] | None,
        delivered: Delivered,
    ) -> bool:
        producer = self.coordinator.producer
        if not producer.started:
            return False
        accepted = producer.produce_nowait(topic, value, key, headers, delivered)
        self.produced += accepted
        return accepted

    async def produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | str | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        producer = self.coordinator.producer
        while not producer.started:
            if self.coordinator.stopped:
                raise TransactionStopped("the worker's transactions stopped")
            await asyncio.sleep(0.05)
        await producer.produce(topic, value, key, headers)
        self.produced += 1

    async def close(self, timeout: float = 10.0) -> None:
        """Wait for what is in flight; the coordinator commits and closes the producer."""
        if self.coordinator.producer.started:
            await self.coordinator.producer.drain(timeout)

    def health(self) -> dict[str, Any]:
        return {"transactional": True, "produced": self.produced}


__all__ = [
    "GUARANTEES",
    "Guarantee",
    "Participant",
    "TransactionCoordinator",
    "TransactionStopped",
    "TransactionalView",
    "check_guarantee",
    "default_transactional_id",
    "transaction_error_kind",
]
