"""Keyed reactors in process: the key of a value, per-key firing, concurrency, bounds."""

from __future__ import annotations

import asyncio
from typing import Any

import pydantic
import pytest
import structlog.testing

from headrace.accumulators import (
    AccumulatorInputError,
    Channel,
    Envelope,
    batch_accumulator,
    passthrough_accumulator,
    polling_accumulator,
)
from headrace.accumulators.runners import AccumulatorRunner
from headrace.accumulators.spec import AccumulatorKind, AccumulatorSpec, make_spec
from headrace.connectors import CallbackSink, MemorySink
from headrace.engine import ComputationGraphBuilder, Runtime
from headrace.engine.errors import GraphDefinitionError, RuntimeConfigError
from headrace.engine.ops.metrics import Metrics
from headrace.reactors import (
    KeyedPolicy,
    KeyedReactorLoop,
    ReactorState,
    current_fire_key,
    get_reactor,
    reactor,
)
from headrace.reactors.declaration import make_reactor_spec
from headrace.reactors.keyed import DEFAULT_MAX_KEYS
from tests.unit.engine.ops.test_metrics import samples, value
from tests.unit.support import Gate, wait_until

# -- the key of a value ----------------------------------------------------------------------


class Book(pydantic.BaseModel):
    symbol: str
    bid: float


def runner_with(key: Any) -> tuple[AccumulatorRunner, Channel]:
    spec = AccumulatorSpec("book", AccumulatorKind.PASSTHROUGH, lambda e: e, key=key)
    channel = Channel("book", 8)
    return AccumulatorRunner(spec, [channel]), channel


@pytest.mark.parametrize(
    ("key", "value", "message_key", "expected"),
    [
        ("symbol", {"symbol": "BTC", "bid": 1.0}, None, "BTC"),
        ("symbol", Book(symbol="ETH", bid=2.0), None, "ETH"),
        ("account", {"account": 42}, None, "42"),
        (lambda v: v["symbol"].lower(), {"symbol": "BTC"}, None, "btc"),
        ("@message", {"bid": 1.0}, b"SOL", "SOL"),
        ("@message", {"bid": 1.0}, "XRP", "XRP"),
    ],
)
def test_the_key_is_taken_from_a_field_a_function_or_the_message(key, value, message_key, expected):
    runner, channel = runner_with(key)
    runner.offer_nowait(value, message_key=message_key)
    envelope = channel.take()
    assert envelope.key == expected
    assert envelope.value == value


@pytest.mark.parametrize(
    ("key", "value", "message_key", "reason"),
    [
        ("symbol", {"bid": 1.0}, None, "key field 'symbol' is missing from the value"),
        ("symbol", Book(symbol="x", bid=1.0).model_copy(update={"symbol": None}), None, "NoneType"),
        ("symbol", {"symbol": True}, None, "key field 'symbol' is bool"),
        ("symbol", {"symbol": ["a"]}, None, "is list, not a string"),
        (lambda v: v["nope"], {"symbol": "BTC"}, None, "key function raised KeyError('nope')"),
        (lambda v: 7, {"symbol": "BTC"}, None, "key function returned int, not str"),
        ("@message", {"bid": 1.0}, None, "key='@message' but the message has no key"),
        ("@message", {"bid": 1.0}, b"\xff\xfe", "message key is not UTF-8"),
    ],
)
def test_a_value_without_a_key_is_refused_with_the_reason(key, value, message_key, reason):
    runner, channel = runner_with(key)
    acks: list[str] = []
    with pytest.raises(AccumulatorInputError, match="accumulator 'book'") as caught:
        runner.offer_nowait(value, (lambda: acks.append("x"),), message_key=message_key)
    assert reason in caught.value.reason
    assert channel.depth == 0, "nothing is delivered"
    assert acks == [], "the caller owns the acks (the Kafka source dead-letters them)"
    assert runner.errors == 1


