"""Delivery bookkeeping shared by the producers whose reports come back on the event loop.

The sink producer is polled by the loop itself: its reports are settled inside that poll
(``polling_on_loop``). A producer polled by a thread of its own (the transactional one)
collects the reports (``on_delivery``) and hands them to the loop in batches
(``hand_over``: one ``call_soon_threadsafe`` per poll, not per message). Either way each
report is counted and given to its message's ``Delivered`` through ``settle`` (a
transactional producer reports a failed message as done and dooms its transaction
instead). ``space`` and ``idle`` let writers wait for room and ``drain`` for everything in
flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from functools import partial
from typing import Any

import structlog
from confluent_kafka import KafkaException

log = structlog.get_logger("headrace.kafka")

Delivered = Callable[[BaseException | None], None]
"""Called on the event loop with ``None`` once a message is durable, else with the error."""

Report = tuple[Delivered, BaseException | None]


def settle_plainly(delivered: Delivered, error: BaseException | None) -> None:
    delivered(error)


class DeliveryCounts:
    """``in_flight``, ``delivered`` and ``failed`` of a producer that keeps ``deliveries``."""

    deliveries: Deliveries

    @property
    def in_flight(self) -> int:
        return self.deliveries.in_flight

    @property
    def delivered(self) -> int:
        return self.deliveries.delivered

    @property
    def failed(self) -> int:
        return self.deliveries.failed


class Deliveries:
    """Messages in flight of one producer, their reports, and the events to wait on."""

    def __init__(
        self,
        name: str,
        max_in_flight: int,
        settle: Callable[[Delivered, BaseException | None], None] = settle_plainly,
    ) -> None:
        self.name = name
        self.max_in_flight = max_in_flight
        self.settle = settle
        self.in_flight = 0
        self.delivered = 0
        self.failed = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self._reports: list[Report] = []
        self.polling_on_loop = False
        """True while the loop itself polls the client (``DeliveryProducer``): the
        reports are settled as they come, with no list and no lock."""
        self._lock = threading.Lock()
        self.space = asyncio.Event()
        self.idle = asyncio.Event()

    def open(self, loop: asyncio.AbstractEventLoop) -> None:
        """A (new) client starts on ``loop``: nothing is in flight."""
        self.loop = loop
        self.in_flight = 0
        self.space.set()
        self.idle.set()

    # -- the producing side (loop) ------------------------------------------------------
    def full(self) -> bool:
        """Whether no more may be produced now (``space`` is cleared until there is)."""
        if self.in_flight >= self.max_in_flight:
            self.space.clear()
            return True
        return False

    def callback(self, delivered: Delivered) -> Callable[[Any, Any], None]:
        """The ``on_delivery`` of a message whose report goes to ``delivered``."""
        return partial(self.on_delivery, delivered)

    def sent(self, count: int = 1) -> None:
        """``count`` messages were handed to the client (``idle`` is cleared on the first)."""
        if self.in_flight == 0:
            self.idle.clear()
        self.in_flight += count

    def refused(self) -> None:
        """The client's queue was full: wait for ``space``."""
        self.space.clear()

    # -- the poll thread ---------------------------------------------------------------
    def on_delivery(self, delivered: Delivered, error: Any, _msg: Any) -> None:
        """``on_delivery`` (bound to ``delivered``): inside the loop's own poll
        (``polling_on_loop``) the report is settled at once; otherwise it is kept for
        ``hand_over`` or ``take_reports``."""
        failure = None if error is None else KafkaException(error)
        if self.polling_on_loop:
            self.in_flight -= 1
            self._settle(delivered, failure)
            return
        with self._lock:
            self._reports.append((delivered, failure))

    def hand_over(self) -> None:
        """Poll thread (after each poll): pass the collected reports to the loop."""
        with self._lock:
            reports, self._reports = self._reports, []
        if reports and self.loop is not None:
            with contextlib.suppress(RuntimeError):  # loop closed: nobody waits any more
                self.loop.call_soon_threadsafe(self.dispatch, reports)

    def take_reports(self) -> list[Report]:
        """The reports not handed over yet (after the poll thread stopped)."""
        with self._lock:
            reports, self._reports = self._reports, []
        return reports

    # -- on the loop -------------------------------------------------------------------
    def _settle(self, delivered: Delivered, error: BaseException | None) -> None:
        """Count one report and hand it to its ``Delivered`` (through ``settle``)."""
        if error is None:
            self.delivered += 1
        else:
            self.failed += 1
        try:
            if self.settle is settle_plainly:
                delivered(error)
            else:
                self.settle(delivered, error)
        except Exception:
            log.exception("delivery callback failed", producer=self.name)

    def dispatch(self, reports: list[Report]) -> None:
        self.in_flight -= len(reports)
        for delivered, error in reports:
            self._settle(delivered, error)
        self.settled()

    def settled(self) -> None:
        """After reports were settled: wake writers waiting for room or for idleness."""
        if self.in_flight < self.max_in_flight:
            self.space.set()
        if self.in_flight == 0:
            self.idle.set()

    async def drain(self, timeout: float | None = None) -> bool:
        """Wait until every produced message has its report handled; False on timeout."""
        try:
            async with asyncio.timeout(timeout):
                while self.in_flight:
                    self.idle.clear()
                    await self.idle.wait()
        except TimeoutError:
            return False
        return True


