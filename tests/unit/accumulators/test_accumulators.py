"""Accumulator decorators, validation, filtering, polling and batch timers."""

from __future__ import annotations

import asyncio
import itertools

import pytest
from pydantic import BaseModel

from headrace.accumulators import (
    AccumulatorInputError,
    AccumulatorKind,
    batch_accumulator,
    get_accumulator,
    passthrough_accumulator,
    polling_accumulator,
    registered_accumulators,
    stream_accumulator,
)
from headrace.accumulators.spec import DEFAULT_CHANNEL_SIZE
from headrace.connectors import MemoryDeadLetters, MemorySink
from headrace.engine import Runtime
from tests.unit.support import declare_reactor, one_node_graph, wait_until


class Book(BaseModel):
    bid: float
    ask: float


# -- decorators -------------------------------------------------------------------------


def test_passthrough_bare_decorator_registers_and_returns_the_function():
    def quotes(event):
        return event * 2

    decorated = passthrough_accumulator(quotes)
    assert decorated is quotes
    assert decorated(3) == 6  # still a plain function
    spec = get_accumulator("quotes")
    assert spec.kind is AccumulatorKind.PASSTHROUGH
    assert spec.fn is quotes
    assert spec.channel_size == DEFAULT_CHANNEL_SIZE
    assert quotes.__headrace_accumulator__ is spec


def test_passthrough_with_options():
    @passthrough_accumulator(name="renamed", channel_size=7)
    def quotes(event):
        return event

    spec = get_accumulator("renamed")
    assert spec.channel_size == 7
    assert "quotes" not in registered_accumulators()


def test_stream_decorator_settings():
    @stream_accumulator(topic="price.orderbook", group="g1")
    def books(event):
        return event

    spec = get_accumulator("books")
    assert spec.kind is AccumulatorKind.STREAM
    assert (spec.topic, spec.group, spec.source_type) == ("price.orderbook", "g1", "kafka")


def test_stream_type_option():
    @stream_accumulator(topic="t", type="other")
    def books(event):
        return event

    assert get_accumulator("books").source_type == "other"
    assert get_accumulator("books").group is None


def test_stream_without_topic_names_the_accumulator():
    with pytest.raises(ValueError, match=r"accumulator 'books'.*topic"):

        @stream_accumulator(topic="")
        def books(event):
            return event


def test_polling_decorator_settings():
    @polling_accumulator(interval="250ms")
    def poller():
        return 1

    spec = get_accumulator("poller")
    assert spec.kind is AccumulatorKind.POLLING
    assert spec.interval == pytest.approx(0.25)


def test_polling_default_interval_is_five_seconds():
    @polling_accumulator()
    def poller():
        return 1

    assert get_accumulator("poller").interval == pytest.approx(5.0)


def test_batch_decorator_settings():
    @batch_accumulator(flush_interval="2s", max_buffer_size=10, topic="trades")
    def trades(events):
        return events

    spec = get_accumulator("trades")
    assert spec.kind is AccumulatorKind.BATCH
    assert (spec.flush_interval, spec.max_buffer_size, spec.topic) == (2.0, 10, "trades")


@pytest.mark.parametrize("size", [0, -1, "5", 2.5])
def test_batch_max_buffer_size_must_be_positive_int(size):
    with pytest.raises(ValueError, match=r"accumulator 'trades': max_buffer_size"):

        @batch_accumulator(max_buffer_size=size)
        def trades(events):
            return events


@pytest.mark.parametrize("size", [0, -4, "big"])
def test_channel_size_must_be_positive_int(size):
    with pytest.raises(ValueError, match=r"accumulator 'quotes': channel_size"):

        @passthrough_accumulator(channel_size=size)
        def quotes(event):
            return event


def test_redeclaring_replaces_the_registration():
    @passthrough_accumulator(name="x")
    def first(event):
        return 1

    @passthrough_accumulator(name="x")
    def second(event):
        return 2

    assert get_accumulator("x").fn is second


def test_unknown_accumulator_lookup_names_it():
    with pytest.raises(KeyError, match=r"unknown accumulator 'nope'"):
        get_accumulator("nope")


# -- validation and transformation ------------------------------------------------------


def test_model_annotation_validates_events():
    @passthrough_accumulator
    def book(event: Book) -> Book:
        return event

    spec = get_accumulator("book")
    assert spec.model is Book
    validated = spec.validate({"bid": "1.5", "ask": 2})
    assert validated == Book(bid=1.5, ask=2.0)
    with pytest.raises(AccumulatorInputError, match=r"accumulator 'book'.*Book.*ask") as info:
        spec.validate({"bid": 1})
    assert info.value.accumulator == "book"


def test_list_of_models_annotation_validates_each_item():
    @passthrough_accumulator
    def books(event: list[Book]):
        return event

    spec = get_accumulator("books")
    assert spec.model is Book and spec.model_is_list
    assert spec.validate([{"bid": 1, "ask": 2}]) == [Book(bid=1, ask=2)]
    with pytest.raises(AccumulatorInputError, match=r"expected a list"):
        spec.validate({"bid": 1, "ask": 2})


