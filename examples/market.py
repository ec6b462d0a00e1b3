"""Market data shared by the examples: pydantic models and the order book feed.

``orderbook`` is one stream accumulator (the ``price.orderbook`` Kafka topic in a worker)
that several reactors may watch: each gets its own bounded channel from it.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from headrace.accumulators import stream_accumulator


class OrderBook(BaseModel):
    """Top of the book."""

    best_bid: float = Field(gt=0)
    best_ask: float = Field(gt=0)

    @property
    def mid(self) -> float:
        return (self.best_bid + self.best_ask) / 2

    @property
    def spread(self) -> float:
        return self.best_ask - self.best_bid


class ReferencePrice(BaseModel):
    """An independent reference price (e.g. an index or another venue)."""

    price: float = Field(gt=0)


class Trade(BaseModel):
    price: float = Field(gt=0)
    volume: float = Field(gt=0)


@stream_accumulator(topic="price.orderbook", group="headrace-examples")
def orderbook(event: OrderBook) -> OrderBook | None:
    """Validates each message into an ``OrderBook``; crossed books are dropped."""
    return event if event.best_ask >= event.best_bid else None
