"""The per-message work every system does: validate an order book, compute mid and spread.

Standard library only, so every peer's venv can import it (``settings`` reads the run's
parameters from the environment the orchestrator, ``tests/bench/peers.py``, sets).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any


def valid(book: Any) -> bool:
    """Bid and ask are floats, the symbol a string."""
    return (
        type(book) is dict
        and type(book.get("b")) is float
        and type(book.get("a")) is float
        and type(book.get("symbol")) is str
    )


def signal(book: dict[str, Any]) -> dict[str, Any]:
    """The output message: mid and spread of the top of the book."""
    bid, ask = book["b"], book["a"]
    return {
        "symbol": book["symbol"],
        "i": book["i"],
        "mid": (bid + ask) / 2,
        "spread": ask - bid,
        "t": book["t"],
    }


@dataclass(frozen=True)
class Settings:
    bootstrap: str
    input_topic: str
    output_topic: str
    group: str
    count: int
    state_dir: str
    commit_interval: float
    consumer_config: dict[str, Any] = field(default_factory=dict)
    """librdkafka settings every librdkafka-based system adds to its consumer's."""


def settings() -> Settings:
    env = os.environ
    return Settings(
        bootstrap=env["BENCH_BOOTSTRAP"],
        input_topic=env["BENCH_INPUT"],
        output_topic=env.get("BENCH_OUTPUT", ""),
        group=env["BENCH_GROUP"],
        count=int(env.get("BENCH_COUNT", "0")),
        state_dir=env.get("BENCH_STATE", "."),
        commit_interval=float(env.get("BENCH_COMMIT_INTERVAL", "1.0")),
        consumer_config=json.loads(env.get("BENCH_CONSUMER_CONFIG") or "{}"),
    )
