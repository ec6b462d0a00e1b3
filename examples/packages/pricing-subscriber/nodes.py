"""The subscriber's nodes: the ratio of the normalized to the raw price."""

from __future__ import annotations

from typing import Any


def score(
    raw_prices: dict[str, Any] | None, normalized_prices: dict[str, Any] | None
) -> float | None:
    if raw_prices is None or normalized_prices is None:
        return None
    return round(normalized_prices["price"] / raw_prices["price"], 6)


def publish(score: float | None) -> dict[str, Any]:
    return {"signal": score}
