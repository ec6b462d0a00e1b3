"""The in-process runtime: wiring, several graphs per reactor, errors, retries, health."""

from __future__ import annotations

import asyncio
import sys

import pytest

from headrace.accumulators import ChannelClosedError
from headrace.connectors import CallbackSink, MemoryDeadLetters, MemorySink
from headrace.engine import (
    GraphDefinitionError,
    RetryPolicy,
    Runtime,
    RuntimeConfigError,
    get_graph,
    registered_graphs,
    unload_graph,
)
from headrace.reactors import (
    ReactorInUseError,
    bound_graphs,
    find_reactor,
    unload_reactor,
)
from tests.unit.support import (
    Gate,
    declare_reactor,
    one_node_graph,
    passthroughs,
    pipeline,
    wait_until,
)

# -- results and sinks -------------------------------------------------------------------


async def test_results_go_to_every_sink_and_graph_sinks_to_one_graph():
    passthroughs("a")
    declare_reactor("rx", ["a"])
    one_node_graph("g1", "rx", ["a"], lambda a: a + 1)
    one_node_graph("g2", "rx", ["a"], lambda a: a * 10)
    everything, only_g2 = MemorySink(), MemorySink()
    called = []

    async def callback(graph, outputs):
        called.append((graph, outputs))

    async with Runtime(
        graphs=["g1", "g2"],
        sinks=[everything, CallbackSink(callback)],
        graph_sinks={"g2": [only_g2]},
    ) as runtime:
        await runtime.push("a", 1)
        await runtime.wait_idle()
    assert sorted(everything.results) == [("g1", {"run": 2}), ("g2", {"run": 10})]
    assert sorted(called) == sorted(everything.results)
    assert only_g2.results == [("g2", {"run": 10})]


async def test_sync_callback_sink():
    pipeline(["a"], lambda a: a)
    seen = []
    async with Runtime(graphs=["g"], sinks=[CallbackSink(lambda g, o: seen.append(o))]) as rt:
        await rt.push("a", 7)
        await rt.wait_idle()
    assert seen == [{"run": 7}]


async def test_default_runtime_runs_every_registered_graph():
    pipeline(["a"], lambda a: a, graph="only")
    assert set(registered_graphs()) >= {"only"}
    for name in set(registered_graphs()) - {"only"}:  # leftovers from module imports
        unload_graph(name)
    sink = MemorySink()
    async with Runtime(sinks=[sink]) as runtime:
        assert set(runtime.graphs) == {"only"}
        await runtime.push("a", 1)
        await runtime.wait_idle()
    assert sink.results == [("only", {"run": 1})]


# -- several graphs on one reactor ---------------------------------------------------------


async def test_every_bound_graph_runs_on_each_fire_and_a_failing_one_does_not_stop_them():
    passthroughs("a")
    declare_reactor("rx", ["a"])
    one_node_graph("good", "rx", ["a"], lambda a: a)

    def bad(a):
        raise RuntimeError(f"cannot handle {a}")

    one_node_graph("bad", "rx", ["a"], bad)
    sink, letters = MemorySink(), MemoryDeadLetters()
    async with Runtime(graphs=["good", "bad"], sinks=[sink], dead_letters=letters) as runtime:
        for value in (1, 2, 3):
            await runtime.push("a", value)
            await runtime.wait_idle()
        health = runtime.health()
    assert sink.outputs("good") == [{"run": 1}, {"run": 2}, {"run": 3}]
    assert [letter.payload for letter in letters.letters] == [{"a": 1}, {"a": 2}, {"a": 3}]
    assert health["reactors"]["rx"]["state"] == "running"
    assert health["reactors"]["rx"]["fire_count"] == 3
    assert health["graphs"]["bad"]["failures"] == 3
    assert health["graphs"]["good"]["failures"] == 0


