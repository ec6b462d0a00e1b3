"""Bounded channels: the bound holds, producers wait when full, memory stays bounded."""

from __future__ import annotations

import asyncio

import pytest

from headrace.accumulators import Channel, Envelope
from headrace.connectors import MemorySink
from headrace.engine import Runtime
from tests.unit.support import pipeline, wait_until


def test_channel_needs_a_positive_size():
    with pytest.raises(ValueError, match=r"'a'.*maxsize"):
        Channel("a", 0)


async def test_put_nowait_refuses_beyond_the_bound():
    channel = Channel("a", 2)
    channel.put_nowait(Envelope("a", 1))
    channel.put_nowait(Envelope("a", 2))
    assert not channel.has_space()
    with pytest.raises(asyncio.QueueFull, match=r"'a' is full"):
        channel.put_nowait(Envelope("a", 3))
    assert channel.depth == 2 and channel.high_water == 2


async def test_put_waits_while_full_and_resumes_when_taken():
    channel = Channel("a", 1)
    freed = []
    channel.add_space_listener(lambda: freed.append(True))
    await channel.put(Envelope("a", 1))
    blocked = asyncio.create_task(channel.put(Envelope("a", 2)))
    done, _ = await asyncio.wait({blocked}, timeout=0.05)
    assert not done, "put must wait while the channel is full"
    assert channel.take().value == 1
    await asyncio.wait_for(blocked, 5)
    assert [channel.take().value] == [2]
    assert freed == [True, True]
    assert channel.high_water == 1


def test_take_is_fifo_and_peek_does_not_consume():
    channel = Channel("a", 5)
    for value in range(3):
        channel.put_nowait(Envelope("a", value))
    assert channel.peek().value == 0
    assert [channel.take().value for _ in range(3)] == [0, 1, 2]
    assert channel.peek() is None


async def test_runtime_push_awaits_when_the_channel_is_full():
    pipeline(["a"], lambda a: a, strategy="sequential")
    sink = MemorySink()
    async with Runtime(graphs=["g"], sinks=[sink], channel_size=2) as runtime:
        runtime.pause("g")
        await runtime.push("a", 1)
        await runtime.push("a", 2)
        third = asyncio.create_task(runtime.push("a", 3))
        done, _ = await asyncio.wait({third}, timeout=0.05)
        assert not done, "push must wait while the channel is full"
        assert runtime.health()["reactors"]["rx"]["channel_depths"] == {"a": 2}
        runtime.resume("g")
        await asyncio.wait_for(third, 5)
        await runtime.wait_idle()
    assert [out["run"] for out in sink.outputs()] == [1, 2, 3]


@pytest.mark.parametrize("strategy", ["sequential", "latest"])
async def test_fast_producer_slow_graph_keeps_memory_bounded(strategy):
    bound, total = 4, 300
    fired = []

    async def slow(a):
        await asyncio.sleep(0)  # each fire yields a few times: far slower than the producer
        await asyncio.sleep(0)
        fired.append(a)
        return a

    pipeline(["a"], slow, strategy=strategy)
    sink = MemorySink()
    async with Runtime(graphs=["g"], sinks=[sink], channel_size=bound) as runtime:
        channel = runtime.reactors["rx"].channels["a"]
        depths = []
        for value in range(total):
            await runtime.push("a", value)
            depths.append(channel.depth)
        fired_when_producer_finished = len(fired)
        await runtime.wait_idle()
    assert channel.high_water <= bound
    assert max(depths) <= bound
    if strategy == "sequential":
        # every value fires; the producer could only run ahead by the bound plus the batch
        # of fires in flight (taken from the channel at once: at most the bound), so push
        # must have waited for the graph
        assert channel.high_water == bound
        assert fired == list(range(total))
        assert fired_when_producer_finished >= total - 2 * bound - 1
    else:
        # latest coalesces: the graph saw increasing values and finally the last one
        assert fired == sorted(fired) and fired[-1] == total - 1


async def test_a_paused_reactor_fills_its_channel_to_the_bound_then_the_source_waits():
    pipeline(["a"], lambda a: a)
    async with Runtime(graphs=["g"], channel_size=3) as runtime:
        runtime.pause("rx")
        producer = asyncio.create_task(_push_all(runtime, range(10)))
        channel = runtime.reactors["rx"].channels["a"]
        await wait_until(lambda: channel.depth == 3)
        done, _ = await asyncio.wait({producer}, timeout=0.05)
        assert not done
        assert channel.depth == 3 == channel.high_water
        runtime.resume("rx")
        await asyncio.wait_for(producer, 5)
        await runtime.wait_idle()
        assert channel.high_water == 3


async def _push_all(runtime, values):
    for value in values:
        await runtime.push("a", value)
