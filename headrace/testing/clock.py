"""``FakeClock``: polling and batch intervals that pass when the test says so."""

from __future__ import annotations

import asyncio
import heapq
import itertools


class FakeClock:
    """A :class:`headrace.accumulators.clock.Clock` whose time moves only in ``advance``.

    Pass it as ``Runtime(clock=...)`` (or ``MemoryRuntime(clock=...)``). A polling
    accumulator polls once at start, then every ``interval`` of fake time; a batch
    accumulator flushes every ``flush_interval``::

        clock = FakeClock()
        async with MemoryRuntime(clock=clock) as rt:
            await clock.wait_for_sleepers(1)   # the poller polled once and sleeps
            await clock.advance(30)            # three more polls, no real waiting
    """

    def __init__(self, start: float = 0.0, settle_timeout: float = 1.0) -> None:
        self.now = start
        self.settle_timeout = settle_timeout
        """Real seconds ``advance`` waits for a woken task to sleep again or finish."""
        self._sleepers: list[
            tuple[float, int, asyncio.Future[None], asyncio.Task[object] | None]
        ] = []
        self._order = itertools.count()
        self._changed = asyncio.Event()

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (self.now + seconds, next(self._order), future, asyncio.current_task())
        heapq.heappush(self._sleepers, entry)
        self._changed.set()
        try:
            await future
        finally:
            if not future.done():
                future.cancel()
            self._changed.set()

    def _pending(
        self,
    ) -> list[tuple[float, int, asyncio.Future[None], asyncio.Task[object] | None]]:
        self._sleepers = [s for s in self._sleepers if not s[2].done()]
        heapq.heapify(self._sleepers)
        return self._sleepers

    @property
    def sleepers(self) -> int:
        """Tasks asleep on this clock now."""
        return len(self._pending())

    def next_deadline(self) -> float | None:
        pending = self._pending()
        return pending[0][0] if pending else None

    async def wait_for_sleepers(self, count: int = 1, timeout: float = 5.0) -> None:
        """Wait (real time, bounded) until ``count`` tasks sleep on this clock."""
        async with asyncio.timeout(timeout):
            while self.sleepers < count:
                self._changed.clear()
                await self._changed.wait()

    async def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, waking sleepers in deadline order.

        After each wake-up it lets the woken tasks run until they sleep on this clock
        again or finish (at most ``settle_timeout`` real seconds), so a poller due three
        times in ``seconds`` polls three times.
        """
        if seconds < 0:
            raise ValueError(f"cannot move a clock backwards ({seconds}s)")
        target = self.now + seconds
        while (deadline := self.next_deadline()) is not None and deadline <= target:
            self.now = deadline
            woken = []
            while self._sleepers and self._sleepers[0][0] <= deadline:
                _, _, future, task = heapq.heappop(self._sleepers)
                if not future.done():
                    future.set_result(None)
                    woken.append(task)
            await self._settle(woken)
        self.now = target
        await asyncio.sleep(0)

    async def _settle(self, woken: list[asyncio.Task[object] | None]) -> None:
        def settled() -> bool:
            asleep = {s[3] for s in self._pending()}
            return all(t is None or t.done() or t in asleep for t in woken)

        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settle_timeout
        await asyncio.sleep(0)
        while not settled() and loop.time() < deadline:
            await asyncio.sleep(0.001)
