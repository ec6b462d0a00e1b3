"""The publisher's functions: the normalized feed rounds prices to cents."""

from __future__ import annotations

from typing import Any


def normalize(event: dict[str, Any]) -> dict[str, Any]:
    return {**event, "price": round(float(event["price"]), 2)}
