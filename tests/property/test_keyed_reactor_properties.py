"""Property tests of keyed reactors over random interleavings of keyed deliveries.

Each example drives a real ``KeyedReactorLoop`` over real channels: deliveries of values
of random accumulators and keys, yields to the event loop, releases of a gated (awaiting)
graph, pauses and resumes, with ``max_concurrency`` from 1 to 4 and sometimes a small
``max_keys``. Then the inputs go quiet, the gate opens, and the per-key rules are checked
on what the graph saw and on the acks of every delivered value.
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from headrace.accumulators import Channel, Envelope
from headrace.reactors import KeyedReactorLoop
from headrace.reactors.declaration import make_reactor_spec
from tests.property.reactor_harness import OPERATIONS, Interleaving

ACCUMULATORS = ("a", "b", "c")
KEYS = ("k1", "k2", "k3", "k4")

deliver = st.tuples(st.just("deliver"), st.sampled_from(ACCUMULATORS), st.sampled_from(KEYS))
interleavings = st.lists(
    st.one_of(deliver, deliver, deliver, *(op.map(lambda s: (*s, None)) for op in OPERATIONS)),
    max_size=50,
)  # the shared operations get an empty key slot
concurrency = st.integers(1, 4)
accumulator_counts = st.integers(1, len(ACCUMULATORS))


@dataclass
class Outcome:
    accumulators: tuple[str, ...]
    delivered: list[tuple[str, str, int]] = field(default_factory=list)  # (acc, key, value)
    fires: list[tuple[str, dict[str, Any], list[tuple[str, int]]]] = field(default_factory=list)
    settled: Counter = field(default_factory=Counter)
    unfired: set[tuple[str, int]] = field(default_factory=set)
    left_in_channels: set[tuple[str, int]] = field(default_factory=set)
    max_running: int = 0
    max_running_per_key: int = 0
    fires_created_while_paused: int = 0
    owed_at_end: bool = False
    evictions: int = 0

    def per_key_deliveries(self) -> dict[str, list[tuple[str, int]]]:
        out: dict[str, list[tuple[str, int]]] = defaultdict(list)
        for accumulator, key, value in self.delivered:
            out[key].append((accumulator, value))
        return out

    def per_key_fires(self) -> dict[str, list[tuple[dict[str, Any], list[tuple[str, int]]]]]:
        out: dict[str, list] = defaultdict(list)
        for key, inputs, consumed in self.fires:
            out[key].append((inputs, consumed))
        return out


def drive(ops, mode, strategy, count, max_concurrency, max_keys=None) -> Outcome:
    return asyncio.run(_drive(ops, mode, strategy, ACCUMULATORS[:count], max_concurrency, max_keys))


async def _drive(ops, mode, strategy, accumulators, max_concurrency, max_keys) -> Outcome:
    out = Outcome(accumulators)
    spec = make_reactor_spec(
        "kx",
        accumulators,
        mode,
        strategy,
        keyed=True,
        max_concurrency=max_concurrency,
        max_keys=max_keys,
    )
    channels = {name: Channel(name, 64) for name in accumulators}
    drive = Interleaving()
    running: Counter = Counter()

    async def handler(fire):
        running[fire.key] += 1
        out.max_running = max(out.max_running, sum(running.values()))
        out.max_running_per_key = max(out.max_running_per_key, running[fire.key])
        out.fires.append(
            (fire.key, dict(fire.inputs), [(e.accumulator, e.value) for e in fire.envelopes])
        )
        try:
            await drive.gate()
        finally:
            running[fire.key] -= 1

    loop = KeyedReactorLoop(spec, channels, handler)
    loop.start()
    counters = dict.fromkeys(accumulators, 0)
    for op, arg, key in ops:
        if op != "deliver":
            await drive.step(loop, op, arg)
        elif arg in channels:
            counters[arg] += 1
            value = counters[arg]
            ident = (arg, value)
            channels[arg].put_nowait(
                Envelope(arg, value, (lambda i=ident: out.settled.update([i]),), key=key)
            )
            out.delivered.append((arg, key, value))
    # at most max_concurrency fires wait at the gate
    await drive.quiesce(loop, waiting=max_concurrency)
    out.fires_created_while_paused = drive.fires_created_while_paused
    out.owed_at_end = loop.per_key.owed()
    out.unfired = {(e.accumulator, e.value) for e in loop.per_key.unfired()}
    for channel in channels.values():
        while channel.depth:
            envelope = channel.take()
            out.left_in_channels.add((envelope.accumulator, envelope.value))
    out.evictions = sum(loop.per_key.evictions.values())
    await loop.stop(drain=False)
    return out


def check_common(out: Outcome, max_concurrency: int) -> None:
    assert out.max_running_per_key <= 1, "never two fires of one key at once"
    assert out.max_running <= max_concurrency
    assert out.fires_created_while_paused == 0, "a paused reactor starts no fire"
    waiting = out.unfired | out.left_in_channels
    for accumulator, _key, value in out.delivered:
        ident = (accumulator, value)
        expected = 0 if ident in waiting else 1
        assert out.settled[ident] == expected, (ident, out.settled[ident])
    assert set(out.settled) <= {(a, v) for a, _, v in out.delivered}


def check_sequential(out: Outcome, exact_inputs: bool) -> None:
    assert not out.unfired and not out.left_in_channels, "sequential leaves nothing behind"
    fires = out.per_key_fires()
    for key, deliveries in out.per_key_deliveries().items():
        # per key: one fire per delivered value, in delivery order, nothing coalesced or lost
        assert [consumed for _, consumed in fires[key]] == [[d] for d in deliveries], key
        state: dict[str, int] = {}
        for (accumulator, value), (inputs, _) in zip(deliveries, fires[key], strict=True):
            state[accumulator] = value
            assert inputs[accumulator] == value
            if exact_inputs:  # no eviction can have reset the key's cache
                assert inputs == {name: state.get(name) for name in out.accumulators}
            else:  # other inputs are None or an earlier value of this key
                for name in out.accumulators:
                    assert inputs[name] is None or inputs[name] <= state.get(name, 0)
    assert set(fires) <= set(out.per_key_deliveries())


def check_latest(out: Outcome, mode: str) -> None:
    assert not out.left_in_channels
    fires = out.per_key_fires()
    deliveries = out.per_key_deliveries()
    for key, key_fires in fires.items():
        previous: dict[str, Any] = dict.fromkeys(out.accumulators)
        for inputs, consumed in key_fires:
            for name in out.accumulators:
                before, now = previous[name], inputs[name]
                assert before is None or (now is not None and now >= before), (key, name)
            fresh = {name for name in out.accumulators if inputs[name] != previous[name]}
            assert fresh, "a fire of a key needs a new delivery for that key"
            assert {accumulator for accumulator, _ in consumed} == fresh
            keyed_values = {(a, v) for a, v in deliveries[key]}
            assert set(consumed) <= keyed_values, "a fire consumes only its key's values"
            if mode == "when_all":
                assert fresh == set(out.accumulators), "every accumulator delivered for the key"
            previous = inputs
    assert not out.owed_at_end, "quiet inputs leave no fire owed"
    if mode == "when_any":
        assert out.unfired == set()
        for key, values in deliveries.items():
            final: dict[str, int] = {}
            for accumulator, value in values:
                final[accumulator] = value
            last_inputs = fires[key][-1][0]
            assert last_inputs == {name: final.get(name) for name in out.accumulators}, key
    else:
        for key, values in deliveries.items():
            left = {a for a, v in values if (a, v) in out.unfired}
            assert left != set(out.accumulators), f"{key} owes a fire it did not get"


@settings(max_examples=150, deadline=None)
@given(
    ops=interleavings,
    mode=st.sampled_from(["when_any", "when_all"]),
    count=accumulator_counts,
    max_concurrency=concurrency,
    max_keys=st.sampled_from([None, None, 1, 2, 3]),
)
def test_sequential_fires_once_per_value_in_order_per_key(
    ops, mode, count, max_concurrency, max_keys
):
    out = drive(ops, mode, "sequential", count, max_concurrency, max_keys)
    check_common(out, max_concurrency)
    check_sequential(out, exact_inputs=out.evictions == 0)


@settings(max_examples=150, deadline=None)
@given(ops=interleavings, count=accumulator_counts, max_concurrency=concurrency)
def test_latest_never_goes_back_and_ends_on_each_keys_final_values(ops, count, max_concurrency):
    out = drive(ops, "when_any", "latest", count, max_concurrency)
    check_common(out, max_concurrency)
    check_latest(out, "when_any")


@settings(max_examples=150, deadline=None)
@given(ops=interleavings, count=accumulator_counts, max_concurrency=concurrency)
def test_when_all_fires_a_key_only_after_every_accumulator_delivered_for_it(
    ops, count, max_concurrency
):
    out = drive(ops, "when_all", "latest", count, max_concurrency)
    check_common(out, max_concurrency)
    check_latest(out, "when_all")


@settings(max_examples=100, deadline=None)
@given(
    deliveries=st.lists(st.sampled_from(KEYS), min_size=1, max_size=12),
    max_concurrency=concurrency,
    strategy=st.sampled_from(["latest", "sequential"]),
)
def test_keys_overlap_while_the_graph_awaits(deliveries, max_concurrency, strategy):
    """Each fire waits at a gate until the test opens it, so fires that overlap are proven
    by the number of fires inside the graph at once, not by timing."""
    asyncio.run(_overlap(deliveries, max_concurrency, strategy))


async def _overlap(deliveries: list[str], max_concurrency: int, strategy: str) -> None:
    spec = make_reactor_spec(
        "kx", ["a"], "when_any", strategy, keyed=True, max_concurrency=max_concurrency
    )
    channels = {"a": Channel("a", 64)}
    gate = asyncio.Event()
    inside: Counter = Counter()
    entered = asyncio.Event()
    most_per_key = 0

    async def handler(fire):
        nonlocal most_per_key
        inside[fire.key] += 1
        most_per_key = max(most_per_key, inside[fire.key])
        entered.set()
        await gate.wait()
        inside[fire.key] -= 1

    loop = KeyedReactorLoop(spec, channels, handler)
    loop.start()
    for number, key in enumerate(deliveries):
        channels["a"].put_nowait(Envelope("a", number, key=key))
    expected = min(max_concurrency, len(set(deliveries)))
    async with asyncio.timeout(10):
        while sum(inside.values()) < expected:
            entered.clear()
            await entered.wait()
    for _ in range(20):  # give the loop every chance to start one fire too many
        await asyncio.sleep(0)
    assert sum(inside.values()) == expected, "distinct keys run together, up to the bound"
    assert most_per_key == 1
    gate.set()
    async with asyncio.timeout(10):
        while loop.busy:
            await asyncio.sleep(0)
    assert most_per_key == 1
    await loop.stop()


@settings(max_examples=300, deadline=None)
@given(
    ops=interleavings,
    mode=st.sampled_from(["when_any", "when_all"]),
    count=accumulator_counts,
    max_concurrency=concurrency,
    max_keys=st.integers(1, 3),
)
@example(  # k1 gets half a join while it fires; then k2 needs k1's slot: k1 is not idle
    ops=[
        ("deliver", "a", "k1"),
        ("deliver", "b", "k1"),
        ("yield", 3, None),
        ("deliver", "a", "k1"),
        ("release+yield", 2, None),
        ("deliver", "a", "k2"),
        ("yield", 3, None),
    ],
    mode="when_all",
    count=2,
    max_concurrency=1,
    max_keys=1,
)
def test_max_keys_never_drops_an_unsettled_value(ops, mode, count, max_concurrency, max_keys):
    """With fewer key slots than keys, eviction takes only idle keys: every value is fired
    and settled once, or still waits (in a key's cache or, for a key not admitted, in
    its channel); a fire consumes only its own key's values."""
    out = drive(ops, mode, "latest", count, max_concurrency, max_keys)
    check_common(out, max_concurrency)
    deliveries = out.per_key_deliveries()
    for key, inputs, consumed in out.fires:
        assert set(consumed) <= set(deliveries[key])
        assert all(inputs[accumulator] == value for accumulator, value in consumed)
    if mode == "when_any":
        assert not out.left_in_channels and not out.unfired, "when_any keys always free up"
