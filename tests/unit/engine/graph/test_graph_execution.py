"""Running graphs: execute()/execute_async(), routing, joins, errors, sync/async/concurrency."""

from __future__ import annotations

import asyncio
import threading

import pytest

from headrace.engine import ComputationGraphBuilder, NodeExecutionError, RoutingError, node
from tests.unit.support import declare_reactor


@pytest.fixture(autouse=True)
def rx():
    return declare_reactor("rx", ["a", "b"])


def _signal_graph():
    with ComputationGraphBuilder(
        "signal",
        reactor="rx",
        graph={
            "evaluate": {"inputs": ["a", "b"], "routes": {"Alert": "alert", "Ok": "record"}},
            "alert": {},
            "record": {},
        },
    ) as builder:

        @node
        def evaluate(a, b):
            if a is None or b is None:
                return ("Ok", "waiting")
            return ("Alert", a - b) if abs(a - b) > 1 else ("Ok", a - b)

        @node
        def alert(diff):
            return {"alert": diff}

        @node
        def record(diff):
            return {"ok": diff}

    return builder


def test_execute_returns_only_the_terminals_that_ran():
    builder = _signal_graph()
    assert builder.execute({"a": 5, "b": 1}) == {"alert": {"alert": 4}}
    assert builder.execute({"a": 1, "b": 1}) == {"record": {"ok": 0}}


def test_missing_inputs_are_none():
    assert _signal_graph().execute({"a": 5}) == {"record": {"ok": "waiting"}}
    assert _signal_graph().execute({}) == {"record": {"ok": "waiting"}}


def test_unknown_inputs_are_refused():
    with pytest.raises(ValueError, match=r"graph 'signal': unknown inputs \['zzz'\]"):
        _signal_graph().execute({"a": 1, "zzz": 2})


def test_next_fans_out_and_every_terminal_that_ran_is_returned():
    with ComputationGraphBuilder(
        "fan",
        reactor="rx",
        graph={
            "entry": {"inputs": ["a"], "next": ["double", "square"]},
            "double": {},
            "square": {"next": "report"},
            "report": {},
        },
    ) as builder:

        @node
        def entry(a):
            return a

        @node
        def double(x):
            return 2 * x

        @node
        def square(x):
            return x * x

        @node
        def report(x):
            return f"square={x}"

    assert builder.execute({"a": 3}) == {"double": 6, "report": "square=9"}


def test_routes_to_a_list_of_nodes_and_joins_receive_parents_by_name():
    with ComputationGraphBuilder(
        "join",
        reactor="rx",
        graph={
            "left": {"inputs": ["a"], "routes": {"Both": ["x", "y"], "One": "x"}},
            "right": {"inputs": ["b"], "next": "y"},
            "x": {"next": "total"},
            "y": {"next": "total"},
            "total": {},
        },
    ) as builder:

        @node
        def left(a):
            return ("Both", a) if a > 0 else ("One", a)

        @node
        def right(b):
            return b

        @node
        def x(value):
            return value + 1

        @node
        def y(left=None, right=None):  # two parents: passed by name, None if silent
            return (left, right)

        @node
        def total(x, y):
            return {"x": x, "y": y}

    assert builder.execute({"a": 1, "b": 10}) == {"total": {"x": 2, "y": (1, 10)}}
    # "One" routes only to x; y still runs because its other parent passed it a value
    assert builder.execute({"a": -1, "b": 10}) == {"total": {"x": 0, "y": (None, 10)}}


def test_a_node_no_parent_passed_anything_does_not_run():
    with ComputationGraphBuilder(
        "skip",
        reactor="rx",
        graph={"entry": {"inputs": ["a"], "routes": {"L": "l", "R": "r"}}, "l": {}, "r": {}},
    ) as builder:
        calls = []

        @node
        def entry(a):
            return ("L", a)

        @node
        def l(v):  # noqa: E743
            calls.append("l")
            return v

        @node
        def r(v):
            calls.append("r")
            return v

    assert builder.execute({"a": 1}) == {"l": 1}
    assert calls == ["l"]