def test_unkeyed_accumulators_deliver_without_a_key():
    runner, channel = runner_with(None)
    runner.offer_nowait({"bid": 1.0}, message_key=b"ignored")
    assert channel.take().key is None


@pytest.mark.parametrize(
    ("declare", "message"),
    [
        (lambda: passthrough_accumulator(name="p", key="")(lambda e: e), "key must be a field"),
        (lambda: passthrough_accumulator(name="p", key=3)(lambda e: e), "key must be a field"),
        (lambda: polling_accumulator(name="p", key="@message")(lambda: 1), "polling accumulator"),
        (lambda: batch_accumulator(name="p", key="@message")(lambda e: e), "batch accumulator"),
    ],
)
def test_impossible_key_settings_are_refused_at_declaration(declare, message):
    with pytest.raises(ValueError, match=message):
        declare()


async def test_a_polled_value_without_a_key_is_not_delivered():
    spec = AccumulatorSpec(
        "poll", AccumulatorKind.POLLING, lambda: {"nope": 1}, interval=1.0, key="symbol"
    )
    from headrace.accumulators.runners import PollingRunner

    channel = Channel("poll", 4)
    runner = PollingRunner(spec, [channel])
    await runner.poll_once()
    assert channel.depth == 0
    assert runner.errors == 1


async def test_a_batch_without_a_key_is_dead_lettered_and_settled():
    from headrace.accumulators.runners import BatchRunner

    spec = AccumulatorSpec(
        "b", AccumulatorKind.BATCH, lambda events: {"n": len(events)}, flush_interval=1.0, key="sym"
    )
    channel = Channel("b", 4)
    runner = BatchRunner(spec, [channel])
    failures: list[str] = []

    async def on_failure(name: str, events: list[Any], reason: str) -> None:
        failures.append(reason)

    runner.on_batch_failure = on_failure
    acks: list[int] = []
    runner.offer_nowait({"x": 1}, (lambda: acks.append(1),))
    await runner.flush()
    assert failures == ["key field 'sym' is missing from the value"]
    assert acks == [1] and channel.depth == 0


async def test_a_batch_filtered_to_none_needs_no_key():
    from headrace.accumulators.runners import BatchRunner

    spec = AccumulatorSpec(
        "b", AccumulatorKind.BATCH, lambda events: None, flush_interval=1.0, key="sym"
    )
    runner = BatchRunner(spec, [Channel("b", 4)])
    failures: list[str] = []

    async def on_failure(name: str, events: list[Any], reason: str) -> None:
        failures.append(reason)

    runner.on_batch_failure = on_failure
    acks: list[int] = []
    runner.offer_nowait({"x": 1}, (lambda: acks.append(1),))
    await runner.flush()
    assert failures == [] and acks == [1] and runner.filtered == 1


# -- declaring keyed reactors ----------------------------------------------------------------


def test_keyed_reactor_settings_and_defaults():
    @reactor(name="kx", accumulators=["a", "b"], keyed=True, max_concurrency=8, key_ttl="30s")
    class Kx:
        pass

    spec = get_reactor("kx")
    assert (spec.keyed, spec.max_concurrency, spec.key_ttl) == (True, 8, 30.0)
    assert spec.max_keys == DEFAULT_MAX_KEYS
    unkeyed = make_reactor_spec("ux", ["a"], "when_any", "latest")
    assert (unkeyed.keyed, unkeyed.max_concurrency, unkeyed.max_keys) == (False, 1, None)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_concurrency": 4}, "max_concurrency only apply to keyed reactors"),
        ({"max_keys": 10}, "max_keys only apply to keyed reactors"),
        ({"keyed": True, "max_concurrency": 0}, "max_concurrency must be >= 1"),
        ({"keyed": True, "max_keys": 0}, "max_keys must be a positive integer"),
        ({"keyed": True, "key_ttl": "soon"}, "key_ttl"),
        ({"keyed": "yes"}, "keyed must be true or false"),
    ],
)
def test_invalid_keyed_settings_name_the_reactor(kwargs, message):
    with pytest.raises(ValueError, match=f"reactor 'rx'.*{message}"):
        make_reactor_spec("rx", ["a"], "when_any", "latest", **kwargs)


