"""Bounded channels that carry delivered values from an accumulator to a reactor."""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

Ack = Callable[[], None]
"""Called exactly once when the value that carries it has been fully handled."""

_delivery_order = itertools.count()
next_seq = _delivery_order.__next__
"""The next ``Envelope.seq`` (passing it positionally is the cheapest way to build one)."""


def settle(acks: Iterable[Ack]) -> None:
    """Mark every ack done."""
    for ack in acks:
        ack()


class SharedAck:
    """Fans one set of acks out to ``parts`` holders; settles them when the last part is done."""

    __slots__ = ("_acks", "_remaining")

    def __init__(self, acks: tuple[Ack, ...], parts: int) -> None:
        self._acks = acks
        self._remaining = parts

    def __call__(self) -> None:
        self._remaining -= 1
        if self._remaining == 0:
            settle(self._acks)


@dataclass(slots=True)
class Envelope:
    """One delivered boundary value, its source accumulator and its completion acks."""

    accumulator: str
    value: Any
    acks: tuple[Ack, ...] = ()
    seq: int = field(default_factory=next_seq)
    key: str | None = None
    """The value's key when its accumulator has ``key=`` (keyed reactors group by it)."""
    partition: int | None = None
    """The input partition of the message that carried it (Kafka), for keyed changelogs."""

    def settle(self) -> None:
        settle(self.acks)


class OnceAck:
    """Settles its acks on the first call only (a value acked early, then fired)."""

    __slots__ = ("_acks",)

    def __init__(self, acks: tuple[Ack, ...]) -> None:
        self._acks: tuple[Ack, ...] | None = acks

    def __call__(self) -> None:
        acks, self._acks = self._acks, None
        if acks is not None:
            settle(acks)


class ChannelClosedError(RuntimeError):
    """The reactor behind a channel stopped for good (e.g. a graph halted with on_error=stop)."""


class Channel:
    """A bounded FIFO from one accumulator to one reactor.

    Producers either ``await put`` (waits while full) or check ``has_space`` and call
    ``put_nowait``; the reactor is woken through ``on_put``. ``on_space`` listeners run
    when an item is taken, so a paused Kafka source can resume.
    """

    def __init__(self, accumulator: str, maxsize: int = 1024) -> None:
        if maxsize < 1:
            raise ValueError(f"channel for accumulator {accumulator!r}: maxsize must be >= 1")
        self.accumulator = accumulator
        self.maxsize = maxsize
        self._items: deque[Envelope] = deque()
        self._space = asyncio.Event()
        self._space.set()
        self.on_put: Callable[[], None] = lambda: None
        self._space_listeners: list[Callable[[], None]] = []
        self.high_water = 0
        self.closed_reason: str | None = None

    def __len__(self) -> int:
        return len(self._items)

    @property
    def depth(self) -> int:
        return len(self._items)

    def has_space(self) -> bool:
        return len(self._items) < self.maxsize

    def put_nowait(self, envelope: Envelope) -> None:
        items = self._items
        depth = len(items)
        if depth >= self.maxsize:
            raise asyncio.QueueFull(f"channel {self.accumulator!r} is full ({self.maxsize})")
        items.append(envelope)
        self._grown(depth + 1)

    def put_many(self, envelopes: list[Envelope]) -> None:
        """``put_nowait`` for a run of envelopes, all or none (``QueueFull``), in order: the
        bound, the high water and the reactor's wake-up are dealt with once for the run."""
        if not envelopes:
            return
        items = self._items
        depth = len(items) + len(envelopes)
        if depth > self.maxsize:
            raise asyncio.QueueFull(
                f"channel {self.accumulator!r} has no room for {len(envelopes)} values "
                f"({len(items)} of {self.maxsize} taken)"
            )
        items.extend(envelopes)
        self._grown(depth)

    def _grown(self, depth: int) -> None:
        """The channel grew to ``depth``: high water, no space once full, wake the reactor."""
        if depth > self.high_water:
            self.high_water = depth
        if depth >= self.maxsize:
            self._space.clear()
        self.on_put()

    async def wait_for_space(self) -> None:
        """Return once the channel has room; ``ChannelClosedError`` if it is closed."""
        while not self.has_space():
            if self.closed_reason is not None:
                raise ChannelClosedError(
                    f"channel {self.accumulator!r} is closed: {self.closed_reason}"
                )
            await self._space.wait()

    async def put(self, envelope: Envelope) -> None:
        await self.wait_for_space()
        self.put_nowait(envelope)

    def close(self, reason: str) -> None:
        """Refuse to wait for space any more: waiting producers get ``ChannelClosedError``."""
        self.closed_reason = reason
        self._space.set()

    def peek(self) -> Envelope | None:
        return self._items[0] if self._items else None

    def take(self) -> Envelope:
        envelope = self._items.popleft()
        self._space.set()
        for listener in self._space_listeners:
            listener()
        return envelope

    def take_many(self, limit: int) -> list[Envelope]:
        """Take up to ``limit`` envelopes, oldest first; listeners are told once."""
        items = self._items
        count = min(limit, len(items))
        if count == len(items):
            taken = list(items)
            items.clear()
        else:
            popleft = items.popleft
            taken = [popleft() for _ in range(count)]
        if taken:
            self._space.set()
            for listener in self._space_listeners:
                listener()
        return taken

    def put_back(self, envelopes: list[Envelope]) -> None:
        """Return taken envelopes to the front, in their order (a reactor paused mid-batch)."""
        if not envelopes:
            return
        self._items.extendleft(reversed(envelopes))
        if len(self._items) >= self.maxsize:
            self._space.clear()

    def add_space_listener(self, listener: Callable[[], None]) -> None:
        self._space_listeners.append(listener)

    def notify_space(self) -> None:
        """Tell the listeners that room opened elsewhere downstream (a batch was handled)."""
        for listener in self._space_listeners:
            listener()