@pytest.mark.parametrize(
    "bad",
    [("Nope", 1), "Alert", ("Alert",), ["Alert", 1], ("Alert", 1, 2), None],
)
def test_routing_to_an_unknown_variant_names_graph_node_and_cause(bad):
    with ComputationGraphBuilder(
        "routed",
        reactor="rx",
        graph={"decide": {"inputs": ["a"], "routes": {"Alert": "out", "Ok": "out"}}, "out": {}},
    ) as builder:

        @node
        def decide(a):
            return bad

        @node
        def out(v):
            return v

    with pytest.raises(RoutingError) as info:
        builder.execute({"a": 1})
    error = info.value
    assert (error.graph, error.node) == ("routed", "decide")
    assert "['Alert', 'Ok']" in error.cause and repr(bad)[:20] in error.cause
    assert str(error).startswith("graph 'routed', node 'decide':")
    assert isinstance(error, NodeExecutionError)


@pytest.mark.parametrize("use_async", [False, True])
async def test_a_raising_node_names_graph_node_and_cause(use_async):
    with ComputationGraphBuilder(
        "fragile",
        reactor="rx",
        graph={"entry": {"inputs": ["a"], "next": "divide"}, "divide": {}},
    ) as builder:

        @node
        def entry(a):
            return a

        if use_async:

            @node
            async def divide(x):
                return 1 / x

        else:

            @node
            def divide(x):
                return 1 / x

    with pytest.raises(NodeExecutionError) as info:
        await builder.execute_async({"a": 0})
    error = info.value
    assert (error.graph, error.node) == ("fragile", "divide")
    assert "ZeroDivisionError" in error.cause
    assert isinstance(error.__cause__, ZeroDivisionError)
    assert await builder.execute_async({"a": 4}) == {"divide": 0.25}


def test_sync_execute_of_a_graph_with_async_nodes():
    with ComputationGraphBuilder(
        "mixed",
        reactor="rx",
        graph={"entry": {"inputs": ["a"], "next": "slow"}, "slow": {"next": "fmt"}, "fmt": {}},
    ) as builder:

        @node
        def entry(a):
            return a + 1

        @node
        async def slow(x):
            await asyncio.sleep(0)
            return x * 10

        @node
        def fmt(x):
            return f"={x}"

    assert builder.execute({"a": 1}) == {"fmt": "=20"}


async def test_execute_inside_a_running_loop_points_to_execute_async():
    with ComputationGraphBuilder("aio", reactor="rx", graph={"entry": {"inputs": ["a"]}}) as b:

        @node
        async def entry(a):
            return a

    with pytest.raises(RuntimeError, match=r"execute_async"):
        b.execute({"a": 1})
    assert await b.execute_async({"a": 1}) == {"entry": 1}


async def test_a_sync_graph_can_be_executed_inside_a_loop_too():
    assert _signal_graph().execute({"a": 3, "b": 3}) == {"record": {"ok": 0}}
    assert await _signal_graph().execute_async({"a": 9, "b": 3}) == {"alert": {"alert": 6}}


async def test_independent_async_branches_run_concurrently():
    # Each branch waits for an event only the other one sets: run one after the
    # other, the first would wait forever (and hit the timeout).
    left_started, right_started = asyncio.Event(), asyncio.Event()
    with ComputationGraphBuilder(
        "concurrent",
        reactor="rx",
        graph={
            "entry": {"inputs": ["a"], "next": ["left", "right"]},
            "left": {},
            "right": {},
        },
    ) as builder:

        @node
        def entry(a):
            return a

        @node
        async def left(x):
            left_started.set()
            async with asyncio.timeout(5):
                await right_started.wait()
            return "left"

        @node
        async def right(x):
            right_started.set()
            async with asyncio.timeout(5):
                await left_started.wait()
            return "right"

    assert await builder.execute_async({"a": 1}) == {"left": "left", "right": "right"}


async def test_independent_entry_nodes_run_concurrently():
    a_seen, b_seen = asyncio.Event(), asyncio.Event()
    with ComputationGraphBuilder(
        "two_entries",
        reactor="rx",
        graph={"ea": {"inputs": ["a"]}, "eb": {"inputs": ["b"]}},
    ) as builder:

        @node
        async def ea(a):
            a_seen.set()
            async with asyncio.timeout(5):
                await b_seen.wait()
            return a

        @node
        async def eb(b):
            b_seen.set()
            async with asyncio.timeout(5):
                await a_seen.wait()
            return b

    assert await builder.execute_async({"a": 1, "b": 2}) == {"ea": 1, "eb": 2}