def test_key_is_a_reserved_accumulator_name_in_keyed_reactors():
    with pytest.raises(ValueError, match="'key' cannot feed a keyed reactor"):
        make_reactor_spec("rx", ["a", "key"], "when_any", "latest", keyed=True)


def keyed_pipeline(
    fn: Any,
    *,
    accumulators: tuple[str, ...] = ("book",),
    mode: str = "when_any",
    strategy: str = "latest",
    key: Any = "symbol",
    **keyed: Any,
) -> ComputationGraphBuilder:
    for name in accumulators:
        passthrough_accumulator(name=name, key=key, channel_size=64)(lambda event: event)
    reactor(
        name="kx",
        accumulators=list(accumulators),
        mode=mode,
        strategy=strategy,
        keyed=True,
        **keyed,
    )(type("Kx", (), {}))
    with ComputationGraphBuilder(
        "g", reactor="kx", graph={"run": {"inputs": list(accumulators)}}
    ) as builder:
        builder.add_node("run", fn)
    return builder


def test_a_keyed_reactor_refuses_accumulators_without_a_key_at_build():
    passthrough_accumulator(name="book", key="symbol")(lambda e: e)
    passthrough_accumulator(name="ref")(lambda e: e)
    reactor(name="kx", accumulators=["book", "ref"], keyed=True)(type("Kx", (), {}))
    builder = ComputationGraphBuilder("g", reactor="kx", graph={"n": {"inputs": ["book"]}})
    builder.add_node("n", lambda book: book)
    with pytest.raises(GraphDefinitionError, match=r"keyed, but accumulators \['ref'\] have no"):
        builder.build()


async def test_a_keyed_reactor_refuses_accumulators_without_a_key_at_start():
    reactor(name="kx", accumulators=["book"], keyed=True)(type("Kx", (), {}))
    with ComputationGraphBuilder("g", reactor="kx", graph={"n": {"inputs": ["book"]}}) as b:
        b.add_node("n", lambda book: book)
    passthrough_accumulator(name="book")(lambda e: e)  # declared after the graph, no key
    with pytest.raises(RuntimeConfigError, match=r"reactor 'kx' is keyed, but accumulators"):
        await Runtime(graphs=[b]).start()


# -- graphs and the key parameter --------------------------------------------------------------


def test_entry_nodes_take_the_key_and_execute_passes_it():
    builder = keyed_pipeline(lambda book, key: {"key": key, "bid": book["bid"]})
    assert builder.execute({"book": {"bid": 2.0}}, key="BTC") == {"run": {"key": "BTC", "bid": 2.0}}
    with pytest.raises(ValueError, match=r"nodes \['run'\] take a 'key' parameter"):
        builder.execute({"book": {"bid": 2.0}})


def test_a_key_parameter_needs_a_keyed_reactor():
    passthrough_accumulator(name="book")(lambda e: e)
    reactor(name="ux", accumulators=["book"])(type("Ux", (), {}))
    builder = ComputationGraphBuilder("g", reactor="ux", graph={"n": {"inputs": ["book"]}})
    builder.add_node("n", lambda book, key: book)
    with pytest.raises(GraphDefinitionError, match="reactor 'ux' is not keyed") as caught:
        builder.build()
    assert caught.value.node == "n"


async def test_async_graphs_and_sinks_see_the_fire_key():
    seen: list[tuple[str, str | None]] = []

    async def run(book, key):
        await asyncio.sleep(0)
        return {"key": key, "in_graph": current_fire_key()}

    builder = keyed_pipeline(run, max_concurrency=4)
    sink = CallbackSink(
        lambda graph, outputs: seen.append((outputs["run"]["key"], current_fire_key()))
    )
    async with Runtime(graphs=[builder], sinks=[sink]) as runtime:
        for symbol in ("BTC", "ETH", "SOL"):
            await runtime.push("book", {"symbol": symbol})
        await runtime.wait_idle()
    assert sorted(seen) == [("BTC", "BTC"), ("ETH", "ETH"), ("SOL", "SOL")]
    assert current_fire_key() is None


