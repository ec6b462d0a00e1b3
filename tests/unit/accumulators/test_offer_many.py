"""``AccumulatorRunner.offer_many`` is ``offer_nowait`` per event, delivered as one
``Channel.put_many``; ``put_many`` puts a run all or none."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, field_validator

from headrace.accumulators import (
    AccumulatorInputError,
    AccumulatorKind,
    AccumulatorRunner,
    AccumulatorSpec,
    Channel,
    Envelope,
)

MAX_DEPTH = 3
"""Small, so that events deeper than the limit are cheap to draw."""


class Item(BaseModel):
    v: int
    k: str | int | None = None
    n: list[Any] | None = None

    @field_validator("v")
    @classmethod
    def _explode(cls, v: int) -> int:
        if v == 13:  # not a ValueError: pydantic lets it through, a bug rather than bad input
            raise RuntimeError("validator exploded on 13")
        return v


def fn(event: Any) -> Any:
    """Filters multiples of 5, raises for 3 mod 7, passes everything else through."""
    if isinstance(event, Item):
        v = event.v
    elif isinstance(event, dict):
        v = event["v"]  # KeyError for a dict without "v": "function raised"
    else:
        v = event
    if not isinstance(v, int):
        raise TypeError(f"v is {type(v).__name__}")
    if v % 5 == 0:
        return None
    if v % 7 == 3:
        raise ValueError(f"no {v}")
    return event


def key_function(value: Any) -> str:
    return f"f{value['k']}"  # raises for ints, models and dicts without "k"


KEYS: dict[str, Any] = {"none": None, "field": "k", "message": "@message", "fn": key_function}


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


numbers = st.sampled_from([1, 2, 3, 4, 5, 10, 13, 13, 17, 24, 31])
"""Multiples of 5 are filtered, 3 mod 7 raise, 13 explodes the model's validator."""
keys_in_values = st.one_of(st.text(max_size=2), st.integers(0, 3), st.booleans(), st.none())
with_v = st.fixed_dictionaries(
    {"v": st.one_of(numbers, numbers, st.just("7"))},
    optional={"k": keys_in_values, "n": st.integers(0, MAX_DEPTH + 2).map(nested)},
)
without_v = st.fixed_dictionaries({}, optional={"k": keys_in_values})
event = st.one_of(with_v, with_v, with_v, numbers, without_v, st.text(max_size=1), st.booleans())
events = st.integers(0, 25).flatmap(lambda n: st.lists(event, min_size=n, max_size=n))
message_key = st.one_of(st.none(), st.binary(max_size=3), st.text(max_size=2), st.just(b"\xff"))


class Counter:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


def runner_for(
    *, model: bool, strict: bool, key: str
) -> tuple[AccumulatorRunner, Channel, list[Any], list[int]]:
    spec = AccumulatorSpec(
        "acc",
        AccumulatorKind.STREAM,
        fn,
        topic="t",
        model=Item if model else None,
        strict=strict,
        max_depth=MAX_DEPTH,
        key=KEYS[key],
    )
    channel = Channel("acc", 64)
    puts: list[int] = []
    channel.on_put = lambda: puts.append(channel.depth)
    runner = AccumulatorRunner(spec, [channel])
    hooked: list[Any] = []
    runner.on_delivered = lambda name, value: hooked.append((name, value))
    return runner, channel, hooked, puts


def refusal(index: int, error: Exception) -> tuple[int, str, str]:
    return index, type(error).__name__, str(error)


def counters(runner: AccumulatorRunner) -> dict[str, Any]:
    return {
        "events_in": runner.events_in,
        "delivered": runner.delivered,
        "filtered": runner.filtered,
        "errors": runner.errors,
        "last_value": runner.last_value,
        "delivered_at_set": runner.last_delivered_at is not None,
    }


def drained(channel: Channel) -> list[Envelope]:
    return channel.take_many(len(channel))


