"""Two-source alert: ``when_all`` over the order book and a reference price.

Port of the "stateful (multi-source)" pattern of Cloacina's Kafka tutorial. The reactor
watches the ``orderbook`` stream (``examples.market``) and a ``reference`` passthrough
accumulator (pushed over HTTP/WebSocket or ``Runtime.push``) and fires only when *both*
delivered a new value since the last fire. ``evaluate`` routes to ``alert`` when the
mid price deviates from the reference by more than 0.5%, else to ``record``.

    evaluate(orderbook, reference) -(Alert)-> alert
                                   -(Ok)----> record

Run it: ``python -m examples.multi_source_alert``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from examples._support import quiet_logs
from examples.market import OrderBook, ReferencePrice
from headrace.accumulators import passthrough_accumulator
from headrace.connectors import MemorySink
from headrace.engine import ComputationGraphBuilder, Runtime, node
from headrace.reactors import reactor

GRAPH = "multi_source_alert"
REACTOR = "multi_source_alert_rx"
THRESHOLD = 0.005  # 0.5%


@passthrough_accumulator
def reference(event: ReferencePrice) -> ReferencePrice:
    return event


@reactor(name=REACTOR, accumulators=["orderbook", "reference"], mode="when_all", strategy="latest")
class MultiSourceAlertReactor:
    """Fires only when the order book *and* the reference delivered since the last fire."""


with ComputationGraphBuilder(
    GRAPH,
    reactor=MultiSourceAlertReactor,
    graph={
        "evaluate": {
            "inputs": ["orderbook", "reference"],
            "routes": {"Alert": "alert", "Ok": "record"},
        },
        "alert": {},
        "record": {},
    },
) as builder:

    @node
    def evaluate(
        orderbook: OrderBook | None, reference: ReferencePrice | None
    ) -> tuple[str, dict[str, float]]:
        if orderbook is None or reference is None:  # only via execute(); the reactor waits
            return ("Ok", {"mid": 0.0, "reference": 0.0, "deviation": 0.0})
        deviation = abs(orderbook.mid - reference.price) / reference.price
        reading = {"mid": orderbook.mid, "reference": reference.price, "deviation": deviation}
        return ("Alert", reading) if deviation > THRESHOLD else ("Ok", reading)

    @node
    def alert(reading: dict[str, float]) -> dict[str, Any]:
        return {
            "level": "ALERT",
            **reading,
            "text": (
                f"ALERT: mid={reading['mid']:.4f} deviates {reading['deviation'] * 100:.2f}% "
                f"from reference={reading['reference']:.4f}"
            ),
        }

    @node
    def record(reading: dict[str, float]) -> dict[str, Any]:
        return {
            "level": "OK",
            **reading,
            "text": f"OK: mid={reading['mid']:.4f} ({reading['deviation'] * 100:.2f}% off)",
        }


SCENARIO: list[tuple[str, dict[str, float]]] = [
    ("orderbook", {"best_bid": 100.10, "best_ask": 100.15}),  # reference missing: no fire
    ("reference", {"price": 100.0}),  # both fresh: fire -> OK (0.125%)
    ("orderbook", {"best_bid": 101.00, "best_ask": 101.20}),  # reference stale: no fire
    ("reference", {"price": 100.0}),  # both fresh: fire -> ALERT (1.10%)
    ("reference", {"price": 101.0}),  # order book stale: no fire
    ("orderbook", {"best_bid": 101.00, "best_ask": 101.20}),  # both fresh: fire -> OK (0.10%)
]


async def run(
    scenario: list[tuple[str, dict[str, float]]] = SCENARIO,
) -> list[tuple[str, dict[str, float], int, dict[str, Any] | None]]:
    """Push each step; return ``(accumulator, event, fire_count, result_or_None)`` per step."""
    sink = MemorySink()
    steps = []
    async with Runtime(graphs=[GRAPH], sinks=[sink]) as runtime:
        for accumulator, event in scenario:
            before = len(sink.results)
            await runtime.push(accumulator, event)
            await runtime.wait_idle()
            fires = runtime.health()["graphs"][GRAPH]["fire_count"]
            new = sink.outputs(GRAPH)[before:]
            result = next(iter(new[0].values())) if new else None
            steps.append((accumulator, event, fires, result))
    return steps


def main() -> None:
    quiet_logs()
    print("multi_source_alert: evaluate(orderbook, reference) -> alert | record   [when_all]")
    for accumulator, event, fires, result in asyncio.run(run()):
        outcome = result["text"] if result else "(no fire: waiting for the other input)"
        print(f"  push {accumulator:<9} {event} -> fires={fires} {outcome}")


if __name__ == "__main__":
    main()
