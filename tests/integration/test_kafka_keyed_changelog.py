"""Durable keyed state on a real broker: the changelog survives kill -9 and moves with the
partitions (``headrace run examples/keyed_price_signal.toml`` subprocesses)."""

from __future__ import annotations

import json
import os
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


ROUNDS = {"short": 1, "long": 6}
SIZE = os.environ.get("HEADRACE_SOAK", "short").strip().lower() or "short"
if SIZE not in ROUNDS:
    raise pytest.UsageError(f"HEADRACE_SOAK must be one of {', '.join(ROUNDS)}, got {SIZE!r}")
SYMBOLS = ["BTC", "ETH", "SOL", "ADA", "XRP", "DOT"]


def test_kill_9_the_worker_holding_keyed_state_and_the_next_one_restores_it(
    kafka_bootstrap: str, tmp_path: Path, workers: Callable[..., WorkerProcess]
) -> None:
    """Each round: the running worker takes one book per symbol; deviation_alert
    (when_all) holds them waiting for reference prices, yet its commits reach the end of
    the books topic (each waiting book is in the changelog). It is killed with SIGKILL,
    the references are produced, and a new worker takes over: it restores every symbol from
    the changelog before it reads a reference (it never reads the books again: they are
    committed), so each symbol's first fire joins the book from before the kill (the
    round's book and reference agree exactly: deviation 0 only with that very book).
    HEADRACE_SOAK=long runs 6 rounds (6 kills)."""
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

    by_symbol = lambda event: event["symbol"]  # noqa: E731
    worker = workers([config], env("w0"), REPO)
    worker.ready()
    rounds = ROUNDS[SIZE]
    for round_ in range(1, rounds + 1):
        mid = 100.0 + round_
        books = [{"symbol": s, "best_bid": mid - 0.1, "best_ask": mid + 0.1} for s in SYMBOLS]
        produce_json(kafka_bootstrap, topics["books"], books, key=by_symbol)
        signals = consume_all(kafka_bootstrap, topics["signals"], len(SYMBOLS) * round_, 60)
        assert len(signals) >= len(SYMBOLS) * round_
        books_end = end_offsets(kafka_bootstrap, topics["books"])
        wait_until(
            lambda end=books_end: committed_offsets(kafka_bootstrap, group, topics["books"]) == end,
            60,
            f"round {round_}: the books' commits to reach {books_end} while every key waits",
        )
        worker.kill()  # SIGKILL: nothing is drained, nothing more is committed
        # alerts fire only once the references arrive: what is past these is this round's
        alerts_before = end_offsets(kafka_bootstrap, topics["alerts"])
        refs = [{"symbol": s, "price": mid} for s in SYMBOLS]
        produce_json(kafka_bootstrap, topics["refs"], refs, key=by_symbol)

        worker = workers([config], env(f"w{round_}"), REPO)
        base = worker.ready()
        wait_until(
            lambda now=worker: restored_keys(now, ALERT_REACTOR) == len(SYMBOLS),
            90,
            f"round {round_}: the takeover worker to restore every alert key",
        )
        alerts = consume_all(kafka_bootstrap, topics["alerts"], len(SYMBOLS) * round_, 60)
        verdicts = {  # this round's, by offset: partitions interleave in any order
            key.decode(): json.loads(value)
            for key, value, partition, offset in alerts
            if offset >= alerts_before.get(partition, 0)
        }
        assert set(verdicts) == set(SYMBOLS), f"round {round_}: {sorted(verdicts)}"
        for symbol, verdict in verdicts.items():
            assert verdict["ok"]["deviation_bps"] == pytest.approx(0.0), (round_, symbol, verdict)
        accumulators = http_get(base, "/v1/health/accumulators").json()
        assert accumulators["symbol_books"]["events_in"] == 0, "books came from the changelog"
        metrics = http_get(base, "/metrics").text
        restored = f'headrace_reactor_restored_keys_total{{reactor="{ALERT_REACTOR}"}}'
        assert f"{restored} {float(len(SYMBOLS))}" in metrics
    print(f"\nkeyed changelog ({SIZE}): {rounds} SIGKILL takeovers, {len(SYMBOLS)} keys each")
    assert worker.stop(signal.SIGTERM) == 0, worker.output()
