"""Subscriber: a graph bound by name to a reactor declared in another module.

Port of the ``pricing-subscriber`` package of Cloacina's cross-package binding tutorial.
This module never imports ``examples.cross_module.publisher``: ``reactor="PriceReactor"``
is resolved by name when a runtime starts, so the two modules can be loaded in any order
(a runtime started without the publisher fails with a clear "unknown reactor" error).

``main()`` also shows the bound-subscriber guard: unloading ``PriceReactor`` is refused
while ``price_consumer`` is bound to it; unload the graph first, then the reactor.

    score(raw_prices, normalized_prices) -> publish

Run it: ``python -m examples.cross_module.subscriber``.
"""

from __future__ import annotations

import asyncio
import importlib
from typing import Any

from examples._support import quiet_logs
from headrace.connectors import MemorySink
from headrace.engine import (
    ComputationGraph,
    ComputationGraphBuilder,
    Runtime,
    RuntimeConfigError,
    node,
    unload_graph,
)
from headrace.engine.graph.registry import register_graph
from headrace.reactors import ReactorInUseError, bound_graphs, register_reactor, unload_reactor

GRAPH = "price_consumer"
REACTOR = "PriceReactor"  # declared in examples.cross_module.publisher
PUBLISHER = "examples.cross_module.publisher"


with ComputationGraphBuilder(
    GRAPH,
    reactor=REACTOR,
    graph={
        "score": {"inputs": ["raw_prices", "normalized_prices"], "next": "publish"},
        "publish": {},
    },
) as builder:

    @node
    def score(
        raw_prices: dict[str, Any] | None, normalized_prices: dict[str, Any] | None
    ) -> float | None:
        """The ratio of the normalized to the raw price, once both feeds delivered."""
        if raw_prices is None or normalized_prices is None:
            return None
        return round(normalized_prices["price"] / raw_prices["price"], 6)

    @node
    def publish(ratio: float | None) -> dict[str, Any]:
        return {"signal": ratio}


def _graph() -> ComputationGraph:
    assert builder.graph is not None
    return builder.graph


PUSHES: list[tuple[str, dict[str, Any]]] = [
    ("raw_prices", {"symbol": "BTCUSD", "price": 42000.0}),
    ("normalized_prices", {"symbol": "BTCUSD", "price": 42210.0}),
    ("raw_prices", {"symbol": "BTCUSD", "price": 42420.0}),
]


async def run() -> dict[str, Any]:
    """Load the publisher, run the bound graph, then walk through the unload guard."""
    publisher = importlib.import_module(PUBLISHER)  # "load the publisher package"
    report: dict[str, Any] = {"bound": bound_graphs(REACTOR), "signals": []}

    sink = MemorySink()
    async with Runtime(graphs=[GRAPH], sinks=[sink]) as runtime:
        for accumulator, event in PUSHES:
            await runtime.push(accumulator, event)
            await runtime.wait_idle()
    report["signals"] = [outputs["publish"]["signal"] for outputs in sink.outputs(GRAPH)]

    try:  # the bound-subscriber guard
        unload_reactor(REACTOR)
    except ReactorInUseError as refused:
        report["refused"] = str(refused)
    unload_graph(GRAPH)  # subscribers first ...
    unload_reactor(REACTOR)  # ... then the publisher
    report["unloaded"] = True

    # A graph whose reactor is not loaded cannot start.
    register_graph(_graph())
    try:
        async with Runtime(graphs=[GRAPH]):
            pass
    except RuntimeConfigError as error:
        report["without_publisher"] = str(error)

    # Load again in the right order (reactor, then graph) so the modules stay usable.
    unload_graph(GRAPH)
    register_reactor(publisher.PriceReactor.__headrace_reactor__)
    register_graph(_graph())
    report["bound_again"] = bound_graphs(REACTOR)
    return report


def main() -> None:
    quiet_logs()
    print(f"cross_module: graph {GRAPH!r} binds to reactor {REACTOR!r} by name")
    report = asyncio.run(run())
    print(f"  bound to {REACTOR}: {report['bound']}")
    for (accumulator, event), signal in zip(PUSHES, report["signals"], strict=True):
        print(f"  push {accumulator:<17} price={event['price']:<8} -> signal={signal}")
    print(f"  unload_reactor({REACTOR!r}) while bound: refused: {report['refused']}")
    print(f"  unload_graph({GRAPH!r}) then unload_reactor({REACTOR!r}): ok")
    print(f"  starting the graph without its reactor: {report['without_publisher']}")
    print(f"  reloaded publisher then subscriber; bound again: {report['bound_again']}")


if __name__ == "__main__":
    main()
