"""The reconciler on a real in-process Runtime: pipeline order, pending graphs, namespaces,
the unload guard, failures that stay local, and upgrades that lose nothing."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from headrace.connectors.sinks import CallbackSink, Sink
from headrace.engine.config.schema import SinkConfig
from headrace.engine.packages.reconciler import PackageInUse, Reconciler
from headrace.engine.packages.service import PackageService
from headrace.engine.runtime import Runtime
from headrace.registry import default_registry
from tests.unit.engine.packages.helpers import EXAMPLES, write_package

PUBLISHER = EXAMPLES / "pricing-publisher"
SUBSCRIBER = EXAMPLES / "pricing-subscriber"


class Outputs:
    """Every sink of every package appends (graph, outputs) here."""

    def __init__(self) -> None:
        self.items: list[tuple[str, dict[str, Any]]] = []

    def sink(self, name: str, cfg: SinkConfig) -> Sink:
        return CallbackSink(lambda graph, outputs: self.items.append((graph, outputs)))

    def of(self, graph: str) -> list[dict[str, Any]]:
        return [o for g, o in self.items if g == graph]


@pytest.fixture
async def stack() -> AsyncIterator[tuple[Runtime, PackageService, Outputs]]:
    runtime = Runtime(graphs=[])
    await runtime.start()
    outputs = Outputs()
    service = PackageService(Reconciler(runtime, build_sink=outputs.sink))
    try:
        yield runtime, service, outputs
    finally:
        await runtime.stop()
        for name in [n for n in sys.modules if n.startswith("headrace_packages.")]:
            del sys.modules[name]


async def add(service: PackageService, directory: Path) -> dict[str, Any]:
    service.add_directory(directory)
    await service.reconciler.settle()
    return service.get(service.reconciler.packages[_name(directory)].name)


def _name(directory: Path) -> str:
    import tomllib

    return tomllib.loads((directory / "package.toml").read_text())["package"]["name"]


async def test_subscriber_first_waits_for_the_reactor_then_both_load_and_fire(stack: Any) -> None:
    runtime, service, outputs = stack
    sub = await add(service, SUBSCRIBER)
    assert sub["status"] == "pending"
    assert sub["reasons"] == ["graph 'price_consumer': reactor 'PriceReactor' not loaded"]
    assert "price_consumer" not in runtime.graphs
    pub = await add(service, PUBLISHER)
    assert pub["status"] == "loaded"
    assert service.get("pricing-subscriber")["status"] == "loaded"  # retried when it arrived
    assert sorted(runtime.accumulators) == ["normalized_prices", "raw_prices"]
    assert runtime.bound["PriceReactor"].names == ["price_consumer"]
    await runtime.push("raw_prices", {"price": 100.0})
    await runtime.push("normalized_prices", {"price": 101.234})
    await runtime.wait_idle()
    assert outputs.of("price_consumer")[-1] == {"publish": {"signal": 1.0123}}
    assert service.get("pricing-publisher")["declares"] == {
        "accumulators": ["normalized_prices", "raw_prices"],
        "reactors": ["PriceReactor"],
        "graphs": [],
        "sinks": [],
    }


async def test_guard_refuses_the_publisher_then_subscriber_first_unloads_all(stack: Any) -> None:
    runtime, service, _ = stack
    await add(service, PUBLISHER)
    await add(service, SUBSCRIBER)
    with pytest.raises(PackageInUse) as refused:
        await service.delete("pricing-publisher")
    assert refused.value.bound_graphs == ["price_consumer"]
    assert "price_consumer (package pricing-subscriber)" in str(refused.value)
    assert "PriceReactor" in runtime.reactors  # nothing was torn down
    assert (await service.delete("pricing-subscriber"))["status"] == "unloaded"
    assert runtime.bound["PriceReactor"].names == []
    assert (await service.delete("pricing-publisher"))["status"] == "unloaded"
    assert (runtime.accumulators, runtime.reactors, runtime.graphs) == ({}, {}, {})
    assert default_registry.find_reactor("PriceReactor") is None
    assert default_registry.find_accumulator("raw_prices") is None
    assert not [n for n in sys.modules if n.startswith("headrace_packages.")]
    assert runtime.ready()  # unloading released the supervised tasks: no failure


COUNTER = """
CALLS = []


