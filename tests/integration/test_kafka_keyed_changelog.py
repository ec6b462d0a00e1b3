"""Durable keyed state on a real broker: the changelog survives kill -9 and moves with the
partitions (``headrace run examples/keyed_price_signal.toml`` subprocesses)."""

from __future__ import annotations

import json
import signal
import time
import uuid
from collections.abc import Callable, Iterator
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
from tests.integration.test_worker_cli import EXAMPLES, REPO, WorkerProcess, http_get

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(240)]

ALERT_REACTOR = "deviation_alert_rx"


@pytest.fixture
def workers() -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(files: list[str | Path], env: dict[str, str], cwd: Path) -> WorkerProcess:
        started.append(WorkerProcess(files, env, cwd))
        return started[-1]

    yield start
    for worker in started:
        worker.kill()


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)


def keyed_config(tmp_path: Path) -> Path:
    """The example's config, with a short session timeout (a killed member goes in 6 s)."""
    text = (EXAMPLES / "keyed_price_signal.toml").read_text()
    path = tmp_path / "keyed_price_signal.toml"
    path.write_text(f'{text}\n[worker.consumer]\n"session.timeout.ms" = 6000\n')
    return path


def restored_keys(worker: WorkerProcess, reactor: str) -> int:
    return sum(e["keys"] for e in worker.events("keyed state restored") if e["reactor"] == reactor)


def test_kill_9_the_worker_holding_keyed_state_and_the_next_one_restores_it(
    kafka_bootstrap: str, tmp_path: Path, workers: Callable[..., WorkerProcess]
) -> None:
    """Worker A takes books of three symbols; deviation_alert (when_all) holds them waiting
    for reference prices. A's commits still reach the end of the books topic (each waiting
    book is in the changelog). A is killed with SIGKILL; worker B takes over, restores the
    three keys from the changelog (it never reads the books again: they are committed), and
    the first fire of each symbol after the takeover joins the book from before the kill."""
    topics = {
        name: create_topic(kafka_bootstrap, unique_topic(name), partitions=2)
        for name in ("books", "refs", "signals", "alerts")
    }
    group = f"keyed-changelog-{uuid.uuid4().hex[:8]}"
    config = keyed_config(tmp_path)

    def env(name: str) -> dict[str, str]:
        return {
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "HEADRACE_GROUP_ID": group,
            "HEADRACE_HTTP_PORT": "0",
            "HEADRACE_STATE_STORE_URL": f"sqlite:///{tmp_path / f'{name}.db'}",
            "PRICE_ORDERBOOKS_TOPIC": topics["books"],
            "PRICE_REFERENCES_TOPIC": topics["refs"],
            "PRICE_SIGNAL_TOPIC": topics["signals"],
            "PRICE_ALERT_TOPIC": topics["alerts"],
        }

    first = workers([config], env("a"), REPO)
    first.ready()
    books = [
        {"symbol": "BTC", "best_bid": 100.0, "best_ask": 100.2},
        {"symbol": "ETH", "best_bid": 52.0, "best_ask": 52.1},
        {"symbol": "SOL", "best_bid": 20.0, "best_ask": 20.02},
    ]
    produce_json(kafka_bootstrap, topics["books"], books, key=lambda book: book["symbol"])
    assert len(consume_all(kafka_bootstrap, topics["signals"], 3, timeout=60)) == 3
    books_end = end_offsets(kafka_bootstrap, topics["books"])
    wait_until(
        lambda: committed_offsets(kafka_bootstrap, group, topics["books"]) == books_end,
        60,
        f"the books' commits to reach {books_end} while every alert key waits",
    )
    assert "changelog topic created" in {e["event"] for e in first.lines}
    first.kill()  # SIGKILL: nothing is drained, nothing more is committed
    # the references are there before B starts: B must restore a partition's keys before
    # it takes the partition's first reference, or the join would miss the book
    refs = [
        {"symbol": "ETH", "price": 50.0},
        {"symbol": "BTC", "price": 100.1},
        {"symbol": "SOL", "price": 20.01},
    ]
    produce_json(kafka_bootstrap, topics["refs"], refs, key=lambda ref: ref["symbol"])

    second = workers([config], env("b"), REPO)
    base = second.ready()
    wait_until(
        lambda: restored_keys(second, ALERT_REACTOR) == 3,
        90,
        "the takeover worker to restore the three alert keys",
    )
    alert_health = http_get(base, "/v1/health/graphs/deviation_alert").json()
    assert alert_health["keys"] == 3 and alert_health["restored_keys"] == 3, alert_health
    alerts = consume_all(kafka_bootstrap, topics["alerts"], 3, timeout=60)
    verdicts = {key.decode(): json.loads(value) for key, value, _, _ in alerts}
    assert set(verdicts) == {"BTC", "ETH", "SOL"}
    assert verdicts["ETH"]["alert"]["level"] == "ALERT"
    assert verdicts["ETH"]["alert"]["deviation_bps"] == pytest.approx(410.0), "the book from before"
    assert verdicts["BTC"]["ok"]["deviation_bps"] == pytest.approx(0.0)
    assert verdicts["SOL"]["ok"]["deviation_bps"] == pytest.approx(0.0)
    accumulators = http_get(base, "/v1/health/accumulators").json()
    assert accumulators["symbol_books"]["events_in"] == 0, "books came from the changelog"
    metrics = http_get(base, "/metrics").text
    assert f'headrace_reactor_restored_keys_total{{reactor="{ALERT_REACTOR}"}} 3.0' in metrics
    assert second.stop(signal.SIGTERM) == 0, second.output()
