"""Global (table) accumulators on a real broker: a keyed stream enriched per key."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from headrace.accumulators import stream_accumulator
from headrace.connectors import KafkaSource, MemoryDeadLetters
from headrace.engine import ComputationGraphBuilder, Runtime
from headrace.reactors import reactor
from tests.fixtures.kafka_broker import committed_offsets, create_topic, produce_json, unique_topic
from tests.integration.kafka_harness import assert_committed_to_end

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(180)]


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


async def test_every_worker_enriches_its_keys_from_the_whole_global_table(
    kafka_bootstrap: str,
) -> None:
    """Instruments (a 3-partition table topic, written before the workers start) and
    trades (3 partitions) of 12 symbols; two workers in one group split the trades, and
    each reads the whole instrument table outside the group: every fire sees its own
    symbol's latest instrument, including an update made while the workers run; nothing
    of the table topic is committed."""
    instruments = create_topic(kafka_bootstrap, unique_topic("gt-instruments"), partitions=3)
    trades = create_topic(kafka_bootstrap, unique_topic("gt-trades"), partitions=3)
    group = f"gt-{uuid.uuid4().hex[:8]}"
    symbols = [f"G{n:02d}" for n in range(12)]
    by_symbol = lambda event: event["symbol"]  # noqa: E731
    produce_json(
        kafka_bootstrap,
        instruments,
        [{"symbol": s, "tick": 0.01, "version": v} for v in (1, 2) for s in symbols],
        key=by_symbol,
    )
    stream_accumulator(topic=instruments, name="gt_instruments", key="symbol", scope="global")(
        lambda e: e
    )
    stream_accumulator(topic=trades, name="gt_trades", key="symbol")(lambda e: e)
    reactor(name="gt_rx", accumulators=["gt_trades", "gt_instruments"], keyed=True)(
        type("Rx", (), {})
    )
    seen: list[tuple[str, dict[str, Any], dict[str, Any] | None]] = []

    def enrich(gt_trades: dict, gt_instruments: dict | None, key: str) -> None:
        seen.append((key, gt_trades, gt_instruments))

    with ComputationGraphBuilder(
        "gt_graph", reactor="gt_rx", graph={"enrich": {"inputs": ["gt_trades", "gt_instruments"]}}
    ) as builder:
        builder.add_node("enrich", enrich)
    sources = [KafkaSource(kafka_bootstrap, group, commit_interval=0.2) for _ in range(2)]
    runtimes = [
        Runtime(graphs=["gt_graph"], sources=[s], dead_letters=MemoryDeadLetters()) for s in sources
    ]
    async with contextlib.AsyncExitStack() as stack:
        for runtime in runtimes:
            await stack.enter_async_context(runtime)
        await wait_until(
            lambda: (
                all(s.flow.assigned for s in sources)
                and sum(len(s.flow.assigned) for s in sources) == 3
            ),
            60,
            "both workers to own trade partitions",
        )
        for runtime in runtimes:  # each worker has the whole table, not its share
            table = runtime.accumulators["gt_instruments"].table  # type: ignore[attr-defined]
            assert {k: v["version"] for k, v in table.items()} == dict.fromkeys(symbols, 2)
        produce_json(
            kafka_bootstrap, trades, [{"symbol": s, "qty": 1} for s in symbols], key=by_symbol
        )
        await wait_until(lambda: len(seen) == len(symbols), 60, "a fire per symbol")
        produce_json(
            kafka_bootstrap,
            instruments,
            [{"symbol": "G00", "tick": 0.5, "version": 3}],
            key=by_symbol,
        )
        await wait_until(
            lambda: all(
                r.accumulators["gt_instruments"].table["G00"]["version"] == 3  # type: ignore[attr-defined]
                for r in runtimes
            ),
            30,
            "the table update on both workers",
        )
        produce_json(kafka_bootstrap, trades, [{"symbol": "G00", "qty": 2}], key=by_symbol)
        await wait_until(lambda: len(seen) == len(symbols) + 1, 60, "the fire after the update")
        await wait_until(
            lambda: all(s.tracker.committable() == {} for s in sources), 30, "the commits"
        )
        fired = [r.reactors["gt_rx"].fire_count for r in runtimes]
    assert all(fired), f"both workers fired: {fired}"
    first = {key: (trade, inst) for key, trade, inst in seen[: len(symbols)]}
    assert set(first) == set(symbols)
    for key, (trade, instrument) in first.items():
        assert trade["symbol"] == key and instrument is not None
        assert instrument["symbol"] == key and instrument["version"] == 2
    key, trade, instrument = seen[-1]
    assert key == "G00" and trade["qty"] == 2 and instrument["version"] == 3
    assert_committed_to_end(kafka_bootstrap, group, trades)
    assert committed_offsets(kafka_bootstrap, group, instruments) == {}, "a table never commits"