# -- per-key firing through the runtime ------------------------------------------------------------


async def test_latest_coalesces_only_within_a_key():
    """The issue's scenario: an ETH book arriving while a BTC fire runs is still fired."""
    gate = Gate()
    seen: list[tuple[str, int]] = []

    async def run(book):
        seen.append((book["symbol"], book["n"]))
        await gate.wait()
        return book

    sink = MemorySink()
    builder = keyed_pipeline(run)  # max_concurrency 1: one fire at a time over all keys
    async with Runtime(graphs=[builder], sinks=[sink]) as runtime:
        await runtime.push("book", {"symbol": "BTC", "n": 1})
        await gate.wait_entered(1)
        await runtime.push("book", {"symbol": "ETH", "n": 2})
        await runtime.push("book", {"symbol": "BTC", "n": 3})
        await runtime.push("book", {"symbol": "BTC", "n": 4})  # supersedes BTC 3
        gate.release(10)
        await runtime.wait_idle()
    assert seen == [("BTC", 1), ("ETH", 2), ("BTC", 4)]


async def test_when_all_joins_values_of_the_same_key():
    joined: list[tuple[str, str, float]] = []

    def run(book, ref, key):
        joined.append((key, book["symbol"], ref["price"]))
        return None

    builder = keyed_pipeline(run, accumulators=("book", "ref"), mode="when_all")
    async with Runtime(graphs=[builder]) as runtime:
        await runtime.push("book", {"symbol": "BTC", "bid": 1.0})
        await runtime.push("ref", {"symbol": "ETH", "price": 2.0})
        await runtime.wait_idle()
        assert joined == [], "a BTC book and an ETH price do not join"
        await runtime.push("ref", {"symbol": "BTC", "price": 3.0})
        await runtime.push("book", {"symbol": "ETH", "bid": 4.0})
        await runtime.wait_idle()
    assert sorted(joined) == [("BTC", "BTC", 3.0), ("ETH", "ETH", 2.0)]


async def test_message_key_through_push():
    seen: list[str] = []
    builder = keyed_pipeline(lambda book, key: seen.append(key), key="@message")
    async with Runtime(graphs=[builder]) as runtime:
        await runtime.push("book", {"bid": 1.0}, message_key=b"BTC")
        with pytest.raises(AccumulatorInputError, match="has no key"):
            await runtime.push("book", {"bid": 1.0})
        await runtime.wait_idle()
    assert seen == ["BTC"]


async def test_max_concurrency_runs_keys_at_once_but_one_fire_per_key():
    gate = Gate()
    running: dict[str, int] = {}
    overlap = {"max_total": 0, "max_per_key": 0}

    async def run(book, key):
        running[key] = running.get(key, 0) + 1
        overlap["max_total"] = max(overlap["max_total"], sum(running.values()))
        overlap["max_per_key"] = max(overlap["max_per_key"], running[key])
        await gate.wait()
        running[key] -= 1

    builder = keyed_pipeline(run, strategy="sequential", max_concurrency=3)
    async with Runtime(graphs=[builder]) as runtime:
        loop = runtime.reactors["kx"]
        for n in range(3):
            for symbol in ("A", "B", "C", "D"):
                await runtime.push("book", {"symbol": symbol, "n": n})
        await gate.wait_entered(3)  # three keys entered the graph together ...
        await asyncio.sleep(0.01)
        assert gate.entered == 3 and loop.running == 3  # ... and no fourth (the bound)
        gate.release(100)
        await runtime.wait_idle()
    assert overlap == {"max_total": 3, "max_per_key": 1}
    assert loop.fire_count == 12