def feed(event):
    CALLS.append(event)
    return {"n": len(CALLS), "tag": TAG, "v": event["v"]}


def deliver(graph, outputs):
    return None
"""


def counter_package(
    root: Path, name: str, version: str, tag: str, acc: str, rx: str, strategy: str = "latest"
) -> Path:
    """A package whose ``nodes.py`` counts its calls in module state (``CALLS``)."""
    return write_package(
        root,
        name,
        version,
        f"""
        modules = ["nodes"]
        ##
        [accumulators.{acc}]
        kind = "passthrough"
        function = "nodes:feed"

        [reactors.{rx}]
        accumulators = ["{acc}"]
        strategy = "{strategy}"

        [graphs.g_{acc}]
        reactor = "{rx}"
        module = "nodes"
        sinks = ["s"]

        [graphs.g_{acc}.topology]
        out = {{ inputs = ["{acc}"] }}

        [sinks.s]
        type = "callback"
        function = "nodes:deliver"
        """,
        **{"nodes.py": f"TAG = {tag!r}\n" + COUNTER + f"\n\ndef out({acc}):\n    return {acc}\n"},
    )


async def test_two_packages_each_with_nodes_py_use_their_own(stack: Any, tmp_path: Path) -> None:
    runtime, service, outputs = stack
    a = counter_package(tmp_path, "alpha", "1.0", "A", "feed_a", "rx_a")
    b = counter_package(tmp_path, "beta", "1.0", "B", "feed_b", "rx_b")
    assert (await add(service, a))["status"] == "loaded", service.get("alpha")
    assert (await add(service, b))["status"] == "loaded", service.get("beta")
    await runtime.push("feed_a", {"v": 1})
    await runtime.push("feed_b", {"v": 2})
    await runtime.wait_idle()
    assert outputs.of("g_feed_a") == [{"out": {"n": 1, "tag": "A", "v": 1}}]
    assert outputs.of("g_feed_b") == [{"out": {"n": 1, "tag": "B", "v": 2}}]


async def test_package_modules_import_their_siblings_relatively(stack: Any, tmp_path: Path) -> None:
    runtime, service, outputs = stack
    directory = counter_package(tmp_path, "gamma", "1.0", "G", "feed_g", "rx_g")
    nodes = directory / "nodes.py"
    nodes.write_text("from .helper import TAG\n" + nodes.read_text().split("\n", 1)[1])
    (directory / "helper.py").write_text("TAG = 'from helper'\n")
    assert (await add(service, directory))["status"] == "loaded", service.get("gamma")
    await runtime.push("feed_g", {"v": 7})
    await runtime.wait_idle()
    assert outputs.of("g_feed_g") == [{"out": {"n": 1, "tag": "from helper", "v": 7}}]


async def test_upgrade_sees_fresh_module_state_and_keeps_the_reactor(
    stack: Any, tmp_path: Path
) -> None:
    runtime, service, outputs = stack
    await add(service, counter_package(tmp_path, "alpha", "1.0", "v1", "feed_a", "rx_a"))
    for v in range(3):
        await runtime.push("feed_a", {"v": v})
    await runtime.wait_idle()
    loop = runtime.reactors["rx_a"]
    state = await add(
        service, counter_package(tmp_path / "2", "alpha", "2.0", "v2", "feed_a", "rx_a")
    )
    assert state["status"] == "loaded" and state["loaded_version"] == "2.0"
    assert runtime.reactors["rx_a"] is loop  # same reactor: its cache carries over
    await runtime.push("feed_a", {"v": 3})
    await runtime.wait_idle()
    assert outputs.of("g_feed_a")[-1] == {"out": {"n": 1, "tag": "v2", "v": 3}}  # new CALLS


async def test_upgrade_under_load_loses_nothing(stack: Any, tmp_path: Path) -> None:
    """Pushes run without pause while v2 replaces v1: every value reaches v1 or v2."""
    runtime, service, outputs = stack
    await add(
        service, counter_package(tmp_path, "alpha", "1.0", "v1", "feed_a", "rx_a", "sequential")
    )
    upgraded = asyncio.Event()
    pushed = 0

    async def pump() -> None:
        """At least 2,000 values, and 500 more after v2 loaded (the import runs in a
        thread, so the pushes do not wait for it). Every 50 pushes the pump sleeps
        briefly: a bare ``sleep(0)`` never releases the GIL, so on a loaded machine the
        import thread could starve for a million pushes."""
        nonlocal pushed
        until: int | None = None
        deadline = time.monotonic() + 60
        while pushed < 2_000 or until is None or pushed < until:
            await runtime.push("feed_a", {"v": pushed})
            pushed += 1
            if pushed % 50 == 0:
                await asyncio.sleep(0.0002)
            if until is None and upgraded.is_set():
                until = pushed + 500
            assert time.monotonic() < deadline, f"the upgrade never finished ({pushed} pushed)"

    pumping = asyncio.create_task(pump())
    while not outputs.of("g_feed_a"):
        await asyncio.sleep(0.001)
    service.add_directory(
        counter_package(tmp_path / "2", "alpha", "2.0", "v2", "feed_a", "rx_a", "sequential")
    )
    await service.reconciler.settle()
    upgraded.set()
    await pumping
    await runtime.wait_idle()
    total = pushed
    seen = [o["out"]["v"] for o in outputs.of("g_feed_a")]
    tags = {o["out"]["tag"] for o in outputs.of("g_feed_a")}
    assert tags == {"v1", "v2"}  # the switch happened while values flowed
    duplicates = len(seen) - len(set(seen))
    lost = sorted(set(range(total)) - set(seen))
    print(
        f"upgrade under load: {total} pushed, {len(seen)} outputs, "
        f"lost {len(lost)}, duplicates {duplicates}"
    )
    assert lost == []  # sequential: one fire per value, so every value has one output
    assert seen == sorted(seen)  # and in order across the switch


async def test_a_failing_package_never_stops_the_others(stack: Any, tmp_path: Path) -> None:
    runtime, service, outputs = stack
    await add(service, PUBLISHER)
    broken = write_package(
        tmp_path,
        "broken",
        "1.0",
        """
        modules = ["nodes"]
        ##
        """,
        **{"nodes.py": "raise RuntimeError('boom at import')\n"},
    )
    state = await add(service, broken)
    assert state["status"] == "failed"
    assert "broken-src-1.0/package.toml: modules[0]: cannot import module" in state["error"]
    assert "RuntimeError: boom at import" in state["error"]
    stealer = write_package(
        tmp_path,
        "stealer",
        "1.0",
        """
        ##
        [reactors.PriceReactor]
        accumulators = ["raw_prices"]
        """,
    )
    state = await add(service, stealer)
    assert state["status"] == "failed"
    assert "reactor 'PriceReactor' already belongs to package 'pricing-publisher'" in state["error"]
    assert runtime.reactors["PriceReactor"].spec.accumulators == ("raw_prices", "normalized_prices")
    await add(service, SUBSCRIBER)
    await runtime.push("raw_prices", {"price": 2.0})
    await runtime.push("normalized_prices", {"price": 3.0})
    await runtime.wait_idle()
    assert outputs.of("price_consumer")[-1] == {"publish": {"signal": 1.5}}
    assert runtime.ready()


async def test_upgrade_dropping_a_bound_reactor_is_refused(stack: Any, tmp_path: Path) -> None:
    runtime, service, _ = stack
    await add(service, PUBLISHER)
    await add(service, SUBSCRIBER)
    v2 = write_package(
        tmp_path,
        "pricing-publisher",
        "0.2.0",
        """
        ##
        [accumulators.raw_prices]
        kind = "passthrough"
        [accumulators.normalized_prices]
        kind = "passthrough"
        """,
    )
    state = await add(service, v2)
    assert state["status"] == "failed"
    assert "price_consumer (package pricing-subscriber)" in state["error"]
    assert state["loaded_version"] == "0.1.0"
    assert runtime.bound["PriceReactor"].names == ["price_consumer"]
    assert default_registry.find_reactor("PriceReactor") is not None  # registry restored
