"""Price signal: mid price and spread from order book snapshots (``when_any``).

Port of Cloacina's "Packaging a Computation Graph" tutorial. The ``orderbook`` stream
accumulator (``examples.market``) feeds the ``price_signal_rx`` reactor, which fires on
every new order book; ``compute_signal`` turns the book into a ``PriceSignal`` and the
terminal node ``emit`` renders it.

    compute_signal(orderbook) -> emit

Run it: ``python -m examples.price_signal``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import BaseModel

from examples._support import quiet_logs
from examples.market import OrderBook
from headrace.connectors import MemorySink
from headrace.engine import ComputationGraphBuilder, Runtime, node
from headrace.reactors import reactor

GRAPH = "price_signal"
REACTOR = "price_signal_rx"


class PriceSignal(BaseModel):
    mid_price: float
    spread: float
    spread_bps: float


@reactor(name=REACTOR, accumulators=["orderbook"], mode="when_any", strategy="latest")
class PriceSignalReactor:
    """Fires whenever the order book feed delivers a new snapshot."""


with ComputationGraphBuilder(
    GRAPH,
    reactor=PriceSignalReactor,
    graph={
        "compute_signal": {"inputs": ["orderbook"], "next": "emit"},
        "emit": {},
    },
) as builder:

    @node
    def compute_signal(orderbook: OrderBook | None) -> PriceSignal:
        """Entry node: ``orderbook`` is ``None`` until the feed delivered once."""
        if orderbook is None:
            return PriceSignal(mid_price=0.0, spread=0.0, spread_bps=0.0)
        return PriceSignal(
            mid_price=orderbook.mid,
            spread=orderbook.spread,
            spread_bps=orderbook.spread / orderbook.mid * 10_000,
        )

    @node
    def emit(signal: PriceSignal) -> dict[str, Any]:
        """Terminal node: a JSON-friendly result (what a Kafka sink would publish)."""
        return {
            **signal.model_dump(),
            "text": (
                f"mid={signal.mid_price:.4f} spread={signal.spread:.4f} "
                f"({signal.spread_bps:.2f} bps)"
            ),
        }


SAMPLE_BOOKS: list[dict[str, float]] = [
    {"best_bid": 100.10, "best_ask": 100.15},
    {"best_bid": 100.12, "best_ask": 100.20},
    {"best_bid": 99.95, "best_ask": 100.05},
]


async def run(books: list[dict[str, float]] = SAMPLE_BOOKS) -> list[dict[str, Any]]:
    """Push each book (as decoded JSON) and return the ``emit`` output of every fire."""
    sink = MemorySink()
    async with Runtime(graphs=[GRAPH], sinks=[sink]) as runtime:
        for book in books:
            await runtime.push("orderbook", book)
            await runtime.wait_idle()  # one fire per book (``latest`` would coalesce a burst)
    return [outputs["emit"] for outputs in sink.outputs(GRAPH)]


def main() -> None:
    quiet_logs()
    print("price_signal: compute_signal(orderbook) -> emit   [when_any, latest]")
    print(f"  execute() without a book yet: {builder.execute({})['emit']['text']}")
    for book, result in zip(SAMPLE_BOOKS, asyncio.run(run()), strict=True):
        print(f"  book bid={book['best_bid']:.2f} ask={book['best_ask']:.2f} -> {result['text']}")


if __name__ == "__main__":
    main()
