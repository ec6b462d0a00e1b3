"""Reactor declaration, firing rules (dirty flags, latest, sequential) and the firing loop."""

from __future__ import annotations

import asyncio

import pytest

from headrace.accumulators import Channel, Envelope
from headrace.reactors import (
    FiringPolicy,
    InputStrategy,
    ReactionMode,
    ReactorLoop,
    ReactorSpec,
    ReactorState,
    get_reactor,
    reactor,
    reactor_name_of,
)
from headrace.reactors.declaration import make_reactor_spec
from headrace.reactors.policy import Fire, settle_fires
from tests.unit.support import Gate, wait_until

# -- declaration ---------------------------------------------------------------------------


def test_reactor_decorator_registers_the_class_spec():
    @reactor(name="rx", accumulators=["a", "b"], mode="when_all", strategy="sequential")
    class Rx:
        pass

    spec = get_reactor("rx")
    assert spec == ReactorSpec("rx", ("a", "b"), ReactionMode.WHEN_ALL, InputStrategy.SEQUENTIAL)
    assert Rx.__headrace_reactor__ is spec
    assert reactor_name_of(Rx) == reactor_name_of("rx") == reactor_name_of(spec) == "rx"


def test_reactor_defaults_are_when_any_latest():
    @reactor(name="rx", accumulators=["a"])
    class Rx:
        pass

    assert get_reactor("rx").mode is ReactionMode.WHEN_ANY
    assert get_reactor("rx").strategy is InputStrategy.LATEST


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "", "accumulators": ["a"]}, "reactor name"),
        ({"name": "rx", "accumulators": []}, "reactor 'rx': accumulators"),
        ({"name": "rx", "accumulators": ["a", ""]}, "reactor 'rx': accumulators"),
        ({"name": "rx", "accumulators": ["a", "a"]}, "reactor 'rx': accumulators contain dup"),
        ({"name": "rx", "accumulators": ["a"], "mode": "when_some"}, "reactor 'rx': mode"),
        ({"name": "rx", "accumulators": ["a"], "strategy": "oldest"}, "reactor 'rx': strategy"),
    ],
)
def test_invalid_reactor_declarations(kwargs, message):
    with pytest.raises(ValueError, match=message):
        reactor(**kwargs)


def test_reactor_name_of_rejects_other_things():
    with pytest.raises(TypeError, match=r"@reactor class or a reactor name"):
        reactor_name_of(object())


def test_unknown_reactor_lookup_names_it():
    with pytest.raises(KeyError, match=r"unknown reactor 'nope'"):
        get_reactor("nope")


def test_reactor_docstring_documents_the_dirty_flag_rule_and_the_idiom():
    doc = reactor.__doc__
    assert "flags clear when a fire starts" in doc
    assert "when_any" in doc and "None" in doc


# -- the firing policy (pure rules) ------------------------------------------------------


def _policy(mode="when_any", strategy="latest", accumulators=("a", "b")):
    return FiringPolicy(make_reactor_spec("rx", accumulators, mode, strategy))


def test_when_any_fires_on_any_dirty_flag():
    policy = _policy("when_any")
    assert not policy.ready()
    policy.apply(Envelope("a", 1))
    assert policy.ready()
    fire = policy.begin_fire()
    assert fire.inputs == {"a": 1, "b": None}  # None: that accumulator has no value yet
    assert not policy.ready()  # flags cleared when the fire started
    policy.apply(Envelope("b", 2))
    assert policy.begin_fire().inputs == {"a": 1, "b": 2}


def test_when_all_needs_every_flag_since_the_last_fire():
    policy = _policy("when_all")
    policy.apply(Envelope("a", 1))
    policy.apply(Envelope("a", 2))
    assert not policy.ready()  # two values from a, none from b
    policy.apply(Envelope("b", 10))
    assert policy.ready()
    assert policy.begin_fire().inputs == {"a": 2, "b": 10}
    policy.apply(Envelope("b", 11))
    assert not policy.ready()  # a is cached but not dirty any more: it must deliver again
    policy.apply(Envelope("a", 3))
    assert policy.ready()
    assert policy.begin_fire().inputs == {"a": 3, "b": 11}
    assert policy.fires == 2


