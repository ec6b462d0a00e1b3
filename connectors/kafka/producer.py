"""A confluent-kafka producer whose delivery reports come back on the asyncio loop.

The loop itself polls the producer (``poll(0)`` every ``POLL_BUSY`` seconds while
messages are in flight, every ``POLL_IDLE`` otherwise), so each delivery callback runs
where the GIL already is. A poll thread had to take the GIL from the busy loop once per
message, which cost more than the callbacks themselves (tests/bench/PROFILE.md). The
reports are counted and settled by ``Deliveries``, shared with the transactional producer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import structlog
from confluent_kafka import KafkaError, KafkaException, Producer

from headrace.connectors.kafka.deliveries import (
    Delivered,
    Deliveries,
    DeliveryCounts,
    GroupDone,
    ReportGroup,
)

log = structlog.get_logger("headrace.kafka")

POLL_BUSY = 0.003
"""Seconds between the loop's polls while messages are in flight (delivery reports)."""
POLL_IDLE = 0.1
"""Seconds between polls while none are (client errors still reach ``error_cb``)."""

LIBRDKAFKA_LOGGER = logging.getLogger("headrace.kafka.librdkafka")
"""librdkafka's own log lines, through the standard library (and so structlog)."""
READ_AHEAD: dict[str, Any] = {"fetch.queue.backoff.ms": 20}
"""Every consumer's (sources, changelog restores, global tables). Once the prefetch queue
holds ``queued.min.messages``, librdkafka waits this long before it fetches again; its
default (1000 ms) let a consumer that drains 100k messages in less than a second sit idle
for the rest of it (a backlog read at 155k instead of 830k msg/s by the raw loop of
tests/bench). The queue's bounds stay as they are."""

PRODUCER_DEFAULTS: dict[str, Any] = {
    "acks": "all",
    "enable.idempotence": True,
    # A reactor's batch of results is produced at once, so the client batches them without
    # a long linger; 2 ms (librdkafka's default is 5) takes about 2 ms off produce->output
    # at 5,000 msg/s and costs no CPU per message at full speed (tests/bench/PROFILE.md).
    "linger.ms": 2,
    "compression.type": "none",
    "logger": LIBRDKAFKA_LOGGER,
}


FatalHandler = Callable[[KafkaError], None]
"""Told (on the client's thread) about a fatal client error: the client is unusable."""

RETRIABLE_CODES = frozenset(
    {
        KafkaError._MSG_TIMED_OUT,
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._TIMED_OUT,
        KafkaError._QUEUE_FULL,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.NOT_ENOUGH_REPLICAS,
        KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.BROKER_NOT_AVAILABLE,
        KafkaError.NETWORK_EXCEPTION,
    }
)
"""Delivery errors that only mean Kafka was away for a while: send again, later."""


def kafka_error(error: BaseException | None) -> KafkaError | None:
    if isinstance(error, KafkaException) and error.args and isinstance(error.args[0], KafkaError):
        return error.args[0]
    return None


def error_kind(error: BaseException) -> str:
    """``"fatal"`` (the client is unusable), ``"retriable"`` (Kafka was away: send again
    with backoff) or ``"permanent"`` (this message will never go: dead-letter it)."""
    if isinstance(error, BufferError):
        return "retriable"  # local queue full
    kafka = kafka_error(error)
    if kafka is None:
        return "permanent"
    if kafka.fatal():
        return "fatal"
    if kafka.code() in RETRIABLE_CODES or kafka.retriable():
        return "retriable"
    return "permanent"


class ErrorLog:
    """Logs client errors (broker down, ...) without flooding: each kind once per interval.

    librdkafka keeps reconnecting by itself; these are reports, not failures to act on,
    except a fatal error (a fenced idempotent producer, say): it goes to ``on_fatal``.
    """

    def __init__(self, what: str, interval: float = 30.0) -> None:
        self.what = what
        self.interval = interval
        self.count = 0
        self.fatal: KafkaError | None = None
        self.on_fatal: FatalHandler | None = None
        self._last: dict[int, tuple[float, int]] = {}

    def __call__(self, error: KafkaError) -> None:
        self.count += 1
        if error.fatal():
            self.fatal = self.fatal or error
            if self.on_fatal is not None:
                try:
                    self.on_fatal(error)
                except Exception:  # never raise into librdkafka
                    log.exception(f"kafka {self.what}: fatal error handler failed")
        now = time.monotonic()
        last, suppressed = self._last.get(error.code(), (-self.interval, 0))
        if now - last < self.interval and not error.fatal():
            self._last[error.code()] = (last, suppressed + 1)
            return
        self._last[error.code()] = (now, 0)
        log.warning(
            f"kafka {self.what} error", error=str(error), fatal=error.fatal(), repeats=suppressed
        )