async def test_a_failed_fire_stops_the_reactor_and_leaves_its_values_unsettled():
    spec = make_reactor_spec("kx", ["a"], "when_any", "sequential", keyed=True, max_concurrency=2)
    channels = {"a": Channel("a", 16)}
    settled: list[str] = []

    async def handler(fire):
        if fire.key == "BAD":
            raise RuntimeError("boom")

    loop = KeyedReactorLoop(spec, channels, handler)
    loop.start()
    for key in ("OK", "BAD", "BAD", "LATE"):
        channels["a"].put_nowait(envelope(key, acks=(lambda key=key: settled.append(key),)))
    await asyncio.wait_for(loop.stop(), 5)
    assert loop.state is ReactorState.FAILED and "boom" in (loop.last_error or "")
    assert "BAD" not in settled, "a failed fire's envelope stays unsettled (replayed later)"
    assert settled.count("OK") == 1 and channels["a"].closed_reason is not None


async def test_a_broken_loop_marks_the_reactor_failed():
    """A value without a key cannot reach a keyed reactor through the runtime; if one does,
    the reactor fails visibly (health, runtime.failed) instead of dying silently."""
    spec = make_reactor_spec("kx", ["a"], "when_any", "latest", keyed=True)
    channels = {"a": Channel("a", 4)}

    async def handler(fire):
        return None

    loop = KeyedReactorLoop(spec, channels, handler)
    loop.start()
    channels["a"].put_nowait(Envelope("a", 1))  # no key
    await wait_until(lambda: loop.state is ReactorState.FAILED)
    assert "delivered a value without a key" in (loop.last_error or "")
    assert channels["a"].closed_reason is not None
    await asyncio.wait_for(loop.stop(), 5)
    assert loop.state is ReactorState.FAILED


async def test_fires_per_second_over_a_ten_second_window():
    clock = FakeClock()
    spec = make_reactor_spec("kx", ["a"], "when_any", "latest", keyed=True)
    channels = {"a": Channel("a", 16)}

    async def handler(fire):
        return None

    loop = KeyedReactorLoop(spec, channels, handler, clock=clock)
    loop.start()
    for key in ("A", "B", "C", "D", "E"):
        channels["a"].put_nowait(envelope(key))
    await wait_until(lambda: loop.fire_count == 5 and not loop.busy)
    assert loop.fires_per_second() == 0.5
    clock.now += 10
    assert loop.fires_per_second() == 0.0
    await loop.stop()


# -- bounds: max_keys, TTL, backpressure when every key is busy ------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def envelope(key: str, accumulator: str = "a", value: Any = 0, acks: tuple = ()) -> Envelope:
    return Envelope(accumulator, value, acks, key=key)


def test_max_keys_evicts_the_least_recently_active_idle_key():
    clock = FakeClock()
    policy = KeyedPolicy(
        make_reactor_spec("rx", ["a"], "when_any", "latest", keyed=True, max_keys=2), clock
    )
    for key in ("k1", "k2"):
        assert policy.admits(key)
        policy.apply(envelope(key))
        clock.now += 1
    fire = policy.next_fire()
    assert fire is not None and fire.key == "k1"  # k1 runs; k2 owes a fire
    assert not policy.admits("k3"), "no key is idle: k3 waits"
    policy.finished("k1")  # k1 idle now
    assert policy.admits("k3")
    assert list(policy.keys) == ["k2"] and policy.evictions == {"max_keys": 1}
    assert policy.evicted == [("k1", "max_keys")]


def test_a_key_holding_half_a_when_all_join_after_its_fire_is_not_evicted():
    spec = make_reactor_spec("rx", ["a", "b"], "when_all", "latest", keyed=True, max_keys=1)
    policy = KeyedPolicy(spec, FakeClock())
    acks: list[str] = []
    policy.apply(envelope("k1", "a"))
    policy.apply(envelope("k1", "b"))
    fire = policy.next_fire()
    assert fire is not None
    policy.apply(envelope("k1", "a", acks=(lambda: acks.append("k1.a"),)))  # during the fire
    fire.settle()
    policy.finished("k1")
    assert not policy.admits("k2"), "k1 holds an unsettled value: it is not idle"
    assert list(policy.keys) == ["k1"] and acks == [] and not policy.evictions


