"""The price_alerts project's own tests: only `headrace` and its pytest plugin's fixtures."""

from __future__ import annotations

import asyncio
from pathlib import Path

from price_alerts.graph import Price, builder

from headrace.testing import MemoryRuntime, run_snapshots

CONFIG = Path(__file__).resolve().parents[1] / "price_alerts.toml"


def test_the_graph_over_snapshots() -> None:
    results = run_snapshots(
        builder,
        [{"prices": Price(symbol="ACME", price=99.5)}, {"prices": Price(symbol="ACME", price=100)}],
    )
    assert [r["alert"]["alert"] for r in results] == [False, True]


def test_in_memory_runtime(headrace_registry) -> None:
    async def scenario() -> list[dict]:
        async with MemoryRuntime(graphs=["price_alerts"]) as runtime:
            await runtime.push_many(
                "prices", [{"symbol": "INIT", "price": 49}, {"symbol": "INIT", "price": 51}]
            )
            return await runtime.wait_for(2, graph="price_alerts")

    outputs = asyncio.run(scenario())
    assert [o["alert"]["alert"] for o in outputs] == [False, True]


def test_the_worker_end_to_end(kafka_topic, headrace_worker, tmp_path: Path) -> None:
    prices, alerts = kafka_topic(partitions=2), kafka_topic()
    worker = headrace_worker(
        CONFIG,
        env={
            "PRICES_TOPIC": prices,
            "ALERTS_TOPIC": alerts,
            "PRICE_ALERTS_GROUP": f"price-alerts-{prices}",
            "HEADRACE_STATE_STORE_URL": f"sqlite:///{tmp_path / 'state.db'}",
        },
    )
    worker.ready()

    sent = [{"symbol": "ACME", "price": p} for p in (98.0, 101.0, 120.0)] + [
        {"symbol": "INIT", "price": 49.0}
    ]
    worker.produce_json(prices, sent, key=lambda v: v["symbol"])
    outputs = worker.wait_for_outputs(alerts, 4)
    by_price = {o["alert"]["price"]: o["alert"]["alert"] for o in outputs}
    assert by_price == {98.0: False, 101.0: True, 120.0: True, 49.0: False}

    worker.produce_json(prices, [{"symbol": "ACME", "price": -1}])  # fails the Price model
    (letter,) = worker.dead_letters(f"{prices}.dlq", 1)
    assert letter.json() == {"symbol": "ACME", "price": -1}
    assert letter.headers["source.topic"] == prices
    assert letter.headers["accumulator"] == "prices"
    assert "does not match Price" in letter.headers["error"]

    assert worker.health()["price_alerts"]["fire_count"] == 4
    assert "headrace_executions" in worker.metrics()
    assert worker.stop() == 0