def test_thread_nodes_run_concurrently_off_the_loop():
    barrier = threading.Barrier(2, timeout=5)  # both must be inside at the same time
    with ComputationGraphBuilder(
        "threads",
        reactor="rx",
        graph={"entry": {"inputs": ["a"], "next": ["p", "q"]}, "p": {}, "q": {}},
    ) as builder:

        @node
        def entry(a):
            return a

        @node(thread=True)
        def p(x):
            barrier.wait()
            return threading.current_thread() is not threading.main_thread()

        @node(thread=True)
        def q(x):
            barrier.wait()
            return threading.current_thread() is not threading.main_thread()

    assert builder.execute({"a": 1}) == {"p": True, "q": True}


async def test_a_dependent_node_waits_for_its_parent():
    order = []
    with ComputationGraphBuilder(
        "chain",
        reactor="rx",
        graph={"entry": {"inputs": ["a"], "next": "first"}, "first": {"next": "then"}, "then": {}},
    ) as builder:

        @node
        async def entry(a):
            order.append("entry")
            return a

        @node
        async def first(x):
            await asyncio.sleep(0)
            order.append("first")
            return x + 1

        @node
        async def then(x):
            order.append("then")
            return x + 1

    assert await builder.execute_async({"a": 1}) == {"then": 3}
    assert order == ["entry", "first", "then"]


async def test_failure_in_an_async_branch_is_the_error_raised():
    with ComputationGraphBuilder(
        "branchy",
        reactor="rx",
        graph={
            "entry": {"inputs": ["a"], "next": ["ok", "bad"]},
            "ok": {},
            "bad": {"next": "after"},
            "after": {},
        },
    ) as builder:

        @node
        async def entry(a):
            return a

        @node
        async def ok(x):
            return x

        @node
        async def bad(x):
            raise ValueError("bad input")

        @node
        async def after(x):
            return x

    with pytest.raises(NodeExecutionError) as info:
        await builder.execute_async({"a": 1})
    assert info.value.node == "bad" and "bad input" in info.value.cause


async def test_a_failed_branch_cancels_the_branches_still_running():
    cancelled = asyncio.Event()

    with ComputationGraphBuilder(
        "stuck",
        reactor="rx",
        graph={"entry": {"inputs": ["a"], "next": ["hangs", "fails"]}, "hangs": {}, "fails": {}},
    ) as builder:

        @node
        async def entry(a):
            return a

        @node
        async def hangs(x):
            try:
                await asyncio.Event().wait()  # never set: only cancellation ends it
            except asyncio.CancelledError:
                cancelled.set()
                raise

        @node
        async def fails(x):
            await asyncio.sleep(0)
            raise RuntimeError("broken")

    with pytest.raises(NodeExecutionError) as info:
        await asyncio.wait_for(builder.execute_async({"a": 1}), timeout=5)
    assert info.value.node == "fails"
    assert cancelled.is_set()


@pytest.mark.parametrize("style", ["positional", "keyword-only", "other-first"])
def test_a_one_node_graph_runs_directly_and_names_its_node_on_failure(style: str) -> None:
    """The lone-node shortcut calls the node as the plan loop would (by position only
    when its input is its first positional parameter) and fails the same way."""
    with ComputationGraphBuilder("lone", reactor="rx", graph={"only": {"inputs": ["a"]}}) as b:
        if style == "positional":

            @node
            def only(a):
                return 10 // a

        elif style == "keyword-only":

            @node
            def only(*, a):
                return 10 // a

        else:

            @node
            def only(scale=2, a=None):
                return scale * 10 // a

    executor = b.build().executor
    assert executor._lone is not None
    expected = 10 if style != "other-first" else 20
    assert executor.run_sync({"a": 1}) == {"only": expected}
    with pytest.raises(NodeExecutionError, match=r"only.*TypeError"):
        executor.run_sync({})  # a missing input arrives as None, as in the plan loop
    with pytest.raises(NodeExecutionError, match=r"only.*ZeroDivisionError"):
        executor.run_sync({"a": 0})
