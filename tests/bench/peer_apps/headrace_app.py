"""Headrace: stream accumulator (validates) -> sequential reactor -> one-node graph -> Kafka.

``tests/bench/peers.py`` writes the worker's TOML (topics, group, sink) and runs
``headrace run`` on it, as a user runs a worker.
"""

from __future__ import annotations

from typing import Any

from headrace.accumulators import stream_accumulator
from headrace.engine import ComputationGraphBuilder, node
from headrace.reactors import reactor
from tests.bench.peer_apps.pipeline import signal, valid


@stream_accumulator(topic="bench.books")
def books(event: dict[str, Any]) -> dict[str, Any] | None:
    """Drops a book that is not valid."""
    return event if valid(event) else None


@reactor(name="bench_rx", accumulators=["books"], strategy="sequential")
class BenchReactor:
    """Fires once per book."""


with ComputationGraphBuilder(
    "bench_signal", reactor="bench_rx", graph={"mid_spread": {"inputs": ["books"]}}
):

    @node
    def mid_spread(books: dict[str, Any]) -> dict[str, Any]:
        return signal(books)