async def test_graphs_from_different_reactors_share_an_accumulator():
    passthroughs("a", "b")
    declare_reactor("rx_any", ["a"])
    declare_reactor("rx_all", ["a", "b"], mode="when_all")
    one_node_graph("any", "rx_any", ["a"], lambda a: a)
    one_node_graph("all", "rx_all", ["a", "b"], lambda a, b: (a, b))
    sink = MemorySink()
    settled = []
    async with Runtime(graphs=["any", "all"], sinks=[sink]) as runtime:
        await runtime.accumulator("a").offer(1, acks=(lambda: settled.append("a1"),))
        await runtime.wait_idle()
        assert sink.outputs("any") == [{"run": 1}]
        assert settled == []  # rx_all has not fired on it yet
        await runtime.accumulator("b").offer(2, acks=(lambda: settled.append("b2"),))
        await runtime.wait_idle()
    assert sink.outputs("all") == [{"run": (1, 2)}]
    assert sorted(settled) == ["a1", "b2"]  # once each, after both reactors handled "a"


# -- firing through the runtime ---------------------------------------------------------------


async def test_latest_coalesces_through_the_runtime():
    gate = Gate()
    seen = []

    async def slow(a):
        seen.append(a)
        await gate.wait()
        return a

    pipeline(["a"], slow)
    sink = MemorySink()
    async with Runtime(graphs=["g"], sinks=[sink]) as runtime:
        await runtime.push("a", 1)
        await gate.wait_entered(1)
        for value in range(2, 21):
            await runtime.push("a", value)
        gate.release(2)
        await runtime.wait_idle()
        fires = runtime.health()["graphs"]["g"]["fire_count"]
    assert seen == [1, 20]
    assert fires == 2


async def test_sequential_keeps_order_and_loses_nothing_through_the_runtime():
    async def handle(a):
        await asyncio.sleep(0)
        return a

    pipeline(["a"], handle, strategy="sequential")
    sink = MemorySink()
    async with Runtime(graphs=["g"], sinks=[sink]) as runtime:
        for value in range(100):
            await runtime.push("a", value)
        await runtime.wait_idle()
    assert [out["run"] for out in sink.outputs()] == list(range(100))


async def test_one_fire_at_a_time_through_the_runtime():
    running, peak = 0, 0

    async def node_fn(a, b):
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0)
        running -= 1
        return a

    pipeline(["a", "b"], node_fn)
    async with Runtime(graphs=["g"]) as runtime:
        pushes = [runtime.push("a" if i % 2 else "b", i) for i in range(60)]
        await asyncio.gather(*pushes)
        await runtime.wait_idle()
        assert runtime.health()["graphs"]["g"]["fire_count"] >= 1
    assert peak == 1


async def test_pause_and_resume_by_graph_or_reactor_name():
    pipeline(["a"], lambda a: a, strategy="sequential")
    sink = MemorySink()
    async with Runtime(graphs=["g"], sinks=[sink]) as runtime:
        runtime.pause("g")  # a graph's name pauses its reactor
        for value in range(5):
            await runtime.push("a", value)
        await runtime.wait_idle()
        health = runtime.health()["graphs"]["g"]
        assert (health["state"], health["paused"], health["fire_count"]) == ("paused", True, 0)
        assert health["channel_depths"] == {"a": 5}
        assert sink.results == []
        runtime.resume("rx")
        await runtime.wait_idle()
        assert runtime.health()["graphs"]["g"]["state"] == "running"
        with pytest.raises(KeyError, match=r"unknown graph or reactor 'zz'"):
            runtime.pause("zz")
    assert [out["run"] for out in sink.outputs()] == [0, 1, 2, 3, 4]


async def test_pause_latest_then_resume_fires_with_the_newest_values():
    pipeline(["a", "b"], lambda a, b: (a, b))
    sink = MemorySink()
    async with Runtime(graphs=["g"], sinks=[sink]) as runtime:
        runtime.pause("rx")
        for value in range(5):
            await runtime.push("a", value)
            await runtime.push("b", value * 10)
        runtime.resume("rx")
        await runtime.wait_idle()
    assert sink.outputs() == [{"run": (4, 40)}]


