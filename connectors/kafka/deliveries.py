"""Delivery bookkeeping shared by the producers whose reports come back on the event loop.

A producer's poll thread collects delivery reports (``on_delivery``) and hands them to the
loop in batches (``hand_over``: one ``call_soon_threadsafe`` per poll, not per message);
on the loop ``dispatch`` counts them and calls each message's ``Delivered`` through
``settle`` (a transactional producer reports a failed message as done and dooms its
transaction instead). ``space`` and ``idle`` let writers wait for room and ``drain`` for
everything in flight.
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
        return partial(self._on_delivery, delivered)

    def sent(self) -> None:
        """A message was handed to the client."""
        self.in_flight += 1
        self.idle.clear()

    def refused(self) -> None:
        """The client's queue was full: wait for ``space``."""
        self.space.clear()

    # -- the poll thread ---------------------------------------------------------------
    def _on_delivery(self, delivered: Delivered, error: Any, _msg: Any) -> None:
        with self._lock:
            self._reports.append((delivered, None if error is None else KafkaException(error)))

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
    def dispatch(self, reports: list[Report]) -> None:
        self.in_flight -= len(reports)
        for delivered, error in reports:
            if error is None:
                self.delivered += 1
            else:
                self.failed += 1
            try:
                self.settle(delivered, error)
            except Exception:
                log.exception("delivery callback failed", producer=self.name)
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
