"""What the reactor property tests share: a gate for the graph, the operations of an
interleaving other than deliveries (releases, yields, pauses, resumes), and the quiet end.

``test_reactor_properties`` (``ReactorLoop``) and ``test_keyed_reactor_properties``
(``KeyedReactorLoop``) differ in how a value is delivered and in what they check; this is
the rest of the drive.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from hypothesis import strategies as st

release = st.tuples(st.just("release"), st.integers(1, 3))  # let gated fires finish
yield_ = st.tuples(st.just("yield"), st.integers(1, 4))  # let the reactor run
settle = st.tuples(st.just("release+yield"), st.integers(1, 3))
pause = st.just(("pause", 0))
resume = st.just(("resume", 0))
OPERATIONS = (release, yield_, settle, pause, resume)
"""Every operation of an interleaving but a delivery: ``(op, arg)``."""


class Loop(Protocol):
    """What the drive uses of a ``ReactorLoop`` or ``KeyedReactorLoop``."""

    @property
    def paused(self) -> bool: ...

    @property
    def fire_count(self) -> int: ...

    @property
    def busy(self) -> bool: ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...


class Interleaving:
    """Drives one loop: fires wait at the gate (``await gate()``) until released, and
    ``fires_created_while_paused`` counts fires the loop started while it was paused."""

    def __init__(self) -> None:
        self.permits = asyncio.Semaphore(0)
        self.gated = True
        self.fires_created_while_paused = 0
        self._paused_at = 0

    async def gate(self) -> None:
        """Inside a fire: wait for a release while the gate is closed, then yield once."""
        if self.gated:
            await self.permits.acquire()
        await asyncio.sleep(0)

    async def step(self, loop: Loop, op: str, arg: int) -> None:
        """Apply one operation that is not a delivery."""
        if op == "release":
            for _ in range(arg):
                self.permits.release()
        elif op == "yield":
            for _ in range(arg):
                await asyncio.sleep(0)
        elif op == "release+yield":
            for _ in range(arg):
                self.permits.release()
                await asyncio.sleep(0)
                await asyncio.sleep(0)
        elif op == "pause" and not loop.paused:
            loop.pause()
            self._paused_at = loop.fire_count
        elif op == "resume" and loop.paused:
            self.fires_created_while_paused += loop.fire_count - self._paused_at
            loop.resume()

    async def quiesce(self, loop: Loop, waiting: int, timeout: float = 10.0) -> None:
        """The inputs go quiet: resume, open the gate (``waiting``: the most fires that can
        be waiting at it) and let every fire through; a stall past ``timeout`` fails."""
        if loop.paused:
            await self.step(loop, "resume", 0)
        self.gated = False
        for _ in range(waiting):
            self.permits.release()
        async with asyncio.timeout(timeout):
            while loop.busy:
                await asyncio.sleep(0)