async def test_health_reports_graphs_reactors_and_accumulators():
    pipeline(["a"], lambda a: a)
    async with Runtime(graphs=["g"]) as runtime:
        before = runtime.health()["graphs"]["g"]
        assert (before["state"], before["fire_count"], before["last_fired_at"]) == (
            "running",
            0,
            None,
        )
        await runtime.push("a", 1)
        await runtime.wait_idle()
        health = runtime.health()
    graph = health["graphs"]["g"]
    assert graph["state"] == "running"
    assert graph["fire_count"] == 1
    assert isinstance(graph["last_fired_at"], float)
    assert graph["paused"] is False
    assert graph["channel_depths"] == {"a": 0}
    assert graph["reactor"] == "rx"
    assert graph["executions"] == 1 and graph["failures"] == 0
    assert graph["accumulators"]["a"]["kind"] == "passthrough"
    assert health["reactors"]["rx"]["fire_count"] == 1
    accumulator = health["accumulators"]["a"]
    assert (accumulator["events_in"], accumulator["delivered"]) == (1, 1)
    assert accumulator["channel_capacity"] == 1024
    assert health["sources"] == []


# -- retries, dead letters, on_error ----------------------------------------------------------


async def test_a_failing_execution_is_retried_then_succeeds():
    attempts = []

    def flaky(a):
        attempts.append(a)
        if len(attempts) < 3:
            raise ConnectionError("try again")
        return a

    pipeline(["a"], flaky, retry=RetryPolicy(attempts=3, backoff=0.001))
    sink, letters = MemorySink(), MemoryDeadLetters()
    async with Runtime(graphs=["g"], sinks=[sink], dead_letters=letters) as runtime:
        await runtime.push("a", 1)
        await runtime.wait_idle()
        health = runtime.health()["graphs"]["g"]
    assert attempts == [1, 1, 1]
    assert sink.outputs() == [{"run": 1}]
    assert letters.letters == []
    assert (health["executions"], health["failures"]) == (1, 0)


async def test_an_execution_that_keeps_failing_is_dead_lettered_and_processing_goes_on():
    attempts = []

    def picky(a):
        attempts.append(a)
        if a == "bad":
            raise ValueError("cannot parse")
        return a

    pipeline(["a"], picky, retry_attempts=2, retry_backoff="1ms")
    sink, letters = MemorySink(), MemoryDeadLetters()
    settled = []
    async with Runtime(graphs=["g"], sinks=[sink], dead_letters=letters) as runtime:
        await runtime.accumulator("a").offer("bad", acks=(lambda: settled.append("bad"),))
        await runtime.wait_idle()
        await runtime.accumulator("a").offer("good", acks=(lambda: settled.append("good"),))
        await runtime.wait_idle()
        health = runtime.health()["graphs"]["g"]
    assert attempts == ["bad", "bad", "good"]
    (letter,) = letters.letters
    assert (letter.kind, letter.graph, letter.node, letter.payload) == (
        "execution",
        "g",
        "run",
        {"a": "bad"},
    )
    assert "graph 'g', node 'run'" in letter.reason and "cannot parse" in letter.reason
    assert settled == ["bad", "good"]  # a dead-lettered input counts as handled
    assert sink.outputs() == [{"run": "good"}]
    assert health["state"] == "running"
    assert health["failures"] == 1 and "cannot parse" in health["last_error"]


async def test_a_failing_sink_is_retried_like_a_failing_node():
    calls = []

    class FlakySink(MemorySink):
        async def send(self, graph, outputs):
            calls.append(outputs)
            if len(calls) == 1:
                raise OSError("sink unavailable")
            await super().send(graph, outputs)

    pipeline(["a"], lambda a: a, retry_attempts=2, retry_backoff=0.001)
    sink = FlakySink()
    async with Runtime(graphs=["g"], sinks=[sink]) as runtime:
        await runtime.push("a", 1)
        await runtime.wait_idle()
    assert sink.outputs() == [{"run": 1}]
    assert len(calls) == 2


