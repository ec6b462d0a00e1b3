"""Runtime parts added and removed while it runs (what the package reconciler uses)."""

from __future__ import annotations

import asyncio

import pytest

from headrace.accumulators import get_accumulator
from headrace.connectors import MemorySink
from headrace.engine.errors import RuntimeConfigError
from headrace.engine.runtime import Runtime
from headrace.reactors import get_reactor
from tests.unit.support import declare_reactor, one_node_graph, passthroughs


async def test_add_then_remove_accumulator_reactor_and_graph() -> None:
    passthroughs("a", "b")
    declare_reactor("rx", ["a", "b"], mode="when_all")
    graph = one_node_graph("g", "rx", ["a", "b"], lambda a, b: a + b).graph
    assert graph is not None
    sink = MemorySink()
    async with Runtime(graphs=[], sinks=[sink]) as runtime:
        with pytest.raises(RuntimeConfigError, match=r"not running: \['a', 'b'\]"):
            runtime.add_reactor(get_reactor("rx"))
        await runtime.add_accumulator(get_accumulator("a"))
        await runtime.add_accumulator(get_accumulator("b"))
        runtime.add_reactor(get_reactor("rx"))
        assert runtime.swap_graphs("rx", [], [graph]) == []
        await runtime.push("a", 1)
        await runtime.push("b", 2)
        await runtime.wait_idle()
        assert [o["run"] for o in sink.outputs("g")] == [3]
        with pytest.raises(RuntimeConfigError, match=r"still fires graphs \['g'\]"):
            await runtime.remove_reactor("rx")
        with pytest.raises(RuntimeConfigError, match=r"still watched by reactors \['rx'\]"):
            await runtime.remove_accumulator("a")
        removed = runtime.swap_graphs("rx", ["g"], [])
        await runtime.drain_graphs("rx", removed)
        await runtime.remove_reactor("rx")
        assert runtime.accumulators["a"].channels == []  # its channel was detached
        await runtime.remove_accumulator("a")
        await runtime.remove_accumulator("b")
        assert (runtime.graphs, runtime.reactors, runtime.accumulators) == ({}, {}, {})
        await asyncio.sleep(0)
        assert runtime.failures == {}  # removed parts' tasks ending is not a failure
        assert runtime.ready()


async def test_swap_keeps_the_when_all_cache_and_drains_running_fires() -> None:
    passthroughs("a", "b")
    declare_reactor("rx", ["a", "b"], mode="when_all")
    release = asyncio.Event()

    async def slow(a: int, b: int) -> str:
        await release.wait()
        return f"old {a + b}"

    old = one_node_graph("old", "rx", ["a", "b"], slow).graph
    new = one_node_graph("new", "rx", ["a", "b"], lambda a, b: f"new {a + b}").graph
    assert old is not None and new is not None
    sink = MemorySink()
    async with Runtime(graphs=[old], sinks=[sink]) as runtime:
        await runtime.push("a", 1)
        await runtime.push("b", 2)
        while not runtime.bound["rx"].active("old"):
            await asyncio.sleep(0.001)
        await runtime.push("a", 5)  # waits in the when_all cache for a new b
        removed = runtime.swap_graphs("rx", ["old"], [new])
        draining = asyncio.create_task(runtime.drain_graphs("rx", removed))
        await asyncio.sleep(0.01)
        assert not draining.done()  # the old graph's fire still runs
        release.set()
        await draining
        await runtime.push("b", 7)  # a=5, pushed before the swap, is still in the cache
        await runtime.wait_idle()
        assert [o["run"] for o in sink.outputs("old")] == ["old 3"]
        assert [o["run"] for o in sink.outputs("new")] == ["new 12"]
