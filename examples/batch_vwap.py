"""Batch VWAP: a batch accumulator flushes every 5 trades; the graph computes the VWAP.

Port of the "batch" pattern of Cloacina's Kafka tutorial. Where Cloacina kept a buffer
inside the graph, Headrace batches in the accumulator: ``trades`` buffers events (from
the ``price.trades`` topic, or pushes) and flushes them as one list at 5 trades, every
10 seconds, and on shutdown (nothing buffered is lost on a clean stop). The reactor is
``sequential`` so every batch gets its own fire, even when two flush back to back.

    compute_vwap(trades) -> emit_vwap

Run it: ``python -m examples.batch_vwap``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import BaseModel

from examples._support import quiet_logs
from examples.market import Trade
from headrace.accumulators import batch_accumulator
from headrace.connectors import MemorySink
from headrace.engine import ComputationGraphBuilder, Runtime, node
from headrace.reactors import reactor

GRAPH = "batch_vwap"
REACTOR = "batch_vwap_rx"
BATCH_SIZE = 5


class Vwap(BaseModel):
    vwap: float
    volume: float
    count: int


@batch_accumulator(flush_interval="10s", max_buffer_size=BATCH_SIZE, topic="price.trades")
def trades(batch: list[Trade]) -> list[Trade] | None:
    """Each buffered event is validated into a ``Trade``; an empty batch delivers nothing."""
    return batch or None


@reactor(name=REACTOR, accumulators=["trades"], mode="when_any", strategy="sequential")
class BatchVwapReactor:
    """One fire per flushed batch, in order."""


with ComputationGraphBuilder(
    GRAPH,
    reactor=BatchVwapReactor,
    graph={
        "compute_vwap": {"inputs": ["trades"], "next": "emit_vwap"},
        "emit_vwap": {},
    },
) as builder:

    @node
    def compute_vwap(trades: list[Trade] | None) -> Vwap | None:
        if not trades:
            return None
        volume = sum(t.volume for t in trades)
        value = sum(t.price * t.volume for t in trades)
        return Vwap(vwap=value / volume, volume=volume, count=len(trades))

    @node
    def emit_vwap(result: Vwap | None) -> dict[str, Any]:
        if result is None:
            return {"vwap": None, "volume": 0.0, "count": 0, "text": "no trades"}
        return {
            **result.model_dump(),
            "text": f"VWAP={result.vwap:.4f} (n={result.count}, volume={result.volume:.2f})",
        }


SAMPLE_TRADES: list[dict[str, float]] = [
    {"price": 100.0, "volume": 10},
    {"price": 101.0, "volume": 20},
    {"price": 99.5, "volume": 5},
    {"price": 100.5, "volume": 15},
    {"price": 100.2, "volume": 50},
    {"price": 102.0, "volume": 100},
    {"price": 101.5, "volume": 25},
    {"price": 101.8, "volume": 40},
    {"price": 102.2, "volume": 10},
    {"price": 101.9, "volume": 25},
    {"price": 103.0, "volume": 30},  # these two are still buffered at shutdown:
    {"price": 103.4, "volume": 10},  # the clean stop flushes them as a third batch
]


async def run(trade_events: list[dict[str, float]] = SAMPLE_TRADES) -> list[dict[str, Any]]:
    """Push every trade, stop cleanly, return the ``emit_vwap`` output of every batch."""
    sink = MemorySink()
    async with Runtime(graphs=[GRAPH], sinks=[sink]) as runtime:
        for trade in trade_events:
            await runtime.push("trades", trade)  # the 5th push of a batch flushes it
        await sink.wait_for(len(trade_events) // BATCH_SIZE)
        # leaving the block stops the runtime: the partial batch is flushed and fired
    return [outputs["emit_vwap"] for outputs in sink.outputs(GRAPH)]


def main() -> None:
    quiet_logs()
    print(f"batch_vwap: batch of {BATCH_SIZE} trades -> compute_vwap -> emit_vwap   [sequential]")
    print(f"  pushing {len(SAMPLE_TRADES)} trades")
    for number, result in enumerate(asyncio.run(run()), start=1):
        print(f"  batch {number}: {result['text']}")


if __name__ == "__main__":
    main()