@settings(max_examples=200, deadline=None)
@given(
    data=st.data(),
    batch=events,
    model=st.booleans(),
    strict=st.booleans(),
    key=st.sampled_from(sorted(KEYS)),
    partition=st.one_of(st.none(), st.integers(0, 3)),
)
def test_offer_many_is_offer_nowait_per_event(
    data: st.DataObject,
    batch: list[Any],
    model: bool,
    strict: bool,
    key: str,
    partition: int | None,
) -> None:
    shallows = data.draw(st.lists(st.booleans(), min_size=len(batch), max_size=len(batch)))
    keys = data.draw(
        st.one_of(st.none(), st.lists(message_key, min_size=len(batch), max_size=len(batch)))
    )
    many, many_channel, many_hooked, many_puts = runner_for(model=model, strict=strict, key=key)
    one, one_channel, one_hooked, _ = runner_for(model=model, strict=strict, key=key)
    many_ack, one_ack = Counter(), Counter()
    many_acks: tuple[Callable[[], None], ...] = (many_ack,)
    one_acks: tuple[Callable[[], None], ...] = (one_ack,)

    refused = many.offer_many(batch, shallows, keys, many_acks, partition)

    expected_refused = []
    for index, event in enumerate(batch):
        try:
            one.offer_nowait(
                event, one_acks, None if keys is None else keys[index], partition, shallows[index]
            )
        except AccumulatorInputError as error:
            expected_refused.append(refusal(index, error))
        except RuntimeError as error:  # the model's validator: per event, it propagates
            expected_refused.append(refusal(index, error))

    assert [refusal(index, error) for index, error in refused] == expected_refused
    assert counters(many) == counters(one)
    assert many.events_in == len(batch)
    assert many.delivered + many.filtered + len(refused) == len(batch)
    assert many_hooked == one_hooked
    assert many_puts == ([len(many_channel)] if many.delivered else []), "one put, or none"

    # filtered values settle at once; delivered ones when their envelope is handled
    assert many_ack.calls == one_ack.calls == many.filtered
    got, expected = drained(many_channel), drained(one_channel)
    assert [(e.accumulator, e.value, e.key, e.partition) for e in got] == [
        (e.accumulator, e.value, e.key, e.partition) for e in expected
    ]
    assert len(got) == many.delivered
    assert all(e.acks == many_acks for e in got)
    assert [e.seq for e in got] == sorted(e.seq for e in got)
    for envelope in got:
        envelope.settle()
    for envelope in expected:
        envelope.settle()
    assert many_ack.calls == one_ack.calls == many.filtered + many.delivered


def test_offer_many_refuses_by_index_and_leaves_their_acks_unsettled() -> None:
    runner, channel, _, puts = runner_for(model=False, strict=False, key="field")
    ack = Counter()
    batch = [{"v": 1, "k": "a"}, {"v": 3}, {"v": 10, "k": "b"}, {"v": 2}, {"v": 4, "k": 7}]
    refused = runner.offer_many(batch, [True] * 5, None, (ack,), 2)
    assert [(i, type(e), e.reason) for i, e in refused] == [
        (1, AccumulatorInputError, "function raised ValueError('no 3')"),
        (3, AccumulatorInputError, "key field 'k' is missing from the value"),
    ]
    assert ack.calls == 1  # the filtered {"v": 10}, nothing for the refused ones
    assert [(e.value, e.key, e.partition) for e in drained(channel)] == [
        ({"v": 1, "k": "a"}, "a", 2),
        ({"v": 4, "k": 7}, "7", 2),
    ]
    assert puts == [2]
    assert (runner.events_in, runner.delivered, runner.filtered, runner.errors) == (5, 2, 1, 2)
    assert runner.last_value == {"v": 4, "k": 7}


def test_offer_many_with_nothing_delivered_puts_nothing() -> None:
    runner, channel, _, puts = runner_for(model=False, strict=False, key="none")
    ack = Counter()
    assert runner.offer_many([5, 10, 0], [True] * 3, None, (ack,)) == []
    assert runner.offer_many([], [], None, (ack,)) == []
    assert puts == [] and len(channel) == 0
    assert ack.calls == 3
    assert runner.last_delivered_at is None and runner.delivered == 0


