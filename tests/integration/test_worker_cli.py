"""``headrace`` end to end in a subprocess: config -> firing graphs -> outputs -> HTTP ->
SIGTERM -> clean exit, committed offsets, no duplicates on restart; with each state store.

The Kafka tests run against the real broker of ``kafka_bootstrap``; the PostgreSQL variant
uses the real server of ``postgres_url``. A few tests need neither (passthrough graphs fed
over HTTP) and prove signal handling and the error policy of the worker process itself.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from headrace.engine.store.state_store import StateStore
from headrace.testing.worker import HeadraceWorker
from tests.fixtures.kafka_broker import (
    committed_offsets,
    consume_all,
    create_topic,
    produce_json,
    unique_topic,
)
from tests.fixtures.postgres_server import libpq_url
from tests.integration.kafka_harness import end_offsets

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"


def headrace_command() -> list[str]:
    """The installed console script when there is one, else ``python -m engine.cli``."""
    script = Path(sys.executable).parent / "headrace"
    if script.exists():
        return [str(script)]
    found = shutil.which("headrace")
    return [found] if found else [sys.executable, "-m", "headrace.engine.cli"]


class WorkerProcess(HeadraceWorker):
    """``headrace run`` in a subprocess (the toolkit's ``HeadraceWorker``) with this
    checkout on ``PYTHONPATH``; it dies with the test process."""

    def __init__(self, files: list[str | Path], env: dict[str, str], cwd: Path) -> None:
        super().__init__(files, env={"PYTHONPATH": str(REPO), **env}, cwd=cwd, die_with_parent=True)

    wait_for = HeadraceWorker.wait_for_log


@pytest.fixture
def workers() -> Iterator[Callable[..., WorkerProcess]]:
    """Start workers; every one still running at the end is killed."""
    started: list[WorkerProcess] = []

    def start(files: list[str | Path], env: dict[str, str], cwd: Path) -> WorkerProcess:
        worker = WorkerProcess(files, env, cwd)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.kill()


def wait_until(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(0.1)


NODES = '''
"""Node functions of the worker test config."""
import asyncio
import os


def echo(orders):
    return {"id": orders["id"], "qty": orders["qty"]}


def check(ticks, limits):
    return {"id": ticks["id"], "ok": ticks["qty"] <= limits["max_qty"]}


async def slow(ticks):
    await asyncio.sleep(float(os.environ.get("SLOW_SECONDS", "5")))
    return ticks


def explode(ticks):
    raise ValueError(f"cannot handle {ticks!r}")
'''

KAFKA_CONFIG = """
modules = [{ name = "hr_worker_nodes", path = "." }]

[worker]
bootstrap_servers = "${KAFKA_BOOTSTRAP_SERVERS}"
group_id = "${GROUP}"
commit_interval = "200ms"
drain_timeout = "30s"

[worker.http]
port = 0
allow_unauthenticated = true  # the test pushes without a token

[worker.state_store]
url = "${STORE_URL}"
prune_interval = "1s"

[worker.dead_letters]
execution_topic = "${DLQ_TOPIC}"

[accumulators.orders]
kind = "stream"
topic = "${IN_TOPIC}"

[accumulators.ticks]
kind = "stream"
topic = "${TICKS_TOPIC}"

[accumulators.limits]
kind = "passthrough"

[reactors.orders_rx]
accumulators = ["orders"]
strategy = "sequential"

[reactors.limits_rx]
accumulators = ["ticks", "limits"]
mode = "when_all"

[graphs.echo]
module = "hr_worker_nodes"
reactor = "orders_rx"
sinks = ["out", "history"]
topology = { echo = { inputs = ["orders"] } }

[graphs.checked]
module = "hr_worker_nodes"
reactor = "limits_rx"
sinks = ["checked"]
topology = { check = { inputs = ["ticks", "limits"] } }

[sinks.out]
type = "kafka"
topic = "${OUT_TOPIC}"
key = "echo.id"

[sinks.checked]
type = "kafka"
topic = "${CHECKED_TOPIC}"

[sinks.history]
type = "state_store"
"""


@pytest.fixture
def nodes_dir(tmp_path: Path) -> Path:
    (tmp_path / "hr_worker_nodes.py").write_text(NODES)
    return tmp_path


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    ]
)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    url: str = request.getfixturevalue("postgres_url")
    schema = f"worker_{uuid.uuid4().hex[:10]}"  # this test's own tables in the shared server
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        conn.execute(f"create schema {schema}")
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}options=-csearch_path%3D{schema}"


def http_get(base: str, path: str) -> httpx.Response:
    return httpx.get(base + path, timeout=10)


@pytest.mark.kafka
def test_run_end_to_end_restart_without_duplicates(
    kafka_bootstrap: str,
    store_url: str,
    nodes_dir: Path,
    workers: Callable[..., WorkerProcess],
) -> None:
    in_topic = create_topic(kafka_bootstrap, unique_topic("worker-in"), partitions=3)
    out_topic = create_topic(kafka_bootstrap, unique_topic("worker-out"), partitions=1)
    checked_topic = create_topic(kafka_bootstrap, unique_topic("worker-checked"), partitions=1)
    ticks_topic = create_topic(kafka_bootstrap, unique_topic("worker-ticks"), partitions=1)
    group = f"worker-test-{uuid.uuid4().hex[:8]}"
    config = nodes_dir / "worker.toml"
    config.write_text(KAFKA_CONFIG)
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "GROUP": group,
        "STORE_URL": store_url,
        "IN_TOPIC": in_topic,
        "OUT_TOPIC": out_topic,
        "CHECKED_TOPIC": checked_topic,
        "TICKS_TOPIC": ticks_topic,
        "DLQ_TOPIC": unique_topic("worker-dlq"),
    }

    # -- first run: config -> firing graphs -> outputs -> HTTP -> SIGTERM ------------------
    worker = workers([config], env, nodes_dir)
    base = worker.ready()
    pushed = httpx.post(f"{base}/v1/accumulators/limits", json={"max_qty": 5}, timeout=10)
    assert pushed.status_code == 202, pushed.text
    first = [{"id": i, "qty": i % 10} for i in range(30)]
    produce_json(kafka_bootstrap, in_topic, first, key=lambda v: str(v["id"]))

    records = consume_all(kafka_bootstrap, out_topic, 30, timeout=60)
    assert sorted(json.loads(v)["echo"]["id"] for _, v, _, _ in records) == list(range(30))
    assert {k for k, _, _, _ in records} == {str(i).encode() for i in range(30)}
    produce_json(kafka_bootstrap, ticks_topic, [{"id": "t1", "qty": 7}])
    (checked,) = consume_all(kafka_bootstrap, checked_topic, 1, timeout=30)
    assert json.loads(checked[1]) == {"check": {"id": "t1", "ok": False}}

    graphs = http_get(base, "/v1/health/graphs").json()
    assert graphs["echo"]["fire_count"] == 30
    assert graphs["echo"]["state"] == "running"
    assert graphs["checked"]["fire_count"] == 1
    assert http_get(base, "/v1/health/graphs/echo").json()["accumulators"]["orders"]["topic"] == (
        in_topic
    )
    accumulators = http_get(base, "/v1/health/accumulators").json()
    assert accumulators["orders"]["events_in"] == 30
    metrics = http_get(base, "/metrics").text
    assert 'headrace_executions_total{graph="echo",status="ok"} 30.0' in metrics
    assert 'headrace_fires_total{reactor="orders_rx"} 30.0' in metrics
    executions = wait_until(
        lambda: http_get(base, "/v1/executions?graph=echo&limit=100").json()["executions"],
        what="executions in the state store",
    )
    assert {row["status"] for row in executions} == {"ok"}
    results = http_get(base, "/v1/results?graph=echo&limit=1000").json()["results"]
    assert sorted(row["outputs"]["echo"]["id"] for row in results) == list(range(30))
    assert http_get(base, "/v1/results?graph=checked").json()["results"] == []

    assert worker.stop() == 0, worker.output()
    assert worker.events("worker stopped")[0]["exit_code"] == 0
    produced = end_offsets(kafka_bootstrap, in_topic)
    assert committed_offsets(kafka_bootstrap, group, in_topic) == {
        p: n for p, n in produced.items() if n
    }
    assert sum(end_offsets(kafka_bootstrap, out_topic).values()) == 30
    assert all(json.loads(line) for line in worker.raw if line.strip()), "stdout is JSON lines"

    # -- restart: nothing is repeated, when_all state (limits) survives ----------------------
    worker = workers([config], env, nodes_dir)
    base = worker.ready()
    restored = worker.wait_for("accumulator values restored", timeout=10)
    assert restored["accumulators"] == ["limits"]
    second = [{"id": i, "qty": 1} for i in range(30, 40)]
    produce_json(kafka_bootstrap, in_topic, second, key=lambda v: str(v["id"]))
    # the limits pushed before the restart still count: no new push, yet a tick fires
    produce_json(kafka_bootstrap, ticks_topic, [{"id": "t2", "qty": 3}])
    records = consume_all(kafka_bootstrap, out_topic, 40, timeout=60)
    ids = [json.loads(v)["echo"]["id"] for _, v, _, _ in records]
    assert sorted(ids) == list(range(40))
    checked = consume_all(kafka_bootstrap, checked_topic, 2, timeout=30)
    assert json.loads(checked[-1][1]) == {"check": {"id": "t2", "ok": True}}
    assert http_get(base, "/v1/health/graphs/echo").json()["fire_count"] == 10
    assert worker.stop() == 0, worker.output()

    assert sum(end_offsets(kafka_bootstrap, out_topic).values()) == 40, "duplicates on restart"
    with StateStore(store_url) as store:  # the state_store sink kept every echo result once
        kept = store.results(limit=1000)
    assert sorted(row["outputs"]["echo"]["id"] for row in kept) == list(range(40))
    assert {row["graph"] for row in kept} == {"echo"}
    assert sum(end_offsets(kafka_bootstrap, checked_topic).values()) == 2
    assert committed_offsets(kafka_bootstrap, group, ticks_topic) == {0: 2}
    produced = end_offsets(kafka_bootstrap, in_topic)
    assert committed_offsets(kafka_bootstrap, group, in_topic) == {
        p: n for p, n in produced.items() if n
    }


@pytest.mark.kafka
def test_price_signal_example_config(
    kafka_bootstrap: str, tmp_path: Path, workers: Callable[..., WorkerProcess]
) -> None:
    """examples/price_signal.toml (what ``make demo`` runs) works as written."""
    books = create_topic(kafka_bootstrap, unique_topic("books"), partitions=1)
    signals = create_topic(kafka_bootstrap, unique_topic("signals"), partitions=1)
    group = f"price-signal-{uuid.uuid4().hex[:8]}"
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "HEADRACE_GROUP_ID": group,
        "HEADRACE_HTTP_PORT": "0",
        "HEADRACE_STATE_STORE_URL": f"sqlite:///{tmp_path / 'state.db'}",
        "PRICE_ORDERBOOK_TOPIC": books,
        "PRICE_SIGNAL_TOPIC": signals,
    }
    worker = workers([EXAMPLES / "price_signal.toml"], env, REPO)
    base = worker.ready()
    produce_json(kafka_bootstrap, books, [{"best_bid": 100.0, "best_ask": 100.2}])
    (record,) = consume_all(kafka_bootstrap, signals, 1, timeout=60)
    emitted = json.loads(record[1])["emit"]
    assert emitted["mid_price"] == pytest.approx(100.1)
    assert emitted["spread_bps"] == pytest.approx(0.2 / 100.1 * 10_000)
    logged = worker.wait_for("graph result", timeout=10)
    assert logged["graph"] == "price_signal"
    health = http_get(base, "/v1/health/graphs/price_signal").json()
    assert health["fire_count"] == 1
    # a poison message is dead-lettered, the worker keeps going
    produce_json(kafka_bootstrap, books, ["not an order book", {"best_bid": 1, "best_ask": 3}])
    records = consume_all(kafka_bootstrap, signals, 2, timeout=60)
    assert json.loads(records[-1][1])["emit"]["mid_price"] == 2.0
    (letter,) = worker.events("dead letter")
    assert (letter["kind"], letter["accumulator"], letter["topic"]) == (
        "message",
        "orderbook",
        books,
    )
    assert (letter["partition"], letter["offset"]) == (0, 1)
    assert worker.stop(signal.SIGINT) == 0, worker.output()
    assert committed_offsets(kafka_bootstrap, group, books) == {0: 3}


# -- without Kafka: signals and the error policy of the process -----------------------------------

PASSTHROUGH_CONFIG = """
modules = [{{ name = "hr_worker_nodes", path = "." }}]

[worker]
drain_timeout = "30s"
http = {{ port = 0, allow_unauthenticated = true }}
state_store = {{ url = "sqlite:///{db}" }}

[accumulators.ticks]
kind = "passthrough"

[reactors.ticks_rx]
accumulators = ["ticks"]
strategy = "sequential"

[graphs.work]
module = "hr_worker_nodes"
reactor = "ticks_rx"
on_error = "{on_error}"
retry = {{ attempts = 2, backoff = "10ms" }}
topology = {{ work = {{ inputs = ["ticks"], function = "{function}" }} }}
sinks = ["log"]

[sinks.log]
type = "log"
"""


def passthrough_config(directory: Path, function: str, on_error: str = "dead_letter") -> Path:
    config = directory / "passthrough.toml"
    config.write_text(
        PASSTHROUGH_CONFIG.format(db=directory / "state.db", function=function, on_error=on_error)
    )
    return config


def test_sigterm_drains_running_graphs_then_exits_0(
    nodes_dir: Path, workers: Callable[..., WorkerProcess]
) -> None:
    config = passthrough_config(nodes_dir, "slow")
    worker = workers([config], {"SLOW_SECONDS": "1.5"}, nodes_dir)
    base = worker.ready()
    assert httpx.post(f"{base}/v1/accumulators/ticks", json={"n": 1}, timeout=10).is_success
    assert httpx.post(f"{base}/v1/accumulators/ticks", json={"n": 2}, timeout=10).is_success
    started = time.monotonic()
    assert worker.stop() == 0, worker.output()
    assert time.monotonic() - started >= 1.0, "the running graph was not waited for"
    results = [line["outputs"]["work"]["n"] for line in worker.events("graph result")]
    assert results == [1, 2], "values already delivered are drained, in order"
    assert worker.events("draining: stop fetching, finish running graphs, flush, commit")


def test_second_signal_exits_at_once_non_zero(
    nodes_dir: Path, workers: Callable[..., WorkerProcess]
) -> None:
    config = passthrough_config(nodes_dir, "slow")
    worker = workers([config], {"SLOW_SECONDS": "60"}, nodes_dir)
    base = worker.ready()
    assert httpx.post(f"{base}/v1/accumulators/ticks", json={"n": 1}, timeout=10).is_success
    time.sleep(0.3)
    worker.send(signal.SIGTERM)
    worker.wait_for("draining: stop fetching, finish running graphs, flush, commit", 10)
    started = time.monotonic()
    code = worker.stop(signal.SIGINT, timeout=10)
    assert code == 128 + signal.SIGINT, worker.output()
    assert time.monotonic() - started < 5
    assert worker.events("second signal: exiting without draining")


def test_failing_graph_is_dead_lettered_and_the_worker_keeps_running(
    nodes_dir: Path, workers: Callable[..., WorkerProcess]
) -> None:
    config = passthrough_config(nodes_dir, "explode", on_error="dead_letter")
    worker = workers([config], {}, nodes_dir)
    base = worker.ready()
    assert httpx.post(f"{base}/v1/accumulators/ticks", json={"n": 1}, timeout=10).is_success
    letters = wait_until(
        lambda: httpx.get(f"{base}/v1/dead-letters", timeout=10).json()["dead_letters"],
        what="a dead letter in the state store",
    )
    assert letters[0]["graph"] == "work" and letters[0]["node"] == "work"
    assert "cannot handle" in letters[0]["reason"]
    (logged,) = worker.events("dead letter")
    assert (logged["kind"], logged["graph"], logged["node"]) == ("execution", "work", "work")
    assert logged["level"] == "warning" and "payload" not in logged
    failures = worker.events("graph execution failed")
    assert [f["attempt"] for f in failures] == [1, 2]
    assert failures[0]["graph"] == "work" and failures[0]["node"] == "work"
    assert httpx.get(f"{base}/v1/health/graphs/work", timeout=10).json()["state"] == "running"
    assert worker.stop() == 0, worker.output()


def test_on_error_stop_halts_the_worker_with_exit_1(
    nodes_dir: Path, workers: Callable[..., WorkerProcess]
) -> None:
    config = passthrough_config(nodes_dir, "explode", on_error="stop")
    worker = workers([config], {}, nodes_dir)
    base = worker.ready()
    assert httpx.post(f"{base}/v1/accumulators/ticks", json={"n": 1}, timeout=10).is_success
    assert worker.wait(30) == 1, worker.output()
    halted = worker.events("graph halted: stopping the worker")
    assert halted and halted[0]["reactors"] == ["ticks_rx"]


def test_worker_that_cannot_start_exits_1(
    nodes_dir: Path, workers: Callable[..., WorkerProcess]
) -> None:
    config = passthrough_config(nodes_dir, "slow")
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    config.write_text(config.read_text().replace("port = 0", f"port = {port}"))
    try:
        worker = workers([config], {}, nodes_dir)
        assert worker.wait(30) == 1, worker.output()
    finally:
        blocker.close()
    failed = worker.events("worker failed to start")
    assert failed, worker.output()
    assert "in use" in failed[0]["error"], failed[0]


def test_cli_validate_and_graphs_in_a_subprocess(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    ok = subprocess.run(
        [*headrace_command(), "graphs", str(EXAMPLES / "multi_source_alert.toml")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    assert "multi_source_alert_rx: when_all, latest; watches orderbook, reference" in ok.stdout
    assert "evaluate -(Alert)-> alert" in ok.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text(textwrap.dedent('[graphs.x]\nreactor = "nope"\non_error = "retry"\n'))
    result = subprocess.run(
        [*headrace_command(), "validate", str(bad)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert f"{bad}: graphs.x.on_error: Input should be 'dead_letter' or 'stop'" in result.stderr