async def test_on_error_stop_halts_the_reactor_and_keeps_the_input_unacknowledged():
    def bad(a):
        raise RuntimeError("fatal")

    pipeline(["a"], bad, on_error="stop")
    letters = MemoryDeadLetters()
    settled = []
    async with Runtime(graphs=["g"], dead_letters=letters) as runtime:
        await runtime.accumulator("a").offer(1, acks=(lambda: settled.append(1),))
        await wait_until(lambda: runtime.failed() == ["rx"])
        health = runtime.health()
        await runtime.push("a", 2)  # still accepted up to the channel bound, never fired
        await runtime.wait_idle()  # a failed reactor is not busy: it never fires again
        assert runtime.health()["reactors"]["rx"]["channel_depths"] == {"a": 1}
    graph, reactor = health["graphs"]["g"], health["reactors"]["rx"]
    assert graph["state"] == reactor["state"] == "failed"
    assert graph["fire_count"] == 1
    assert "graph 'g', node 'run'" in graph["last_error"] and "fatal" in graph["last_error"]
    assert "halted (on_error=stop)" in reactor["last_error"]
    assert letters.letters == []  # not dead-lettered: stopped instead
    assert settled == []  # not handled: a Kafka offset would not be committed


async def test_a_push_into_the_full_channel_of_a_failed_reactor_fails_instead_of_hanging():
    def bad(a):
        raise RuntimeError("fatal")

    pipeline(["a"], bad, on_error="stop")
    async with Runtime(graphs=["g"], channel_size=1) as runtime:
        await runtime.push("a", 1)
        await wait_until(lambda: runtime.failed() == ["rx"])
        await runtime.push("a", 2)  # fills the channel (bound 1)
        with pytest.raises(ChannelClosedError, match=r"channel 'a' is closed: reactor 'rx' failed"):
            await asyncio.wait_for(runtime.push("a", 3), timeout=5)


async def test_on_error_stop_lets_the_other_graphs_of_the_fire_finish():
    passthroughs("a")
    declare_reactor("rx", ["a"])

    def bad(a):
        raise RuntimeError("fatal")

    one_node_graph("stopper", "rx", ["a"], bad, on_error="stop")
    one_node_graph("other", "rx", ["a"], lambda a: a)
    sink = MemorySink()
    async with Runtime(graphs=["stopper", "other"], sinks=[sink]) as runtime:
        await runtime.push("a", 1)
        await wait_until(lambda: runtime.failed() == ["rx"])
    assert sink.results == [("other", {"run": 1})]


def test_retry_policy_rules():
    with pytest.raises(ValueError, match=r"attempts"):
        RetryPolicy(attempts=0)
    policy = RetryPolicy(attempts=5, backoff=0.1, max_backoff=0.3)
    assert [policy.delay(n) for n in (1, 2, 3, 4)] == [0.1, 0.2, 0.3, 0.3]
    builder = pipeline(["a"], lambda a: a, retry_attempts=4, retry_backoff="250ms")
    assert builder.graph.retry == RetryPolicy(attempts=4, backoff=0.25)


# -- binding by name, unknown reactors, the unload guard ----------------------------------


async def test_unknown_reactor_is_a_clear_error_when_the_runtime_starts():
    passthroughs("a")
    one_node_graph("orphan", "not_declared", ["a"], lambda a: a)
    runtime = Runtime(graphs=["orphan"])
    with pytest.raises(RuntimeConfigError, match=r"unknown reactor 'not_declared'.*\['orphan'\]"):
        await runtime.start()
    with pytest.raises(RuntimeConfigError, match=r"unknown reactor 'ghost'"):
        await Runtime(graphs=[], reactors=["ghost"]).start()


