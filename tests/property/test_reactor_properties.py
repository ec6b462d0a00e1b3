"""Property tests of the firing rules over random interleavings of deliveries.

Each example drives a real ``ReactorLoop`` over real channels: deliveries, yields to the
event loop, releases of a gated (slow) graph, pauses and resumes, in a random order. Then
the inputs go quiet, every fire is let through, and the properties are checked on what
the graph saw and on the acks of every delivered value.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from headrace.accumulators import Channel, Envelope
from headrace.reactors import FiringPolicy, ReactorLoop
from headrace.reactors.declaration import make_reactor_spec
from tests.property.reactor_harness import Interleaving, pause, release, resume, settle, yield_

ACCUMULATORS = ("a", "b", "c")

deliver = st.tuples(st.just("deliver"), st.sampled_from(ACCUMULATORS))

without_pauses = st.lists(st.one_of(deliver, deliver, release, yield_, settle), max_size=40)


def _rounds(rounds) -> list[tuple[str, Any]]:
    ops: list[tuple[str, Any]] = []
    for deliveries, yields, pauses, releases, resumes in rounds:
        ops += [("deliver", name) for name in deliveries]
        ops.append(("yield", yields))  # a fire starts ...
        if pauses:
            ops.append(("pause", 0))  # ... and the reactor is paused while it runs
        ops.append(("release+yield", releases))
        if resumes:
            ops.append(("resume", 0))
    return ops


# rounds make "pause while a fire runs, then let it finish" a common case
pause_rounds = st.lists(
    st.tuples(
        st.lists(st.sampled_from(ACCUMULATORS), max_size=4),
        st.integers(1, 3),
        st.booleans(),
        st.integers(0, 3),
        st.booleans(),
    ),
    max_size=8,
).map(_rounds)
with_pauses = st.one_of(
    pause_rounds,
    st.lists(st.one_of(deliver, deliver, yield_, settle, release, pause, resume), max_size=40),
)
accumulator_counts = st.integers(1, len(ACCUMULATORS))


@dataclass
class Outcome:
    accumulators: tuple[str, ...]
    delivered: list[tuple[str, int]] = field(default_factory=list)  # in delivery order
    fires: list[dict[str, Any]] = field(default_factory=list)  # inputs each fire saw
    consumed: list[list[tuple[str, int]]] = field(default_factory=list)  # envelopes per fire
    settled: Counter = field(default_factory=Counter)
    unfired: list[tuple[str, int]] = field(default_factory=list)  # still in the cache at end
    max_running: int = 0
    fires_created_while_paused: int = 0
    ready_at_end: bool = False

    def final(self) -> dict[str, int]:
        values: dict[str, int] = {}
        for accumulator, value in self.delivered:
            values[accumulator] = value
        return values


def drive(ops, mode: str, strategy: str, count: int) -> Outcome:
    return asyncio.run(_drive(ops, mode, strategy, ACCUMULATORS[:count]))


async def _drive(ops, mode, strategy, accumulators) -> Outcome:
    out = Outcome(accumulators)
    spec = make_reactor_spec("rx", accumulators, mode, strategy)
    # big enough for every delivery of an example: backpressure is tested elsewhere
    channels = {name: Channel(name, 64) for name in accumulators}
    drive = Interleaving()
    running = 0

    async def handler(fire):
        nonlocal running
        running += 1
        out.max_running = max(out.max_running, running)
        out.fires.append(dict(fire.inputs))
        out.consumed.append([(e.accumulator, e.value) for e in fire.envelopes])
        try:
            await drive.gate()
        finally:
            running -= 1

    loop = ReactorLoop(spec, channels, handler)
    loop.start()
    counters = dict.fromkeys(accumulators, 0)
    for op, arg in ops:
        if op != "deliver":
            await drive.step(loop, op, arg)
        elif arg in channels:
            counters[arg] += 1
            value = counters[arg]
            key = (arg, value)
            channels[arg].put_nowait(
                Envelope(arg, value, acks=(lambda key=key: out.settled.update([key]),))
            )
            out.delivered.append(key)
    await drive.quiesce(loop, waiting=1)  # the inputs go quiet: let every fire through
    out.fires_created_while_paused = drive.fires_created_while_paused
    out.ready_at_end = loop.policy.ready()
    out.unfired = [(e.accumulator, e.value) for e in loop.policy.unfired()]
    await loop.stop()
    return out


def check_common(out: Outcome) -> None:
    assert out.max_running <= 1, "a reactor never runs two fires at once"
    assert out.fires_created_while_paused == 0, "a paused reactor does not fire"
    # every ack settles exactly once, except values still waiting in the cache (when_all)
    for key in out.delivered:
        expected = 0 if key in out.unfired else 1
        assert out.settled[key] == expected, (key, out.settled[key])
    assert set(out.settled) <= set(out.delivered)


def check_sequential(out: Outcome) -> None:
    check_common(out)
    # one fire per delivered value, in delivery order, nothing coalesced or lost
    assert out.consumed == [[key] for key in out.delivered]
    state: dict[str, int] = {}
    for (accumulator, value), inputs in zip(out.delivered, out.fires, strict=True):
        state[accumulator] = value
        assert inputs == {name: state.get(name) for name in out.accumulators}
    assert out.unfired == []


def check_latest(out: Outcome, mode: str) -> None:
    check_common(out)
    previous: dict[str, Any] = dict.fromkeys(out.accumulators)
    for inputs, consumed in zip(out.fires, out.consumed, strict=True):
        for name in out.accumulators:
            before, now = previous[name], inputs[name]
            # never a value older than one already fired
            assert before is None or (now is not None and now >= before), (name, before, now)
        fresh = {name for name in out.accumulators if inputs[name] != previous[name]}
        assert fresh, "a fire needs a new delivery"
        assert {accumulator for accumulator, _ in consumed} == fresh
        if mode == "when_all":
            # every accumulator delivered since the previous fire
            assert fresh == set(out.accumulators), (previous, inputs)
        previous = inputs
    assert not out.ready_at_end, "quiet inputs leave no fire owed"
    if mode == "when_any" and out.delivered:
        # after the inputs go quiet, the last fire saw the final value of every accumulator
        final = out.final()
        assert out.fires[-1] == {name: final.get(name) for name in out.accumulators}
        assert out.unfired == []
    if mode == "when_all" and out.fires:
        # values not fired are exactly the accumulators that delivered since the last fire
        assert {accumulator for accumulator, _ in out.unfired} != set(out.accumulators)


@settings(max_examples=150, deadline=None)
@given(ops=without_pauses, mode=st.sampled_from(["when_any", "when_all"]), count=accumulator_counts)
def test_sequential_fires_once_per_value_in_order(ops, mode, count):
    check_sequential(drive(ops, mode, "sequential", count))


@settings(max_examples=150, deadline=None)
@given(ops=without_pauses, count=accumulator_counts)
def test_latest_when_any_never_goes_back_and_ends_on_the_final_values(ops, count):
    check_latest(drive(ops, "when_any", "latest", count), "when_any")


@settings(max_examples=150, deadline=None)
@given(ops=without_pauses, count=accumulator_counts)
def test_when_all_fires_only_after_every_accumulator_delivered(ops, count):
    check_latest(drive(ops, "when_all", "latest", count), "when_all")


@settings(max_examples=300, deadline=None)
@given(
    ops=with_pauses,
    mode=st.sampled_from(["when_any", "when_all"]),
    strategy=st.sampled_from(["latest", "sequential"]),
    count=accumulator_counts,
)
def test_pause_and_resume_lose_nothing(ops, mode, strategy, count):
    out = drive(ops, mode, strategy, count)
    if strategy == "sequential":
        check_sequential(out)
    else:
        check_latest(out, mode)


# -- the pure rules, without the loop ----------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    steps=st.lists(st.one_of(st.sampled_from(ACCUMULATORS), st.just("fire")), max_size=60),
    mode=st.sampled_from(["when_any", "when_all"]),
)
def test_firing_policy_dirty_flags(steps, mode):
    policy = FiringPolicy(make_reactor_spec("rx", ACCUMULATORS, mode, "latest"))
    since_fire: set[str] = set()
    latest: dict[str, int] = {}
    for number, step in enumerate(steps):
        if step == "fire":
            expected = since_fire == set(ACCUMULATORS) if mode == "when_all" else bool(since_fire)
            assert policy.ready() == expected
            if policy.ready():
                fire = policy.begin_fire()
                assert fire.inputs == {name: latest.get(name) for name in ACCUMULATORS}
                assert {e.accumulator for e in fire.envelopes} == since_fire
                since_fire = set()
                assert not policy.ready()  # the flags clear when a fire starts
        else:
            policy.apply(Envelope(step, number))
            latest[step] = number
            since_fire.add(step)
