"""Market maker: a routing decision (``Signal`` / ``NoAction``) over two inputs.

Port of the example in the docs of Cloacina's Python binding (cloaca). ``decision``
returns ``("Signal", payload)`` or ``("NoAction", payload)`` and the payload goes to
that variant's node. The reactor is ``when_any``, so the graph also runs before both
inputs have a value: ``decision`` checks for ``None`` (the idiom for "fire on any update
once all have a value").

    decision(alpha, beta) -(Signal)---> signal_handler
                          -(NoAction)-> audit_logger

Run it: ``python -m examples.market_maker``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from examples._support import quiet_logs
from headrace.accumulators import passthrough_accumulator
from headrace.connectors import MemorySink
from headrace.engine import ComputationGraphBuilder, Runtime, node
from headrace.reactors import reactor

GRAPH = "market_maker"
REACTOR = "market_maker_reactor"
THRESHOLD = 10


@passthrough_accumulator
def alpha(event: dict[str, Any]) -> dict[str, Any]:
    return event


@passthrough_accumulator
def beta(event: dict[str, Any]) -> dict[str, Any]:
    return event


@reactor(name=REACTOR, accumulators=["alpha", "beta"], mode="when_any")
class MarketMakerReactor:
    """Fires on any update of ``alpha`` or ``beta``."""


with ComputationGraphBuilder(
    GRAPH,
    reactor=MarketMakerReactor,
    graph={
        "decision": {
            "inputs": ["alpha", "beta"],
            "routes": {"Signal": "signal_handler", "NoAction": "audit_logger"},
        },
        "signal_handler": {},
        "audit_logger": {},
    },
) as builder:

    @node
    def decision(alpha: dict[str, Any] | None, beta: dict[str, Any] | None) -> tuple[str, Any]:
        if alpha is None or beta is None:
            return ("NoAction", {"reason": "waiting for both inputs"})
        total = alpha["value"] + beta["estimate"]
        if total > THRESHOLD:
            return ("Signal", {"output": total})
        return ("NoAction", {"reason": f"below threshold ({total} <= {THRESHOLD})"})

    @node
    def signal_handler(signal: dict[str, Any]) -> dict[str, Any]:
        return {"published": True, "output": signal["output"]}

    @node
    def audit_logger(no_action: dict[str, Any]) -> dict[str, Any]:
        return {"logged": True, "reason": no_action["reason"]}


SCENARIO: list[tuple[str, dict[str, float]]] = [
    ("alpha", {"value": 4}),
    ("beta", {"estimate": 3}),
    ("alpha", {"value": 8}),
    ("beta", {"estimate": 1}),
]


async def run(
    scenario: list[tuple[str, dict[str, float]]] = SCENARIO,
) -> list[dict[str, Any]]:
    """Push each step and wait for its fire; return each fire's terminal outputs."""
    sink = MemorySink()
    async with Runtime(graphs=[GRAPH], sinks=[sink]) as runtime:
        for accumulator, event in scenario:
            await runtime.push(accumulator, event)
            await runtime.wait_idle()
    return sink.outputs(GRAPH)


def main() -> None:
    quiet_logs()
    print("market_maker: decision(alpha, beta) -> signal_handler | audit_logger   [when_any]")
    direct = builder.execute({"alpha": {"value": 9}, "beta": {"estimate": 4}})
    print(f"  builder.execute(alpha=9, beta=4) -> {direct}")
    for (accumulator, event), outputs in zip(SCENARIO, asyncio.run(run()), strict=True):
        print(f"  push {accumulator:<5} {event} -> {outputs}")


if __name__ == "__main__":
    main()