def test_no_model_no_validation():
    @passthrough_accumulator
    def raw(event: dict):
        return event

    assert get_accumulator("raw").model is None
    assert get_accumulator("raw").validate("anything") == "anything"


async def _running(accumulators, fn, graph="g", strategy="sequential", **options):
    declare_reactor("rx", accumulators, strategy=strategy)
    one_node_graph(graph, "rx", accumulators, fn, **options)
    sink = MemorySink()
    runtime = Runtime(graphs=[graph], sinks=[sink])
    await runtime.start()
    return runtime, sink


async def test_pushed_events_are_validated_before_the_function():
    seen = []

    @passthrough_accumulator
    def book(event: Book):
        seen.append(event)
        return event.ask - event.bid

    runtime, sink = await _running(["book"], lambda book: book)
    try:
        await runtime.push("book", {"bid": 99, "ask": 101})
        with pytest.raises(AccumulatorInputError, match=r"accumulator 'book'"):
            await runtime.push("book", {"bid": "not a number", "ask": 1})
        await runtime.wait_idle()
    finally:
        await runtime.stop()
    assert seen == [Book(bid=99, ask=101)]  # the invalid event never reached the function
    assert sink.outputs() == [{"run": 2.0}]


async def test_returning_none_delivers_nothing():
    @passthrough_accumulator
    def evens(event):
        return event if event % 2 == 0 else None

    runtime, sink = await _running(["evens"], lambda evens: evens)
    try:
        for value in range(6):
            await runtime.push("evens", value)
        await runtime.wait_idle()
        health = runtime.health()["accumulators"]["evens"]
    finally:
        await runtime.stop()
    assert [out["run"] for out in sink.outputs()] == [0, 2, 4]
    assert (health["events_in"], health["delivered"], health["filtered"]) == (6, 3, 3)


async def test_async_accumulator_function():
    @passthrough_accumulator
    async def doubled(event):
        await asyncio.sleep(0)
        return event * 2

    runtime, sink = await _running(["doubled"], lambda doubled: doubled)
    try:
        await runtime.push("doubled", 21)
        await runtime.wait_idle()
    finally:
        await runtime.stop()
    assert sink.outputs() == [{"run": 42}]


async def test_accumulator_function_raising_names_the_accumulator():
    @passthrough_accumulator
    def fragile(event):
        raise KeyError("price")

    runtime, sink = await _running(["fragile"], lambda fragile: fragile)
    try:
        with pytest.raises(AccumulatorInputError, match=r"accumulator 'fragile'.*KeyError"):
            await runtime.push("fragile", {})
        assert runtime.health()["accumulators"]["fragile"]["errors"] == 1
    finally:
        await runtime.stop()
    assert sink.results == []


async def test_pushing_to_a_polling_accumulator_is_refused():
    @polling_accumulator(interval="1h")
    def poller():
        return None

    runtime, _ = await _running(["poller"], lambda poller: poller)
    try:
        with pytest.raises(ValueError, match=r"polling accumulator"):
            await runtime.push("poller", 1)
        with pytest.raises(KeyError, match=r"unknown accumulator 'ghost'"):
            await runtime.push("ghost", 1)
    finally:
        await runtime.stop()


# -- polling ------------------------------------------------------------------------------


async def test_polling_calls_the_function_on_its_timer_and_skips_none():
    counter = itertools.count(1)

    @polling_accumulator(interval="1ms")
    def ticks():
        value = next(counter)
        if value % 3 == 0:
            return None
        if value == 5:
            raise RuntimeError("source unavailable")  # logged, counted, polling goes on
        return value

    runtime, sink = await _running(["ticks"], lambda ticks: ticks)
    try:
        await sink.wait_for(4)
        health = runtime.health()["accumulators"]["ticks"]
    finally:
        await runtime.stop()
    values = [out["run"] for out in sink.outputs()]
    assert values[:4] == [1, 2, 4, 7]
    assert health["errors"] == 1
    assert health["filtered"] >= 1


async def test_async_polling_function():
    counter = itertools.count(1)

    @polling_accumulator(interval="1ms")
    async def ticks():
        return next(counter)

    runtime, sink = await _running(["ticks"], lambda ticks: ticks)
    try:
        await sink.wait_for(3)
    finally:
        await runtime.stop()
    assert [out["run"] for out in sink.outputs()][:3] == [1, 2, 3]


# -- batch ----------------------------------------------------------------------------------


async def test_batch_flushes_on_its_interval():
    @batch_accumulator(flush_interval="5ms", max_buffer_size=1000)
    def trades(events):
        return list(events)

    runtime, sink = await _running(["trades"], lambda trades: trades)
    try:
        await runtime.push("trades", 1)
        await runtime.push("trades", 2)
        await sink.wait_for(1)  # no size trigger, no stop: only the timer flushes
    finally:
        await runtime.stop()
    assert sink.outputs()[0] == {"run": [1, 2]}