def test_latest_supersedes_unfired_values_and_settles_them():
    settled = []
    policy = _policy("when_any")
    policy.apply(Envelope("a", 1, acks=(lambda: settled.append(1),)))
    policy.apply(Envelope("a", 2, acks=(lambda: settled.append(2),)))
    assert settled == [1]  # superseded before any fire consumed it
    fire = policy.begin_fire()
    assert fire.inputs["a"] == 2
    assert [e.value for e in fire.envelopes] == [2]
    assert settled == [1]  # the fire settles its own envelopes when it finished
    fire.settle()
    assert settled == [1, 2]


def test_settle_fires_releases_one_hold_each_and_settles_only_unheld_fires():
    settled: list[str] = []
    free, held = (
        Fire(n, {}, [Envelope("a", n, acks=(lambda n=n: settled.append(f"fire {n}"),))])
        for n in (1, 2)
    )
    held.hold()  # a second sink still has this one's results in flight
    settle_fires([free, held])
    assert settled == ["fire 1"] and held.holds == 1
    settle_fires([held])
    assert settled == ["fire 1", "fire 2"] and held.holds == 0


def test_sequential_fire_with_applies_exactly_that_envelope():
    policy = _policy("when_all", "sequential")
    assert policy.sequential
    fire = policy.fire_with(Envelope("a", 1))  # the criterion does not apply
    assert fire.inputs == {"a": 1, "b": None}
    fire = policy.fire_with(Envelope("b", 5))
    assert fire.inputs == {"a": 1, "b": 5}
    assert [e.value for e in fire.envelopes] == [5]


# -- the firing loop ------------------------------------------------------------------------


class Harness:
    """A ReactorLoop over real channels with a handler the test controls."""

    def __init__(self, mode="when_any", strategy="latest", accumulators=("a", "b"), size=64):
        self.spec = make_reactor_spec("rx", accumulators, mode, strategy)
        self.channels = {name: Channel(name, size) for name in accumulators}
        self.fires: list[dict] = []
        self.running = 0
        self.max_running = 0
        self.gate: Gate | None = None
        self.loop = ReactorLoop(self.spec, self.channels, self.handle)

    async def handle(self, fire):
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            self.fires.append(dict(fire.inputs))
            if self.gate is not None:
                await self.gate.wait()
            await asyncio.sleep(0)
        finally:
            self.running -= 1

    async def put(self, accumulator, value, acks=()):
        await self.channels[accumulator].put(Envelope(accumulator, value, acks))

    async def idle(self):
        await wait_until(lambda: not self.loop.busy)


def test_loop_needs_a_channel_per_accumulator():
    spec = ReactorSpec("rx", ("a", "b"))
    with pytest.raises(ValueError, match=r"reactor 'rx': no channel for accumulators \['b'\]"):
        ReactorLoop(spec, {"a": Channel("a")}, lambda fire: None)


async def test_latest_coalesces_values_that_arrive_while_a_graph_runs():
    h = Harness(accumulators=("a",))
    h.gate = Gate()
    h.loop.start()
    await h.put("a", 1)
    await h.gate.wait_entered(1)
    for value in range(2, 11):
        await h.put("a", value)
    h.gate.release(2)
    await h.idle()
    await h.loop.stop()
    assert h.fires == [{"a": 1}, {"a": 10}]  # 2..9 were coalesced into the second fire
    assert h.loop.fire_count == 2


async def test_sequential_fires_once_per_value_in_delivery_order():
    h = Harness(mode="when_all", strategy="sequential")
    h.gate = Gate()
    h.loop.start()
    deliveries = [("a", 1), ("b", 1), ("a", 2), ("a", 3), ("b", 2)]
    for accumulator, value in deliveries:
        await h.put(accumulator, value)
    h.gate.release(len(deliveries))
    await h.idle()
    await h.loop.stop()
    assert h.fires == [
        {"a": 1, "b": None},
        {"a": 1, "b": 1},
        {"a": 2, "b": 1},
        {"a": 3, "b": 1},
        {"a": 3, "b": 2},
    ]


async def test_never_two_fires_at_once():
    for strategy in ("latest", "sequential"):
        h = Harness(strategy=strategy)
        h.loop.start()
        for value in range(50):
            await h.put("a" if value % 2 else "b", value)
            if value % 7 == 0:
                await asyncio.sleep(0)
        await h.idle()
        await h.loop.stop()
        assert h.max_running == 1
        assert h.fires


async def test_when_all_loop_waits_for_every_accumulator():
    h = Harness(mode="when_all")
    h.loop.start()
    await h.put("a", 1)
    await h.put("a", 2)
    await h.idle()
    assert h.fires == []
    await h.put("b", 1)
    await h.idle()
    assert h.fires == [{"a": 2, "b": 1}]
    await h.put("b", 2)
    await h.idle()
    assert len(h.fires) == 1
    await h.loop.stop()