def test_ttl_evicts_idle_keys_only():
    clock = FakeClock()
    spec = make_reactor_spec("rx", ["a", "b"], "when_all", "latest", keyed=True, key_ttl=10)
    policy = KeyedPolicy(spec, clock)
    acks: list[str] = []
    policy.apply(envelope("idle"))
    policy.apply(envelope("idle", "b"))
    fire = policy.next_fire()
    assert fire is not None
    fire.settle()
    policy.finished("idle")
    policy.apply(envelope("partial", acks=(lambda: acks.append("partial"),)))  # waits for b
    clock.now += 11
    policy.sweep()
    assert list(policy.keys) == ["partial"], "a key with an unsettled value is never evicted"
    assert policy.evictions == {"ttl": 1} and acks == []
    assert policy.oldest_pending() == ("partial", 11.0)


async def test_the_loop_sweeps_idle_keys_without_new_deliveries_and_logs_it():
    clock = FakeClock()
    spec = make_reactor_spec("kx", ["a"], "when_any", "latest", keyed=True, key_ttl=0.04)
    channels = {"a": Channel("a", 16)}

    async def handler(fire):
        return None

    loop = KeyedReactorLoop(spec, channels, handler, clock=clock)
    with structlog.testing.capture_logs() as logs:
        loop.start()
        for key in ("A", "B"):
            channels["a"].put_nowait(envelope(key))
        await wait_until(lambda: loop.fire_count == 2 and not loop.busy)
        assert loop.health()["keys"] == 2
        clock.now += 1  # past the TTL; nothing else happens
        await wait_until(lambda: loop.health()["keys"] == 0)
        await loop.stop()
    assert loop.health()["evictions"] == {"ttl": 2}
    (logged,) = [line for line in logs if line["event"] == "keys evicted"]
    assert (logged["reason"], logged["count"], sorted(logged["keys"])) == ("ttl", 2, ["A", "B"])


async def test_all_keys_busy_backpressure_then_the_new_key_fires():
    gate = Gate()
    seen: list[str] = []

    async def run(book, key):
        seen.append(key)
        await gate.wait()

    builder = keyed_pipeline(run, max_concurrency=2, max_keys=2)
    async with Runtime(graphs=[builder]) as runtime:
        loop = runtime.reactors["kx"]
        assert isinstance(loop, KeyedReactorLoop)
        await runtime.push("book", {"symbol": "A"})
        await runtime.push("book", {"symbol": "B"})
        await gate.wait_entered(2)
        await runtime.push("book", {"symbol": "C"})
        await wait_until(lambda: loop.health()["waiting_for_key_slot"] == "C")
        assert loop.channels["book"].depth == 1, "C stays in the channel (backpressure)"
        assert loop.health()["keys"] == 2
        gate.release(10)
        await runtime.wait_idle()
        health = loop.health()
    assert seen == ["A", "B", "C"]
    assert health["keys"] == 2 and health["evictions"] == {"max_keys": 1}
    assert health["waiting_for_key_slot"] is None


