"""The graphs bound to one running reactor: a set that can change while the reactor fires.

A fire runs the graphs bound when it starts; a graph added later gets the next fire, a
graph removed later still finishes the fires it started (``drained`` waits for them).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from headrace.engine.graph_runner import GraphRunner
from headrace.reactors import Fire


class BoundGraphs:
    """The fire handler of a reactor whose graphs may be swapped at run time."""

    def __init__(self, runners: Iterable[GraphRunner] = ()) -> None:
        self.runners: list[GraphRunner] = list(runners)
        self._active: dict[str, int] = {}
        self._changed = asyncio.Event()

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.runners]

    def replace(self, remove: Iterable[str], add: Iterable[GraphRunner]) -> list[GraphRunner]:
        """In one step (no fire in between): unbind ``remove`` and bind ``add``."""
        gone = set(remove)
        removed = [r for r in self.runners if r.name in gone]
        self.runners = [r for r in self.runners if r.name not in gone] + list(add)
        return removed

    def active(self, name: str) -> int:
        """Fires of graph ``name`` running now."""
        return self._active.get(name, 0)

    async def drained(self, name: str) -> None:
        """Wait until no fire of graph ``name`` runs any more."""
        while self._active.get(name, 0):
            self._changed.clear()
            await self._changed.wait()

    async def __call__(self, fire: Fire) -> None:
        runners = self.runners
        for runner in runners:
            self._active[runner.name] = self._active.get(runner.name, 0) + 1
        try:
            if len(runners) == 1:
                await runners[0].run(fire)
                return
            outcomes = await asyncio.gather(*(r.run(fire) for r in runners), return_exceptions=True)
            for outcome in outcomes:
                if isinstance(outcome, BaseException):
                    raise outcome
        finally:
            for runner in runners:
                self._active[runner.name] -= 1
            self._changed.set()
