"""Keyed price signal: a per-symbol price signal and a per-symbol deviation alert.

One order book topic carries every instrument; the reactors are keyed by ``symbol``, so
each symbol has its own input cache and its own firing rules:

- ``keyed_price_signal_rx`` (``when_any``, ``latest``, ``max_concurrency = 4``): every
  symbol's newest book is fired, even while another symbol's fire runs; a burst of books
  of one symbol coalesces to its newest.

      signal(symbol_books, key) -> emit_signal

- ``deviation_alert_rx`` (``when_all``): a symbol's book joins *that symbol's* reference
  price, never another symbol's; the fire routes to ``alert`` when the mid price is more
  than ``THRESHOLD_BPS`` away from the reference.

      deviation(symbol_books, symbol_refs, key) -(Alert)-> alert | -(Ok)-> ok

Run it: ``python -m examples.keyed_price_signal``; as a worker:
``headrace run examples/keyed_price_signal.toml`` (Kafka sinks then use the symbol as the
message key).
"""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import BaseModel, Field

from examples._support import quiet_logs
from headrace.accumulators import stream_accumulator
from headrace.connectors import MemorySink
from headrace.engine import ComputationGraphBuilder, Runtime, node
from headrace.reactors import reactor

SIGNAL_GRAPH = "keyed_price_signal"
ALERT_GRAPH = "deviation_alert"
THRESHOLD_BPS = 50.0


class SymbolBook(BaseModel):
    symbol: str = Field(min_length=1)
    best_bid: float = Field(gt=0)
    best_ask: float = Field(gt=0)

    @property
    def mid(self) -> float:
        return (self.best_bid + self.best_ask) / 2


class SymbolReference(BaseModel):
    symbol: str = Field(min_length=1)
    price: float = Field(gt=0)


@stream_accumulator(topic="price.orderbooks", group="headrace-keyed-examples", key="symbol")
def symbol_books(event: SymbolBook) -> SymbolBook:
    """Order books of every symbol; the key of each is its ``symbol`` field."""
    return event


@stream_accumulator(topic="price.references", group="headrace-keyed-examples", key="symbol")
def symbol_refs(event: SymbolReference) -> SymbolReference:
    """Reference prices of every symbol, keyed like the books."""
    return event


@reactor(
    name="keyed_price_signal_rx",
    accumulators=["symbol_books"],
    mode="when_any",
    strategy="latest",
    keyed=True,
    max_concurrency=4,
    max_keys=10_000,
    key_ttl="1h",
)
class KeyedPriceSignalReactor:
    """Per symbol: fires on that symbol's newest book."""


@reactor(
    name="deviation_alert_rx",
    accumulators=["symbol_books", "symbol_refs"],
    mode="when_all",
    keyed=True,
    max_concurrency=4,
)
class DeviationAlertReactor:
    """Per symbol: fires once that symbol has a new book and a new reference price."""


with ComputationGraphBuilder(
    SIGNAL_GRAPH,
    reactor=KeyedPriceSignalReactor,
    graph={"signal": {"inputs": ["symbol_books"], "next": "emit_signal"}, "emit_signal": {}},
) as signal_builder:

    @node
    def signal(symbol_books: SymbolBook, key: str) -> dict[str, Any]:
        """Entry node: ``key`` is the symbol this fire is for."""
        spread = symbol_books.best_ask - symbol_books.best_bid
        return {
            "symbol": key,
            "mid": symbol_books.mid,
            "spread_bps": spread / symbol_books.mid * 1e4,
        }

    @node
    def emit_signal(result: dict[str, Any]) -> dict[str, Any]:
        return {**result, "text": f"{result['symbol']} mid={result['mid']:.2f}"}


with ComputationGraphBuilder(
    ALERT_GRAPH,
    reactor=DeviationAlertReactor,
    graph={
        "deviation": {
            "inputs": ["symbol_books", "symbol_refs"],
            "routes": {"Alert": "alert", "Ok": "ok"},
        },
        "alert": {},
        "ok": {},
    },
) as alert_builder:

    @node
    def deviation(
        symbol_books: SymbolBook, symbol_refs: SymbolReference, key: str
    ) -> tuple[str, dict[str, Any]]:
        bps = (symbol_books.mid - symbol_refs.price) / symbol_refs.price * 1e4
        verdict = "Alert" if abs(bps) > THRESHOLD_BPS else "Ok"
        return verdict, {"symbol": key, "deviation_bps": round(bps, 2)}

    @node
    def alert(found: dict[str, Any]) -> dict[str, Any]:
        return {**found, "level": "ALERT"}

    @node
    def ok(found: dict[str, Any]) -> dict[str, Any]:
        return {**found, "level": "ok"}


SAMPLE_BOOKS: list[dict[str, Any]] = [
    {"symbol": "BTC", "best_bid": 100.0, "best_ask": 100.2},
    {"symbol": "ETH", "best_bid": 50.0, "best_ask": 50.1},
    {"symbol": "BTC", "best_bid": 101.0, "best_ask": 101.2},  # BTC's newest book
    {"symbol": "SOL", "best_bid": 20.0, "best_ask": 20.02},
    {"symbol": "ETH", "best_bid": 52.0, "best_ask": 52.1},  # ETH's newest book
]
SAMPLE_REFERENCES: list[dict[str, Any]] = [
    {"symbol": "BTC", "price": 101.1},  # BTC in line
    {"symbol": "ETH", "price": 50.0},  # ETH 4% above its reference: alert
]


async def run() -> dict[str, list[dict[str, Any]]]:
    """Push a burst of books of three symbols, then two reference prices; return the
    outputs of each graph (``keyed_price_signal``: the signals, ``deviation_alert``: the
    alerts and oks)."""
    sink = MemorySink()
    async with Runtime(graphs=[SIGNAL_GRAPH, ALERT_GRAPH], sinks=[sink]) as runtime:
        for book in SAMPLE_BOOKS:
            await runtime.push("symbol_books", book)
        await runtime.wait_idle()
        for reference in SAMPLE_REFERENCES:
            await runtime.push("symbol_refs", reference)
        await runtime.wait_idle()
    return {
        SIGNAL_GRAPH: [outputs["emit_signal"] for outputs in sink.outputs(SIGNAL_GRAPH)],
        ALERT_GRAPH: [
            outputs.get("alert") or outputs["ok"] for outputs in sink.outputs(ALERT_GRAPH)
        ],
    }


def last_per_symbol(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {result["symbol"]: result for result in results}


def main() -> None:
    quiet_logs()
    print("keyed_price_signal: per-symbol signal [keyed, when_any, latest, max_concurrency 4]")
    print("                    per-symbol deviation alert [keyed, when_all]")
    results = asyncio.run(run())
    for symbol, result in sorted(last_per_symbol(results[SIGNAL_GRAPH]).items()):
        print(f"  last signal {symbol}: {result['text']}")
    for result in sorted(results[ALERT_GRAPH], key=lambda r: r["symbol"]):
        print(f"  {result['level']}: {result['symbol']} {result['deviation_bps']} bps")


if __name__ == "__main__":
    main()