class DeliveryProducer(DeliveryCounts):
    """Produces messages and calls ``on_delivered(error)`` on the loop for each of them."""

    def __init__(
        self,
        bootstrap_servers: str,
        config: dict[str, Any] | None = None,
        *,
        max_in_flight: int = 100_000,
        name: str = "producer",
    ) -> None:
        self.errors = ErrorLog(f"{name} producer")
        self.config = {
            **PRODUCER_DEFAULTS,
            "error_cb": self.errors,
            **(config or {}),
            "bootstrap.servers": bootstrap_servers,
        }
        self.max_in_flight = max_in_flight
        self.name = name
        self.deliveries = Deliveries(name, max_in_flight)
        self._producer: Producer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | asyncio.Handle | None = None
        self._busy = False  # the next poll is POLL_BUSY away, not POLL_IDLE

    @property
    def started(self) -> bool:
        return self._producer is not None

    @property
    def on_fatal(self) -> FatalHandler | None:
        return self.errors.on_fatal

    @on_fatal.setter
    def on_fatal(self, handler: FatalHandler | None) -> None:
        self.errors.on_fatal = handler

    def poll_thread_alive(self) -> bool:
        """False once started and nothing polls for delivery reports any more (the loop's
        poll reschedules itself whatever a poll raised, so only a stopped loop ends it)."""
        return self._producer is None or self._timer is not None

    def start(self) -> None:
        """Create the producer and start polling it on the loop; call from the event loop."""
        if self._producer is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._producer = Producer(self.config)
        self.deliveries.open(self._loop)
        self._busy = False
        self._timer = self._loop.call_soon(self._poll)

    # -- polling, on the loop ------------------------------------------------------------
    def _poll(self) -> None:
        """Serve delivery reports and client errors, settle the reports, poll again later."""
        producer, loop = self._producer, self._loop
        if producer is None or loop is None:
            self._timer = None
            return
        deliveries = self.deliveries
        try:
            deliveries.polling_on_loop = True
            try:
                producer.poll(0)
            finally:
                deliveries.polling_on_loop = False
            deliveries.settled()
            reports = deliveries.take_reports()  # any a flush on another thread kept
            if reports:
                deliveries.dispatch(reports)
        except Exception:  # never stop polling
            log.exception("kafka producer poll failed", producer=self.name)
        finally:
            self._busy = self.deliveries.in_flight > 0
            self._timer = loop.call_later(POLL_BUSY if self._busy else POLL_IDLE, self._poll)

    def _poll_soon(self) -> None:
        """The first message in flight: poll at the busy pace from now on, not in
        ``POLL_IDLE`` (``produce`` and dead letters wait for their report)."""
        if self._busy or self._loop is None or self._producer is None:
            return
        self._busy = True
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(POLL_BUSY, self._poll)

    # -- on the loop -------------------------------------------------------------------
    def produce_nowait(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | str | None,
        headers: list[tuple[str, bytes]] | None,
        delivered: Delivered,
        partition: int = -1,
    ) -> bool:
        """Hand one message to the producer; False when too many are in flight (try later).

        ``partition`` -1 lets the partitioner choose (by key)."""
        deliveries = self.deliveries
        if deliveries.full():
            return False
        producer = self._producer
        assert producer is not None, f"{self.name} is not started"
        try:
            producer.produce(
                topic,
                value,
                key,
                partition=partition,
                headers=headers,
                on_delivery=deliveries.callback(delivered),
            )
        except BufferError:
            deliveries.refused()
            return False
        self._sent(1)
        return True

    def _sent(self, count: int) -> None:
        """``count`` messages were handed to the client: count them, poll at the busy pace."""
        self.deliveries.sent(count)
        if not self._busy:
            self._poll_soon()

    def group(self, on_done: GroupDone) -> ReportGroup:
        """A group of messages reported together (``produce_many``, then ``seal``)."""
        return ReportGroup(self.deliveries, on_done)

    def produce_many(
        self,
        topic: str,
        values: list[bytes | None],
        keys: list[bytes | str | None],
        headers: list[tuple[str, bytes]] | None,
        group: ReportGroup,
        tokens: list[Any],
        start: int = 0,
    ) -> tuple[int, Exception | None]:
        """``produce_nowait`` for messages of ``group``, in order: their reports go to the
        group, and ``tokens[start + i]`` comes back in its ``on_done`` for ``values[i]``.
        Returns how many the client took, and the error of the next one when the client
        raised for it (None: it stopped because too many are in flight)."""
        deliveries = self.deliveries
        producer = self._producer
        assert producer is not None, f"{self.name} is not started"
        count = min(len(values), max(deliveries.max_in_flight - deliveries.in_flight, 0))
        produce, report = producer.produce, group.report
        taken = 0
        error: Exception | None = None
        try:
            # positional: topic, value, key, partition, callback, on_delivery, timestamp, headers
            while taken < count:
                produce(topic, values[taken], keys[taken], -1, report, None, 0, headers)
                taken += 1
        except BufferError:
            deliveries.refused()
        except Exception as failure:  # about this message (e.g. too large) or a fatal client
            error = failure
        if taken:
            group.values.extend(values[:taken])
            group.keys.extend(keys[:taken])
            group.tokens.extend(tokens[start : start + taken])
            self._sent(taken)
        if taken < len(values) and error is None:
            deliveries.full()  # clears ``space`` when in flight is at the bound
        return taken, error

    async def produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | str | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        """Produce one message and return once the broker confirmed it (raises on failure)."""
        assert self._loop is not None
        future: asyncio.Future[None] = self._loop.create_future()

        def delivered(error: BaseException | None) -> None:
            if not future.done():
                if error is None:
                    future.set_result(None)
                else:
                    future.set_exception(error)

        space = self.deliveries.space
        while not self.produce_nowait(topic, value, key, headers, delivered):
            space.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(space.wait(), 0.05)
        await future

    async def drain(self, timeout: float | None = None) -> bool:
        """Wait until every produced message has its delivery report handled."""
        return await self.deliveries.drain(timeout)

    async def close(self, timeout: float = 30.0) -> None:
        """Wait for what is in flight (then flush the rest), stop polling, drop the producer."""
        if self._producer is None:
            return
        drained = await self.drain(timeout)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not drained:
            remaining = await asyncio.to_thread(self._producer.flush, 1.0)
            self.deliveries.dispatch(self.deliveries.take_reports())
            if remaining:
                log.error("kafka producer closed with undelivered messages", remaining=remaining)
        self._producer = None

    def health(self) -> dict[str, Any]:
        return {
            "in_flight": self.in_flight,
            "delivered": self.delivered,
            "failed": self.failed,
            "client_errors": self.errors.count,
        }