async def test_batch_flushes_at_max_buffer_size():
    @batch_accumulator(flush_interval="1h", max_buffer_size=3)
    def trades(events):
        return sum(events)

    runtime, sink = await _running(["trades"], lambda trades: trades)
    try:
        for value in range(1, 8):
            await runtime.push("trades", value)
        await sink.wait_for(2)
        assert runtime.accumulator("trades").buffered == 1
        assert [out["run"] for out in sink.outputs()] == [1 + 2 + 3, 4 + 5 + 6]
    finally:
        await runtime.stop()
    assert [out["run"] for out in sink.outputs()] == [6, 15, 7]  # the stop flushed the rest


async def test_batch_clean_stop_loses_nothing():
    @batch_accumulator(flush_interval="1h", max_buffer_size=100)
    def trades(events):
        return list(events)

    runtime, sink = await _running(["trades"], lambda trades: trades)
    for value in range(10):
        await runtime.push("trades", value)
    assert sink.results == []
    await runtime.stop()
    assert sink.outputs() == [{"run": list(range(10))}]


async def test_batch_validates_each_event_with_the_list_model():
    @batch_accumulator(flush_interval="1h", max_buffer_size=2)
    def books(events: list[Book]):
        return [book.ask - book.bid for book in events]

    runtime, sink = await _running(["books"], lambda books: books)
    try:
        await runtime.push("books", {"bid": 1, "ask": 2})
        with pytest.raises(AccumulatorInputError, match=r"accumulator 'books'.*Book"):
            await runtime.push("books", {"bid": 1})
        assert runtime.accumulator("books").buffered == 1  # the invalid one was not buffered
        await runtime.push("books", {"bid": 1, "ask": 4})
        await sink.wait_for(1)
    finally:
        await runtime.stop()
    assert sink.outputs() == [{"run": [1.0, 3.0]}]


async def test_batch_function_returning_none_delivers_nothing_and_async_batch_functions():
    @batch_accumulator(flush_interval="1h", max_buffer_size=2)
    async def trades(events):
        return None if sum(events) < 10 else sum(events)

    runtime, sink = await _running(["trades"], lambda trades: trades)
    try:
        for value in (1, 2, 10, 20):
            await runtime.push("trades", value)
        await sink.wait_for(1)
        assert runtime.health()["accumulators"]["trades"]["filtered"] == 1
    finally:
        await runtime.stop()
    assert sink.outputs() == [{"run": 30}]


async def test_batch_health_reports_buffered_events():
    @batch_accumulator(flush_interval="1h", max_buffer_size=10)
    def trades(events):
        return events

    runtime, _ = await _running(["trades"], lambda trades: trades)
    try:
        await runtime.push("trades", 1)
        await runtime.push("trades", 2)
        await wait_until(lambda: runtime.accumulator("trades").buffered == 2)
        assert runtime.health()["accumulators"]["trades"]["buffered"] == 2
    finally:
        await runtime.stop()


async def test_a_batch_whose_function_raises_is_dead_lettered_and_acknowledged():
    @batch_accumulator(flush_interval="1h", max_buffer_size=2)
    def trades(events):
        if 13 in events:
            raise ValueError("unlucky batch")
        return sum(events)

    declare_reactor("rx", ["trades"])
    one_node_graph("g", "rx", ["trades"], lambda trades: trades)
    sink, letters, settled = MemorySink(), MemoryDeadLetters(), []
    async with Runtime(graphs=["g"], sinks=[sink], dead_letters=letters) as runtime:
        runner = runtime.accumulator("trades")
        for value in (12, 13, 1, 2):
            await runner.offer(value, acks=(lambda v=value: settled.append(v),))
        await sink.wait_for(1)
        await runtime.wait_idle()
    assert sink.outputs() == [{"run": 3}]  # the batch after the bad one still flows
    (letter,) = letters.letters
    assert (letter.kind, letter.accumulator, letter.payload) == ("batch", "trades", [12, 13])
    assert "unlucky batch" in letter.reason
    assert sorted(settled) == [1, 2, 12, 13]  # dead-lettered inputs count as handled


class DepthTick(BaseModel):
    price: float


def test_events_deeper_than_the_limit_are_refused_before_validation() -> None:
    from headrace.accumulators.spec import AccumulatorKind, make_spec

    def on_tick(event: DepthTick) -> DepthTick:
        return event

    spec = make_spec(on_tick, AccumulatorKind.STREAM, topic="t", name="ticks", strict=True)
    deep: object = {"price": 1.0}
    for _ in range(spec.max_depth):
        deep = {"x": deep}
    with pytest.raises(AccumulatorInputError, match=r"'ticks': value is nested more than 64"):
        spec.validate(deep)
    assert spec.validate({"price": 2}).price == 2.0  # strict JSON: an integer is a number
    with pytest.raises(AccumulatorInputError, match="does not match DepthTick"):
        spec.validate({"price": "2"})
    with pytest.raises(ValueError, match="strict must be true or false"):
        make_spec(on_tick, AccumulatorKind.STREAM, topic="t", name="bad", strict="yes")