GroupDone = Callable[[list[Any], list[tuple[Any, BaseException]]], None]
"""Told once a sealed group's reports are all in: the tokens of the delivered messages, and
each failed message's token with its error (in the order the messages were produced)."""


class ReportGroup:
    """Messages produced as one group (a reactor's batch): one ``on_delivery`` for all.

    Each message carries a token (what the producer of the group needs back, e.g. its
    fire); ``report`` is handed to confluent-kafka as the ``on_delivery`` of every message,
    so a report costs one call and no ``partial``. Each report leaves the producer's
    ``in_flight`` at once (room for more, even before the seal); once ``seal``-ed and every
    report is in, ``delivered``/``failed`` move by the whole group and ``on_done`` hears
    which tokens were delivered and which failed. A failed report is matched back to its
    token by the message's value and key (identical messages are interchangeable).
    """

    __slots__ = (
        "_deliveries",
        "_failures",
        "_on_done",
        "_reported",
        "_sealed",
        "keys",
        "tokens",
        "values",
    )

    def __init__(self, deliveries: Deliveries, on_done: GroupDone) -> None:
        self._deliveries = deliveries
        self._on_done = on_done
        self.values: list[bytes | None] = []
        self.keys: list[Any] = []
        self.tokens: list[Any] = []
        self._failures: list[tuple[Any, Any]] = []  # (KafkaError, message)
        self._reported = 0
        self._sealed = False

    def report(self, error: Any, msg: Any) -> None:
        """``on_delivery`` of every message of the group. Inside the loop's own poll it is
        counted at once (the poll wakes waiting writers after); a flush on another thread
        hands it to the loop."""
        deliveries = self._deliveries
        if deliveries.polling_on_loop:  # _count(error, msg, False), inlined: once per message
            deliveries.in_flight -= 1
            self._reported += 1
            if error is not None:
                self._failures.append((error, msg))
            if self._sealed and self._reported == len(self.values):
                self._finish()
        elif deliveries.loop is not None:
            with contextlib.suppress(RuntimeError):  # loop closed: nobody waits any more
                deliveries.loop.call_soon_threadsafe(self._count, error, msg, True)

    def _count(self, error: Any, msg: Any, wake: bool) -> None:
        """Count one report (on the loop); the last one of a sealed group finishes it. With
        ``wake`` (not inside the loop's poll, which does it after) it tells waiting writers
        (``Deliveries.settled``)."""
        self._deliveries.in_flight -= 1
        self._reported += 1
        if error is not None:
            self._failures.append((error, msg))
        if self._sealed and self._reported == len(self.values):
            self._finish()
        if wake:
            self._deliveries.settled()

    def seal(self) -> None:
        """No more messages join: ``on_done`` follows once every report is in."""
        self._sealed = True
        if self._reported == len(self.values):
            self._finish()
            self._deliveries.settled()

    def _finish(self) -> None:
        count, failed = len(self.values), len(self._failures)
        deliveries = self._deliveries
        deliveries.delivered += count - failed
        deliveries.failed += failed
        tokens = self.tokens
        failures: list[tuple[Any, BaseException]] = []
        if failed:
            taken: set[int] = set()
            for error, msg in self._failures:
                index = self._index_of(msg, taken)
                taken.add(index)
                failures.append((tokens[index], KafkaException(error)))
            tokens = [token for index, token in enumerate(tokens) if index not in taken]
        try:
            self._on_done(tokens, failures)
        except Exception:
            log.exception("delivery callback failed", producer=deliveries.name)

    def _index_of(self, msg: Any, taken: set[int]) -> int:
        """The first message not matched yet with this value and key (else the first
        unmatched one: a report always belongs to one of the group's messages)."""
        value, key = msg.value(), msg.key()
        spare = -1
        for index, candidate in enumerate(self.values):
            if index in taken:
                continue
            if candidate == value and _same_key(self.keys[index], key):
                return index
            if spare < 0:
                spare = index
        return spare


def _same_key(produced: Any, reported: bytes | None) -> bool:
    if isinstance(produced, str):
        produced = produced.encode()
    return produced == reported