async def test_keyed_health_and_metrics():
    gate = Gate()

    async def run(book, ref):
        await gate.wait()

    builder = keyed_pipeline(run, accumulators=("book", "ref"), mode="when_all", max_concurrency=2)
    metrics = Metrics()
    runtime = Runtime(graphs=[builder])
    metrics.attach(runtime)
    async with runtime:
        loop = runtime.reactors["kx"]
        await runtime.push("book", {"symbol": "A"})
        await runtime.push("ref", {"symbol": "A"})
        await runtime.push("book", {"symbol": "B"})  # B waits for its ref
        await gate.wait_entered(1)
        await wait_until(lambda: loop.health()["keys"] == 2)
        health = loop.health()
        parsed = samples(metrics.render())
        gate.release(10)
        await runtime.wait_idle()
        done = loop.health()
    assert health["keys"] == 2 and health["running_fires"] == 1
    assert health["oldest_pending_key"] == "B" and health["oldest_pending_age"] >= 0
    assert value(parsed, "headrace_reactor_keys", reactor="kx") == 2
    assert value(parsed, "headrace_reactor_running_fires", reactor="kx") == 1
    assert value(parsed, "headrace_reactor_key_evictions_total", reactor="kx", reason="ttl") == 0
    assert done["fire_count"] == 1 and done["fires_per_second"] > 0
    assert runtime.health()["graphs"]["g"]["keys"] == 2


# -- global (table) accumulators ---------------------------------------------------------------


def test_scope_global_needs_a_stream_with_a_key() -> None:
    from headrace.accumulators import stream_accumulator

    with pytest.raises(ValueError, match="give it key="):
        stream_accumulator(topic="t", name="tbl_nokey", scope="global")(lambda e: e)
    with pytest.raises(ValueError, match="for stream accumulators"):
        make_spec(lambda e: e, AccumulatorKind.PASSTHROUGH, name="tbl_pt", key="k", scope="global")
    with pytest.raises(ValueError, match="'group' or 'global'"):
        stream_accumulator(topic="t", name="tbl_scope", key="k", scope="all")(lambda e: e)


async def test_a_keyed_fire_sees_the_table_entry_of_its_key_and_tables_never_fire() -> None:
    from headrace.accumulators import stream_accumulator
    from headrace.accumulators.runners import TableRunner

    passthrough_accumulator(name="tb_trades", key="symbol")(lambda e: e)
    stream_accumulator(topic="tb_instruments", name="tb_instruments", key="symbol", scope="global")(
        lambda e: e
    )
    reactor(
        name="tb_rx", accumulators=["tb_trades", "tb_instruments"], mode="when_all", keyed=True
    )(type("Rx", (), {}))
    seen: list[tuple[str, Any]] = []
    with ComputationGraphBuilder(
        "tb_graph", reactor="tb_rx", graph={"enrich": {"inputs": ["tb_trades", "tb_instruments"]}}
    ) as builder:
        builder.add_node(
            "enrich", lambda tb_trades, tb_instruments, key: seen.append((key, tb_instruments))
        )
    async with Runtime(graphs=["tb_graph"]) as runtime:
        table = runtime.accumulators["tb_instruments"]
        assert isinstance(table, TableRunner)
        table.offer_nowait({"symbol": "BTC", "tick": 0.5})
        assert runtime.reactors["tb_rx"].fire_count == 0, "a table update never fires"
        await runtime.push("tb_trades", {"symbol": "BTC"})
        await runtime.push("tb_trades", {"symbol": "ETH"})
        await runtime.wait_idle()
    assert sorted(seen, key=lambda s: s[0]) == [
        ("BTC", {"symbol": "BTC", "tick": 0.5}),
        ("ETH", None),
    ]


async def test_an_unkeyed_reactor_cannot_watch_a_table() -> None:
    from headrace.accumulators import stream_accumulator

    passthrough_accumulator(name="tu_trades")(lambda e: e)
    stream_accumulator(topic="tu_instruments", name="tu_instruments", key="symbol", scope="global")(
        lambda e: e
    )
    reactor(name="tu_rx", accumulators=["tu_trades", "tu_instruments"])(type("Rx", (), {}))
    with ComputationGraphBuilder(
        "tu_graph", reactor="tu_rx", graph={"n": {"inputs": ["tu_trades", "tu_instruments"]}}
    ) as builder:
        builder.add_node("n", lambda tu_trades, tu_instruments: None)
    with pytest.raises(RuntimeConfigError, match="only keyed reactors"):
        async with Runtime(graphs=["tu_graph"]):
            pass