async def test_pause_stops_firing_and_resume_continues_without_losing_values():
    h = Harness(strategy="sequential")
    h.loop.start()
    await h.put("a", 1)
    await h.idle()
    h.loop.pause()
    assert h.loop.state is ReactorState.PAUSED and h.loop.paused
    for value in (2, 3, 4):
        await h.put("a", value)
    await h.idle()  # a paused reactor is idle: nothing fires
    assert [f["a"] for f in h.fires] == [1]
    assert h.channels["a"].depth == 3  # values keep arriving up to the bound
    h.loop.resume()
    assert h.loop.state is ReactorState.RUNNING and not h.loop.paused
    await h.idle()
    await h.loop.stop()
    assert [f["a"] for f in h.fires] == [1, 2, 3, 4]


@pytest.mark.parametrize("strategy", ["sequential", "latest"])
async def test_pause_while_a_fire_runs_lets_it_finish_then_fires_nothing_more(strategy):
    h = Harness(strategy=strategy, accumulators=("a",))
    h.gate = Gate()
    h.loop.start()
    await h.put("a", 1)
    await h.gate.wait_entered(1)
    await h.put("a", 2)
    await h.put("a", 3)
    h.loop.pause()
    h.gate.release(10)
    await h.idle()
    assert h.fires == [{"a": 1}]
    assert h.loop.fire_count == 1
    h.loop.resume()
    await h.idle()
    await h.loop.stop()
    expected = [1, 2, 3] if strategy == "sequential" else [1, 3]
    assert [f["a"] for f in h.fires] == expected


async def test_acks_settle_after_the_fire_finished():
    h = Harness(accumulators=("a",))
    h.gate = Gate()
    h.loop.start()
    settled = []
    await h.put("a", 1, acks=(lambda: settled.append(1),))
    await h.gate.wait_entered(1)
    assert settled == []  # the fire is still running
    h.gate.release()
    await h.idle()
    await h.loop.stop()
    assert settled == [1]


async def test_stop_drains_the_channels_first():
    h = Harness(strategy="sequential")
    h.gate = Gate()
    h.loop.start()
    for value in range(5):
        await h.put("a", value)
    h.gate.release(5)
    await h.loop.stop()
    assert [f["a"] for f in h.fires] == [0, 1, 2, 3, 4]
    assert h.loop.state is ReactorState.STOPPED


async def test_stop_without_drain_finishes_the_running_fire_only():
    h = Harness(strategy="sequential")
    h.gate = Gate()
    h.loop.start()
    for value in range(5):
        await h.put("a", value)
    await h.gate.wait_entered(1)
    stopping = asyncio.create_task(h.loop.stop(drain=False))
    h.gate.release()
    await asyncio.wait_for(stopping, 5)
    assert [f["a"] for f in h.fires] == [0]
    assert h.channels["a"].depth == 4  # not fired, not acknowledged: redelivered later


async def test_a_failing_handler_marks_the_reactor_failed_and_keeps_the_acks():
    settled = []

    async def handler(fire):
        raise RuntimeError("boom")

    spec = ReactorSpec("rx", ("a",))
    channels = {"a": Channel("a")}
    loop = ReactorLoop(spec, channels, handler)
    loop.start()
    await channels["a"].put(Envelope("a", 1, acks=(lambda: settled.append(1),)))
    await wait_until(lambda: loop.state is ReactorState.FAILED)
    await loop.stop()
    assert loop.state is ReactorState.FAILED
    assert "boom" in loop.last_error
    assert settled == []


async def test_health_fields():
    h = Harness(mode="when_all", strategy="sequential")
    health = h.loop.health()
    assert health["state"] == "stopped"
    h.loop.start()
    await h.put("a", 1)
    await h.idle()
    health = h.loop.health()
    assert health["state"] == "running"
    assert health["mode"] == "when_all" and health["strategy"] == "sequential"
    assert health["fire_count"] == 1
    assert isinstance(health["last_fired_at"], float)
    assert health["paused"] is False
    assert health["channel_depths"] == {"a": 0, "b": 0}
    h.loop.pause()
    await h.put("b", 1)
    health = h.loop.health()
    assert (health["state"], health["paused"]) == ("paused", True)
    assert health["channel_depths"] == {"a": 0, "b": 1}
    h.loop.resume()
    await h.loop.stop()