async def test_a_reactor_watching_an_undeclared_accumulator_is_a_clear_error():
    declare_reactor("rx", ["missing"])
    one_node_graph("g", "rx", ["missing"], lambda missing: missing)
    with pytest.raises(RuntimeConfigError, match=r"reactor 'rx' watches unknown accumulator"):
        await Runtime(graphs=["g"]).start()


async def test_entry_inputs_are_checked_against_a_reactor_declared_after_the_graph():
    passthroughs("a", "b")
    one_node_graph("early", "late_rx", ["b"], lambda b: b)  # reactor not known yet
    declare_reactor("late_rx", ["a"])
    with pytest.raises(GraphDefinitionError, match=r"graph 'early', node 'run'.*\['b'\]"):
        await Runtime(graphs=["early"]).start()


async def test_graphs_bind_by_name_and_the_reactor_may_come_later():
    passthroughs("a")
    one_node_graph("first", "shared_rx", ["a"], lambda a: ("first", a))
    one_node_graph("second", "shared_rx", ["a"], lambda a: ("second", a))
    assert bound_graphs("shared_rx") == ["first", "second"]
    declare_reactor("shared_rx", ["a"])
    sink = MemorySink()
    async with Runtime(graphs=["first", "second"], sinks=[sink]) as runtime:
        assert set(runtime.reactors) == {"shared_rx"}
        await runtime.push("a", 1)
        await runtime.wait_idle()
    assert sorted(out["run"] for out in sink.outputs()) == [("first", 1), ("second", 1)]


def test_unload_guard_refuses_while_graphs_are_bound():
    pipeline(["a"], lambda a: a, graph="g1")
    one_node_graph("g2", "rx", ["a"], lambda a: a)
    with pytest.raises(ReactorInUseError, match=r"reactor 'rx'.*\['g1', 'g2'\].*unload those"):
        unload_reactor("rx")
    unload_graph("g1")
    with pytest.raises(ReactorInUseError, match=r"\['g2'\]"):
        unload_reactor("rx")
    unload_graph("g2")
    assert bound_graphs("rx") == []
    unload_reactor("rx")
    assert find_reactor("rx") is None
    with pytest.raises(KeyError, match=r"unknown reactor 'rx'"):
        unload_reactor("rx")
    with pytest.raises(KeyError, match=r"unknown graph 'g1'"):
        unload_graph("g1")


def test_redefining_a_graph_rebinds_it():
    passthroughs("a")
    declare_reactor("rx1", ["a"])
    declare_reactor("rx2", ["a"])
    one_node_graph("g", "rx1", ["a"], lambda a: a)
    one_node_graph("g", "rx2", ["a"], lambda a: a)
    assert bound_graphs("rx1") == [] and bound_graphs("rx2") == ["g"]
    assert get_graph("g").reactor_name == "rx2"
    unload_reactor("rx1")


PUBLISHER = """
from headrace.accumulators import passthrough_accumulator
from headrace.reactors import reactor

@passthrough_accumulator
def feed(event):
    return event

@reactor(name="ModuleReactor", accumulators=["feed"])
class ModuleReactor:
    pass
"""

SUBSCRIBER = """
from headrace.engine import ComputationGraphBuilder, node

with ComputationGraphBuilder(
    "module_graph", reactor="ModuleReactor", graph={"consume": {"inputs": ["feed"]}}
) as builder:
    @node
    def consume(feed):
        return {"got": feed}
"""


@pytest.fixture
def module_dir(tmp_path, monkeypatch):
    (tmp_path / "hr_publisher.py").write_text(PUBLISHER)
    (tmp_path / "hr_subscriber.py").write_text(SUBSCRIBER)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in ("hr_publisher", "hr_subscriber"):
        sys.modules.pop(name, None)


