"""``headrace run examples/keyed_price_signal.toml`` on a real broker: keyed end to end."""

from __future__ import annotations

import json
import signal
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fixtures.kafka_broker import (
    committed_offsets,
    consume_all,
    create_topic,
    produce_json,
    unique_topic,
)
from tests.integration.kafka_harness import end_offsets
from tests.integration.test_worker_cli import (  # noqa: F401 (fixture)
    EXAMPLES,
    REPO,
    WorkerProcess,
    http_get,
    workers,
)

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(180)]


def test_keyed_example_worker_keys_results_by_symbol(
    kafka_bootstrap: str,
    tmp_path: Path,
    workers: Callable[..., WorkerProcess],  # noqa: F811
) -> None:
    topics = {
        name: create_topic(kafka_bootstrap, unique_topic(name), partitions=2)
        for name in ("books", "refs", "signals", "alerts")
    }
    group = f"keyed-worker-{uuid.uuid4().hex[:8]}"
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "HEADRACE_GROUP_ID": group,
        "HEADRACE_HTTP_PORT": "0",
        "HEADRACE_STATE_STORE_URL": f"sqlite:///{tmp_path / 'state.db'}",
        "PRICE_ORDERBOOKS_TOPIC": topics["books"],
        "PRICE_REFERENCES_TOPIC": topics["refs"],
        "PRICE_SIGNAL_TOPIC": topics["signals"],
        "PRICE_ALERT_TOPIC": topics["alerts"],
    }
    worker = workers([EXAMPLES / "keyed_price_signal.toml"], env, REPO)
    base = worker.ready()
    books = [
        {"symbol": "BTC", "best_bid": 100.0, "best_ask": 100.2},
        {"symbol": "ETH", "best_bid": 52.0, "best_ask": 52.1},
        {"symbol": "SOL", "best_bid": 20.0, "best_ask": 20.02},
    ]
    positions = produce_json(
        kafka_bootstrap, topics["books"], books, key=lambda book: book["symbol"]
    )
    signals = consume_all(kafka_bootstrap, topics["signals"], 3, timeout=60)
    by_key = {key: json.loads(value)["emit_signal"] for key, value, _, _ in signals}
    assert set(by_key) == {b"BTC", b"ETH", b"SOL"}, "the fire's key is the message key"
    assert all(result["symbol"] == key.decode() for key, result in by_key.items())
    assert by_key[b"ETH"]["mid"] == pytest.approx(52.05)
    refs = [{"symbol": "ETH", "price": 50.0}, {"symbol": "BTC", "price": 100.1}]
    produce_json(kafka_bootstrap, topics["refs"], refs, key=lambda ref: ref["symbol"])
    alerts = consume_all(kafka_bootstrap, topics["alerts"], 2, timeout=60)
    verdicts = {key: json.loads(value) for key, value, _, _ in alerts}
    assert verdicts[b"ETH"]["alert"]["level"] == "ALERT"
    assert verdicts[b"BTC"]["ok"]["deviation_bps"] == pytest.approx(0.0)
    # a book without a symbol has no key: dead-lettered with the reason
    produce_json(kafka_bootstrap, topics["books"], [{"best_bid": 1.0, "best_ask": 2.0}], key="x")
    letter = worker.wait_for("dead letter", timeout=60)
    assert letter["accumulator"] == "symbol_books"
    assert "symbol" in letter["reason"], letter
    health = http_get(base, "/v1/health/graphs/keyed_price_signal").json()
    assert health["keyed"] is True and health["keys"] == 3
    assert health["max_concurrency"] == 4
    alert_health = http_get(base, "/v1/health/graphs/deviation_alert").json()
    assert alert_health["keys"] == 3  # SOL waits for its reference price
    assert alert_health["oldest_pending_key"] == "SOL"
    assert worker.stop(signal.SIGTERM) == 0, worker.output()
    committed = committed_offsets(kafka_bootstrap, group, topics["refs"])
    assert sum(committed.values()) == 2
    # SOL's book still waits in the when_all cache, but it is in the changelog: its offset
    # is acked, so the commit moves past it (the next owner restores it from there)
    sol_partition, sol_offset = positions[2]
    books_committed = committed_offsets(kafka_bootstrap, group, topics["books"])
    assert books_committed.get(sol_partition, 0) > sol_offset, books_committed
    assert books_committed == end_offsets(kafka_bootstrap, topics["books"]), books_committed
