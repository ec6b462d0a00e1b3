"""The price signal's nodes: the mid price and spread of an order book snapshot."""

from __future__ import annotations

from typing import Any


def mid_price(orderbook: dict[str, Any]) -> dict[str, Any]:
    bid, ask = float(orderbook["best_bid"]), float(orderbook["best_ask"])
    return {
        "symbol": orderbook.get("symbol"),
        "seq": orderbook.get("seq"),
        "mid": (bid + ask) / 2,
        "spread": ask - bid,
    }


def signal(mid: dict[str, Any]) -> dict[str, Any]:
    return mid
