"""Prices from Kafka -> an alert for every price at or above its symbol's limit.

check(prices) -> alert
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from headrace import ComputationGraphBuilder, node, reactor, stream_accumulator

LIMITS = {"ACME": 100.0, "INIT": 50.0}


class Price(BaseModel):
    symbol: str
    price: float = Field(gt=0)


@stream_accumulator(topic="prices")
def prices(price: Price) -> Price:
    return price


@reactor(name="price_alerts_rx", accumulators=["prices"], strategy="sequential")
class PriceAlertsReactor:
    """Fires once per price, in order."""


with ComputationGraphBuilder(
    "price_alerts",
    reactor=PriceAlertsReactor,
    graph={"check": {"inputs": ["prices"], "next": "alert"}, "alert": {}},
) as builder:

    @node
    def check(prices: Price) -> dict[str, Any]:
        limit = LIMITS.get(prices.symbol, float("inf"))
        return {"symbol": prices.symbol, "price": prices.price, "limit": limit}

    @node
    def alert(checked: dict[str, Any]) -> dict[str, Any]:
        return {**checked, "alert": checked["price"] >= checked["limit"]}