def test_offer_many_needs_room_for_the_whole_run_and_puts_none_without_it() -> None:
    runner, channel, _, puts = runner_for(model=False, strict=False, key="none")
    channel.maxsize = 2
    with pytest.raises(asyncio.QueueFull):
        runner.offer_many([1, 2, 5, 4], [True] * 4, None, ())
    assert len(channel) == 0 and puts == []
    # nothing reached the channel, so health shows nothing delivered
    assert (runner.delivered, runner.last_value, runner.last_delivered_at) == (0, None, None)


# -- Channel.put_many -------------------------------------------------------------------


def envelopes(start: int, count: int) -> list[Envelope]:
    return [Envelope("a", value) for value in range(start, start + count)]


def test_put_many_is_all_or_none() -> None:
    channel = Channel("a", 5)
    woken: list[int] = []
    channel.on_put = lambda: woken.append(channel.depth)
    channel.put_many(envelopes(0, 3))
    with pytest.raises(asyncio.QueueFull, match=r"'a' has no room for 3 values \(3 of 5 taken\)"):
        channel.put_many(envelopes(3, 3))
    assert [e.value for e in channel.take_many(10)] == [0, 1, 2]
    assert woken == [3]
    assert channel.high_water == 3


def test_put_many_of_nothing_is_a_no_op_even_when_full() -> None:
    channel = Channel("a", 2)
    woken: list[int] = []
    channel.on_put = lambda: woken.append(channel.depth)
    channel.put_many([])
    assert woken == [] and channel.high_water == 0 and channel._space.is_set()
    channel.put_many(envelopes(0, 2))
    channel.put_many([])  # a full channel takes an empty run without QueueFull
    assert woken == [2] and len(channel) == 2


async def test_put_many_that_fills_the_channel_clears_its_space() -> None:
    channel = Channel("a", 4)
    channel.put_many(envelopes(0, 3))
    assert channel._space.is_set() and channel.has_space()
    channel.put_many(envelopes(3, 1))
    assert not channel._space.is_set() and not channel.has_space()
    waiter = asyncio.create_task(channel.wait_for_space())
    done, _ = await asyncio.wait({waiter}, timeout=0.05)
    assert not done, "a producer must wait once put_many filled the channel"
    assert channel.take().value == 0
    await asyncio.wait_for(waiter, 5)
    assert channel.high_water == 4


operations = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.integers(0, 8)),
        st.tuples(st.just("take"), st.integers(0, 8)),
    ),
    max_size=30,
)


@settings(max_examples=200, deadline=None)
@given(maxsize=st.integers(1, 10), steps=operations)
def test_put_many_adds_a_run_in_order_or_leaves_the_channel_unchanged(
    maxsize: int, steps: list[tuple[str, int]]
) -> None:
    channel = Channel("a", maxsize)
    woken: list[int] = []
    channel.on_put = lambda: woken.append(channel.depth)
    model: list[int] = []  # what the channel should hold
    wakes, high, next_value = 0, 0, 0
    for step, count in steps:
        if step == "take":
            taken = channel.take_many(count)
            assert [e.value for e in taken] == model[:count]
            del model[:count]
        else:
            run = envelopes(next_value, count)
            next_value += count
            before = [e.value for e in channel._items]
            if len(model) + count > maxsize:
                with pytest.raises(asyncio.QueueFull):
                    channel.put_many(run)
                assert [e.value for e in channel._items] == before
            else:
                channel.put_many(run)
                model.extend(e.value for e in run)
                if count:
                    wakes += 1
                    assert woken[-1] == len(model), "woken once the whole run is in"
                high = max(high, len(model))
        assert [e.value for e in channel._items] == model
        assert len(woken) == wakes
        assert channel.high_water == high
        assert channel._space.is_set() == channel.has_space() == (len(model) < maxsize)
