"""Small helpers for declaring test graphs and controlling them from a test."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from headrace.accumulators import passthrough_accumulator
from headrace.engine import ComputationGraphBuilder
from headrace.reactors import reactor


@contextmanager
def imports_restored() -> Iterator[None]:
    """Undo what a config load adds to ``sys.path`` and ``sys.modules``: the user modules
    it imported are forgotten. Headrace's own modules and installed libraries stay: a
    second copy of one would redefine its state, e.g. a table on the state store's shared
    SQLAlchemy metadata."""
    path, modules = list(sys.path), set(sys.modules)
    try:
        yield
    finally:
        sys.path[:] = path
        for name in set(sys.modules) - modules:
            if not _is_library(name):
                del sys.modules[name]


def _is_library(name: str) -> bool:
    if name == "headrace" or name.startswith("headrace."):
        return True
    file = getattr(sys.modules[name], "__file__", None) or ""
    return file.startswith((sys.prefix, sys.base_prefix)) or not file


def passthroughs(*names: str, channel_size: int = 1024) -> None:
    """Declare identity passthrough accumulators with these names."""
    for name in names:
        passthrough_accumulator(name=name, channel_size=channel_size)(lambda event: event)


def declare_reactor(
    name: str, accumulators: Iterable[str], mode: str = "when_any", strategy: str = "latest"
) -> type:
    @reactor(name=name, accumulators=list(accumulators), mode=mode, strategy=strategy)
    class Declared:
        pass

    return Declared


def one_node_graph(
    name: str,
    reactor_ref: Any,
    inputs: Iterable[str],
    fn: Callable[..., Any],
    **options: Any,
) -> ComputationGraphBuilder:
    """A graph with a single entry-and-terminal node called ``run``."""
    with ComputationGraphBuilder(
        name, reactor=reactor_ref, graph={"run": {"inputs": list(inputs)}}, **options
    ) as builder:
        builder.add_node("run", fn)
    return builder


def pipeline(
    accumulators: Iterable[str] = ("a",),
    fn: Callable[..., Any] | None = None,
    *,
    graph: str = "g",
    reactor_name: str = "rx",
    mode: str = "when_any",
    strategy: str = "latest",
    **options: Any,
) -> ComputationGraphBuilder:
    """Passthrough accumulators -> one reactor -> a one-node graph returning its inputs."""
    names = list(accumulators)
    passthroughs(*names)
    declare_reactor(reactor_name, names, mode, strategy)
    return one_node_graph(graph, reactor_name, names, fn or (lambda **kw: dict(kw)), **options)


class Gate:
    """Lets a test hold an async node until it chooses to release it.

    ``entered`` counts nodes that reached the gate; ``release(n)`` lets ``n`` pass.
    """

    def __init__(self) -> None:
        self._permits = asyncio.Semaphore(0)
        self.entered = 0
        self._entered_changed = asyncio.Event()

    async def wait(self) -> None:
        self.entered += 1
        self._entered_changed.set()
        await self._permits.acquire()

    def release(self, count: int = 1) -> None:
        for _ in range(count):
            self._permits.release()

    async def wait_entered(self, count: int, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while self.entered < count:
                self._entered_changed.clear()
                await self._entered_changed.wait()


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Yield to the loop until ``predicate()`` holds (for conditions without an event)."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.001)