@pytest.mark.parametrize(
    "order", [("hr_publisher", "hr_subscriber"), ("hr_subscriber", "hr_publisher")]
)
async def test_binding_by_name_across_modules_in_either_load_order(module_dir, order):
    import importlib

    for module in order:
        importlib.import_module(module)
    assert "hr_publisher" not in sys.modules["hr_subscriber"].__dict__
    assert bound_graphs("ModuleReactor") == ["module_graph"]
    sink = MemorySink()
    async with Runtime(graphs=["module_graph"], sinks=[sink]) as runtime:
        await runtime.push("feed", 42)
        await runtime.wait_idle()
    assert sink.results == [("module_graph", {"consume": {"got": 42}})]
    with pytest.raises(ReactorInUseError, match=r"module_graph"):
        unload_reactor("ModuleReactor")
    unload_graph("module_graph")
    unload_reactor("ModuleReactor")


async def test_subscriber_module_without_its_publisher_fails_at_start(module_dir):
    import importlib

    importlib.import_module("hr_subscriber")
    with pytest.raises(RuntimeConfigError, match=r"unknown reactor 'ModuleReactor'"):
        await Runtime(graphs=["module_graph"]).start()


# -- lifecycle --------------------------------------------------------------------------------


async def test_stop_finishes_running_graphs_and_drains_channels():
    gate = Gate()
    seen = []

    async def slow(a):
        await gate.wait()
        seen.append(a)
        return a

    pipeline(["a"], slow, strategy="sequential")
    sink = MemorySink()
    runtime = Runtime(graphs=["g"], sinks=[sink])
    await runtime.start()
    for value in range(4):
        await runtime.push("a", value)
    await gate.wait_entered(1)
    stopping = asyncio.create_task(runtime.stop())
    gate.release(4)
    await asyncio.wait_for(stopping, 5)
    assert seen == [0, 1, 2, 3]
    assert [out["run"] for out in sink.outputs()] == [0, 1, 2, 3]
    assert runtime.health()["reactors"]["rx"]["state"] == "stopped"
    await runtime.stop()  # stopping twice is harmless


async def test_stop_without_drain_leaves_queued_values_unacknowledged():
    gate = Gate()
    pipeline(["a"], lambda a: a, strategy="sequential")
    settled = []

    async def slow_sink(graph, outputs):
        await gate.wait()

    runtime = Runtime(graphs=["g"], sinks=[CallbackSink(slow_sink)])
    await runtime.start()
    for value in range(3):
        await runtime.accumulator("a").offer(value, acks=(lambda v=value: settled.append(v),))
    await gate.wait_entered(1)
    stopping = asyncio.create_task(runtime.stop(drain=False))
    gate.release(3)
    await asyncio.wait_for(stopping, 5)
    assert settled == [0]


async def test_observers_see_executions_dead_letters_and_deliveries():
    class Recorder:
        def __init__(self):
            self.executions, self.letters, self.delivered = [], [], []

        def on_execution(self, record):
            self.executions.append(record)

        def on_dead_letter(self, letter):
            self.letters.append(letter)

        def on_delivered(self, accumulator, value):
            self.delivered.append((accumulator, value))

    class Broken:
        def on_execution(self, record):
            raise RuntimeError("observer bug")  # must not break processing

    def fn(a):
        if a < 0:
            raise ValueError("negative")
        return a

    pipeline(["a"], fn)
    recorder = Recorder()
    sink = MemorySink()
    async with Runtime(graphs=["g"], sinks=[sink], observers=[Broken(), recorder]) as runtime:
        await runtime.push("a", 1)
        await runtime.wait_idle()
        await runtime.push("a", -1)
        await runtime.wait_idle()
    assert [r.status for r in recorder.executions] == ["ok", "failed"]
    assert recorder.executions[1].node == "run" and recorder.executions[1].graph == "g"
    assert [letter.payload for letter in recorder.letters] == [{"a": -1}]
    assert recorder.delivered == [("a", 1), ("a", -1)]
    assert sink.outputs() == [{"run": 1}]
