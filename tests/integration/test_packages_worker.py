"""Packages deployed into a running ``headrace run`` subprocess (SQLite and PostgreSQL
state stores): the seeds' two-package scenario over HTTP and the CLI, the unload guard,
bad archives that leave the worker running, and a clean SIGTERM."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from headrace.engine.packages.archive import pack
from headrace.testing.worker import HeadraceWorker
from tests.fixtures.postgres_server import libpq_url, schema_url
from tests.unit.engine.packages.helpers import MANIFEST, file_member, tar_bytes, write_package

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "packages"
TOKEN = "package-test-token"

WORKER = """\
[worker]
group_id = "packages-test"

[worker.http]
port = "${HEADRACE_HTTP_PORT:-0}"
token = "${HEADRACE_TOKEN}"

[worker.state_store]
url = "${HEADRACE_STATE_STORE_URL}"

[worker.packages]
max_archive_bytes = 200000
workdir = "${PACKAGES_WORKDIR}"
"""


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    ]
)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    return schema_url(request.getfixturevalue("postgres_url"), "packages")


def start_worker(
    headrace_worker: Any, tmp_path: Path, store: str, index: int = 0, text: str = WORKER
) -> HeadraceWorker:
    """A ``headrace run`` subprocess on ``store`` (killed at the end by the fixture)."""
    config = tmp_path / f"worker-{index}.toml"
    config.write_text(text)
    env = {
        "HEADRACE_TOKEN": TOKEN,
        "HEADRACE_STATE_STORE_URL": store,
        "PACKAGES_WORKDIR": str(tmp_path / f"extracted-{index}"),
    }
    worker: HeadraceWorker = headrace_worker(
        config, env=env, cwd=tmp_path, token=TOKEN, kafka=False
    )
    return worker


@pytest.fixture
def worker(headrace_worker: Any, tmp_path: Path, store_url: str) -> HeadraceWorker:
    started = start_worker(headrace_worker, tmp_path, store_url)
    started.ready(timeout=120)
    return started


def cli(*args: str, url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "headrace", "package", *args, "--url", url],
        env={**os.environ, "HEADRACE_TOKEN": TOKEN},
        capture_output=True,
        text=True,
        timeout=120,
    )


def call(method: str, worker: HeadraceWorker, path: str, **options: Any) -> httpx.Response:
    return httpx.request(
        method,
        worker.url + path,
        headers={"Authorization": f"Bearer {worker.token}"},
        timeout=30,
        **options,
    )


def wait_status(
    worker: HeadraceWorker, name: str, status: str, timeout: float = 60
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body = call("GET", worker, f"/v1/packages/{name}").json()
        if body.get("status") == status:
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} is not {status} after {timeout}s: {body}")
        time.sleep(0.1)


def results_of(worker: HeadraceWorker, graph: str) -> list[dict[str, Any]]:
    return [line for line in worker.events("graph result") if line.get("graph") == graph]


def test_two_packages_upload_bind_guard_and_unload(worker: HeadraceWorker, tmp_path: Path) -> None:
    # no graphs yet: the worker waits for uploads
    assert call("GET", worker, "/v1/packages").json()["waiting_for_uploads"] is True
    publisher = pack(EXAMPLES / "pricing-publisher", "pricing-publisher", "0.1.0", tmp_path)
    subscriber = pack(EXAMPLES / "pricing-subscriber", "pricing-subscriber", "0.1.0", tmp_path)
    uploaded = cli("upload", str(publisher), url=worker.url)
    assert uploaded.returncode == 0, uploaded.stderr
    assert '"status": "pending"' in uploaded.stdout
    wait_status(worker, "pricing-publisher", "loaded")
    response = call("POST", worker, "/v1/packages", content=subscriber.read_bytes())
    assert response.status_code == 201, response.text
    loaded = wait_status(worker, "pricing-subscriber", "loaded")
    assert loaded["declares"]["graphs"] == ["price_consumer"]

    assert worker.push("raw_prices", {"symbol": "BTCUSD", "price": 42000.0}).status_code == 202
    assert (
        worker.push("normalized_prices", {"symbol": "BTCUSD", "price": 42210.0}).status_code == 202
    )
    deadline = time.monotonic() + 30
    while not any(
        r["outputs"] == {"publish": {"signal": 1.005}} for r in results_of(worker, "price_consumer")
    ):
        assert time.monotonic() < deadline, worker.output()
        time.sleep(0.1)

    refused = cli("delete", "pricing-publisher", url=worker.url)
    assert refused.returncode == 1
    assert '"bound_graphs": [\n    "price_consumer"\n  ]' in refused.stderr
    assert "pricing-subscriber" in refused.stderr
    assert cli("delete", "pricing-subscriber", url=worker.url).returncode == 0
    assert call("DELETE", worker, "/v1/packages/pricing-publisher").status_code == 200
    listing = cli("list", url=worker.url)
    assert listing.returncode == 0 and '"packages": []' in listing.stdout
    assert worker.push("raw_prices", {"price": 1.0}).status_code == 404  # its feeds are gone
    assert worker.get("/v1/health/ready").status_code == 200
    assert worker.stop() == 0


def bad_archives(tmp_path: Path) -> dict[str, bytes]:
    link = file_member("p-1.0/nodes.py", b"")[0]
    link.type, link.linkname = b"2", "/etc/passwd"
    return {
        "traversal": tar_bytes(
            [file_member("p-1.0/package.toml", MANIFEST), file_member("p-1.0/../../x.py", b"x")]
        ),
        "link": tar_bytes([file_member("p-1.0/package.toml", MANIFEST), (link, None)]),
        "oversized": os.urandom(300_000),
        "manifest": tar_bytes(
            [file_member("p-1.0/package.toml", b'[package]\nname = "p"\nversion = "one"\n')]
        ),
    }


def test_bad_packages_get_4xx_or_a_failed_status_and_the_worker_keeps_running(
    worker: HeadraceWorker, tmp_path: Path
) -> None:
    expected = {
        "traversal": (400, "p-1.0/../../x.py: path leaves the package"),
        "link": (400, "p-1.0/nodes.py: links are not allowed (-> /etc/passwd)"),
        "oversized": (413, "the limit is 200000 bytes ([worker.packages] max_archive_bytes)"),
        "manifest": (400, "p-1.0/package.toml: package.version: not a PEP 440 version: 'one'"),
    }
    for case, data in bad_archives(tmp_path).items():
        status, reason = expected[case]
        response = call("POST", worker, "/v1/packages", content=data)
        assert response.status_code == status, (case, response.text)
        assert reason in response.text, (case, response.text)

    broken = write_package(
        tmp_path,
        "broken",
        "1.0",
        'modules = ["nodes"]\n##\n',
        **{"nodes.py": "import no_such_mod\n"},
    )
    orphan = write_package(
        tmp_path,
        "orphan",
        "1.0",
        textwrap.dedent(
            """
            ##
            [graphs.lonely]
            reactor = "NoSuchReactor"
            module = "nodes"
            [graphs.lonely.topology]
            f = { inputs = ["x"] }
            """
        ),
        **{"nodes.py": "def f(x):\n    return x\n"},
    )
    for directory in (broken, orphan):
        name = directory.name.split("-src-")[0]
        archive = pack(directory, name, "1.0", tmp_path)
        assert call("POST", worker, "/v1/packages", content=archive.read_bytes()).status_code == 201
    failed = wait_status(worker, "broken", "failed")
    assert failed["error"] == (
        "broken-1.0/package.toml: modules[0]: cannot import module 'nodes': "
        "ModuleNotFoundError: No module named 'no_such_mod'"
    )
    pending = wait_status(worker, "orphan", "pending")
    assert pending["reasons"] == ["graph 'lonely': reactor 'NoSuchReactor' not loaded"]
    assert worker.get("/v1/health/ready").status_code == 200
    assert worker.returncode is None
    assert worker.stop() == 0


# -- Kafka-sourced packages ----------------------------------------------------------------

KAFKA_WORKER = """\
[worker]
bootstrap_servers = "${KAFKA_BOOTSTRAP_SERVERS}"
group_id = "${GROUP}"
commit_interval = "200ms"

[worker.http]
port = "${HEADRACE_HTTP_PORT:-0}"
token = "${HEADRACE_TOKEN}"

[worker.state_store]
url = "sqlite:///${STATE_DB}"

[accumulators.ticks]
kind = "stream"
topic = "${TICKS_TOPIC}"

[reactors.ticks_rx]
accumulators = ["ticks"]
strategy = "sequential"

[graphs.ticks_graph]
reactor = "ticks_rx"
module = "tick_nodes"
sinks = ["log"]

[graphs.ticks_graph.topology]
seen = { inputs = ["ticks"] }

[sinks.log]
type = "log"
"""


def group_topics(bootstrap: str, group: str) -> set[str]:
    """Topics assigned to the members of ``group`` now."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    described = admin.describe_consumer_groups([group])[group].result(timeout=15)
    return {tp.topic for member in described.members for tp in member.assignment.topic_partitions}


@pytest.mark.kafka
def test_kafka_package_joins_and_leaves_the_group_without_disturbing_other_topics(
    headrace_worker: Any, kafka_bootstrap: str, kafka_topic: Any, tmp_path: Path
) -> None:
    from tests.fixtures.kafka_broker import committed_offsets

    ticks = kafka_topic(2, prefix="pkg-ticks")
    books = kafka_topic(2, prefix="pkg-books")
    group = f"pkg-{uuid.uuid4().hex[:8]}"
    (tmp_path / "tick_nodes.py").write_text("def seen(ticks):\n    return ticks\n")
    config = tmp_path / "worker.toml"
    config.write_text(KAFKA_WORKER)
    env = {
        "HEADRACE_TOKEN": TOKEN,
        "GROUP": group,
        "TICKS_TOPIC": ticks,
        "PRICE_ORDERBOOK_TOPIC": books,
        "STATE_DB": str(tmp_path / "state.db"),
    }
    worker = headrace_worker(config, env=env, cwd=tmp_path, token=TOKEN)
    worker.ready(timeout=120)
    worker.produce_json(ticks, [{"n": i} for i in range(20)], key=lambda v: str(v["n"]))
    wait_results(worker, "ticks_graph", 20)
    wait_committed(kafka_bootstrap, group, ticks, 20)
    revoked_before = len(worker.events("partitions revoked"))

    archive = pack(EXAMPLES / "price-signal", "price-signal", "0.1.0", tmp_path)
    assert call("POST", worker, "/v1/packages", content=archive.read_bytes()).status_code == 201
    wait_status(worker, "price-signal", "loaded")
    books_values = [
        {"symbol": "BTC", "best_bid": 100 + i, "best_ask": 102 + i, "seq": i} for i in range(30)
    ]
    worker.produce_json(books, books_values, key=lambda v: str(v["seq"]))
    worker.produce_json(ticks, [{"n": i} for i in range(20, 30)], key=lambda v: str(v["n"]))
    wait_results(worker, "price_signal", 30)
    wait_results(worker, "ticks_graph", 30)
    wait_committed(kafka_bootstrap, group, books, 30)
    wait_committed(kafka_bootstrap, group, ticks, 30)
    # incremental: adding the topic revoked none of the ticks partitions
    revoked = [
        e
        for e in worker.events("partitions revoked")[revoked_before:]
        if any(ticks in p for p in e.get("partitions", []))
    ]
    assert revoked == []
    assert group_topics(kafka_bootstrap, group) == {ticks, books}
    results = results_of(worker, "price_signal")
    assert sorted(r["outputs"]["signal"]["seq"] for r in results) == list(range(30))

    assert call("DELETE", worker, "/v1/packages/price-signal").status_code == 200
    deadline = time.monotonic() + 60
    while group_topics(kafka_bootstrap, group) != {ticks}:
        assert time.monotonic() < deadline, group_topics(kafka_bootstrap, group)
        time.sleep(0.2)
    assert sum(committed_offsets(kafka_bootstrap, group, books).values()) == 30
    worker.produce_json(books, [{"symbol": "X", "best_bid": 1, "best_ask": 2, "seq": 99}])
    worker.produce_json(ticks, [{"n": 30}], key="30")
    wait_results(worker, "ticks_graph", 31)  # the other topic runs on
    assert len(results_of(worker, "price_signal")) == 30  # the deleted one does not
    assert worker.stop() == 0


def wait_results(worker: HeadraceWorker, graph: str, count: int, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while len(results_of(worker, graph)) < count:
        assert time.monotonic() < deadline, (len(results_of(worker, graph)), worker.output())
        time.sleep(0.1)


def wait_committed(bootstrap: str, group: str, topic: str, total: int, timeout: float = 60) -> None:
    from tests.fixtures.kafka_broker import committed_offsets

    deadline = time.monotonic() + timeout
    while sum(committed_offsets(bootstrap, group, topic).values()) < total:
        assert time.monotonic() < deadline, committed_offsets(bootstrap, group, topic)
        time.sleep(0.2)


# -- fleets ------------------------------------------------------------------------------------

FLEET_WORKER = WORKER.replace("[worker.packages]\n", '[worker.packages]\npoll_interval = "300ms"\n')


@pytest.mark.postgres
def test_two_workers_on_one_postgres_store_load_and_unload_together(
    headrace_worker: Any, postgres_url: str, tmp_path: Path
) -> None:
    store = schema_url(postgres_url, "fleet")
    a, b = (start_worker(headrace_worker, tmp_path, store, i, FLEET_WORKER) for i in range(2))
    a.ready(timeout=120)
    b.ready(timeout=120)
    ids = {w: f"{socket.gethostname()}:{w.pid}" for w in (a, b)}
    # the fleet view lists a worker with no packages too: waiting for uploads, beating
    idle = wait_fleet(a, lambda fleet: set(fleet) == set(ids.values()))
    assert [(w["waiting_for_uploads"], w["packages"], w["stale"]) for w in idle.values()] == [
        (True, {}, False)
    ] * 2
    for example in ("pricing-publisher", "pricing-subscriber"):
        archive = pack(EXAMPLES / example, example, "0.1.0", tmp_path)
        assert call("POST", a, "/v1/packages", content=archive.read_bytes()).status_code == 201
    for worker in (a, b):
        wait_status(worker, "pricing-publisher", "loaded")
        wait_status(worker, "pricing-subscriber", "loaded")
    assert b.push("raw_prices", {"price": 10.0}).status_code == 202
    assert b.push("normalized_prices", {"price": 11.0}).status_code == 202
    deadline = time.monotonic() + 30
    while not any(
        r["outputs"] == {"publish": {"signal": 1.1}} for r in results_of(b, "price_consumer")
    ):
        assert time.monotonic() < deadline, b.output()
        time.sleep(0.1)
    both = (("pricing-publisher", "0.1.0", "loaded"), ("pricing-subscriber", "0.1.0", "loaded"))

    def runs_both(fleet: dict[str, Any]) -> bool:
        return set(fleet) == set(ids.values()) and all(
            tuple(sorted((n, p["version"], p["status"]) for n, p in w["packages"].items())) == both
            and not w["waiting_for_uploads"]
            for w in fleet.values()
        )

    fleet = wait_fleet(b, runs_both)  # b's view of the fleet, a's too below
    assert all(w["heartbeat"] > 0 and w["stale"] is False for w in fleet.values())
    assert runs_both(call("GET", a, "/v1/packages").json()["workers"])
    for worker in (a, b):  # GET /v1/health: what this worker runs
        health = worker.health("/v1/health")
        assert health["graphs"] == ["price_consumer"]
        mine = health["packages"]
        assert mine["worker"] == ids[worker] and mine["waiting_for_uploads"] is False
        assert [(p["name"], p["version"], p["status"], p["error"]) for p in mine["packages"]] == [
            (*part, None) for part in both
        ]
    refused = call("DELETE", a, "/v1/packages/pricing-publisher")
    assert refused.status_code == 409 and refused.json()["bound_graphs"] == ["price_consumer"]
    assert call("DELETE", a, "/v1/packages/pricing-subscriber").status_code == 200
    assert call("DELETE", a, "/v1/packages/pricing-publisher").status_code == 200
    deadline = time.monotonic() + 30
    while call("GET", b, "/v1/packages").json()["packages"]:
        assert time.monotonic() < deadline, b.output()
        time.sleep(0.2)
    assert b.push("raw_prices", {"price": 1.0}).status_code == 404  # unloaded on b too
    assert a.stop() == 0
    left = wait_fleet(b, lambda fleet: set(fleet) == {ids[b]})  # a stopped: it left the view
    assert left[ids[b]]["packages"] == {} and left[ids[b]]["waiting_for_uploads"] is True
    assert b.stop() == 0


def wait_fleet(
    worker: HeadraceWorker, done: Callable[[dict[str, Any]], bool], timeout: float = 30
) -> dict[str, Any]:
    """``workers`` of ``GET /v1/health`` once ``done`` holds for it."""
    deadline = time.monotonic() + timeout
    while True:
        fleet = worker.health("/v1/health")["packages"]["workers"]
        if done(fleet):
            return dict(fleet)
        assert time.monotonic() < deadline, (fleet, worker.output())
        time.sleep(0.2)


LISTEN_WORKER = WORKER.replace("[worker.packages]\n", '[worker.packages]\npoll_interval = "10m"\n')


def listener_name(worker: HeadraceWorker) -> str:
    """The ``application_name`` of ``worker``'s LISTEN connection."""
    return f"headrace-packages {socket.gethostname()}:{worker.pid}"[:63]


@pytest.mark.postgres
def test_notify_deploys_to_the_other_worker_long_before_its_poll(
    headrace_worker: Any, postgres_url: str, tmp_path: Path
) -> None:
    """Both workers poll every 10 minutes: only NOTIFY can bring an upload (or a delete) on
    one to the other within seconds; after its LISTEN connection is killed, it reconnects."""
    store = schema_url(postgres_url, "listen")
    a, b = (start_worker(headrace_worker, tmp_path, store, i, LISTEN_WORKER) for i in range(2))
    for worker in (a, b):
        worker.ready(timeout=120)
        worker.wait_for_log("listening for package changes", timeout=60)
    archives = {
        example: pack(EXAMPLES / example, example, "0.1.0", tmp_path).read_bytes()
        for example in ("pricing-publisher", "pricing-subscriber")
    }
    began = time.monotonic()
    assert call("POST", a, "/v1/packages", content=archives["pricing-publisher"]).status_code == 201
    wait_status(b, "pricing-publisher", "loaded", timeout=30)
    loaded_in = time.monotonic() - began

    with psycopg.connect(libpq_url(postgres_url), autocommit=True) as conn:
        killed = conn.execute(
            "select pg_terminate_backend(pid) from pg_stat_activity where application_name = %s",
            (listener_name(b),),
        ).fetchall()
    assert killed == [(True,)]
    b.wait_for_log("package notifications: connection lost; reconnecting", timeout=60)
    deadline = time.monotonic() + 60
    while len(b.events("listening for package changes")) < 2:
        assert time.monotonic() < deadline, b.output()
        time.sleep(0.1)

    began = time.monotonic()
    response = call("POST", a, "/v1/packages", content=archives["pricing-subscriber"])
    assert response.status_code == 201
    wait_status(b, "pricing-subscriber", "loaded", timeout=30)
    reconnected_in = time.monotonic() - began

    began = time.monotonic()
    assert call("DELETE", a, "/v1/packages/pricing-subscriber").status_code == 200
    assert call("DELETE", a, "/v1/packages/pricing-publisher").status_code == 200
    deadline = time.monotonic() + 30
    while call("GET", b, "/v1/packages").json()["packages"]:
        assert time.monotonic() < deadline, b.output()
        time.sleep(0.1)
    unloaded_in = time.monotonic() - began
    print(
        f"LISTEN/NOTIFY, poll interval 10 min: the other worker loaded an upload in "
        f"{loaded_in:.2f}s, after its connection was killed {reconnected_in:.2f}s, "
        f"unloaded two deletes in {unloaded_in:.2f}s"
    )
    assert a.stop() == 0
    assert b.stop() == 0


@pytest.mark.kafka
def test_upgrade_under_load_loses_nothing(
    headrace_worker: Any, kafka_topic: Any, tmp_path: Path
) -> None:
    """Messages flow while price-signal 0.1.0 is replaced by 0.2.0: every offset reaches one
    version's graph (0 lost); duplicates are counted and reported."""
    import shutil
    import threading

    books = kafka_topic(3, prefix="pkg-upgrade")
    config = tmp_path / "worker.toml"
    config.write_text(KAFKA_WORKER.split("[accumulators.ticks]")[0].replace("[sinks.log]", ""))
    env = {
        "HEADRACE_TOKEN": TOKEN,
        "GROUP": f"pkg-up-{uuid.uuid4().hex[:8]}",
        "PRICE_ORDERBOOK_TOPIC": books,
        "STATE_DB": str(tmp_path / "state.db"),
    }
    v2 = tmp_path / "v2"
    shutil.copytree(EXAMPLES / "price-signal", v2)
    manifest = v2 / "package.toml"
    manifest.write_text(manifest.read_text().replace('version = "0.1.0"', 'version = "0.2.0"'))
    nodes = v2 / "nodes.py"
    nodes.write_text(
        nodes.read_text().replace('"spread": ask - bid,', '"spread": ask - bid, "v": 2,')
    )
    worker = headrace_worker(config, env=env, cwd=tmp_path, token=TOKEN)
    total = 3_000
    worker.ready(timeout=120)
    first = pack(EXAMPLES / "price-signal", "price-signal", "0.1.0", tmp_path)
    assert call("POST", worker, "/v1/packages", content=first.read_bytes()).status_code == 201
    wait_status(worker, "price-signal", "loaded")

    def produce() -> None:
        for start in range(0, total, 100):
            values = [
                {"symbol": "BTC", "best_bid": 1, "best_ask": 3, "seq": i}
                for i in range(start, start + 100)
            ]
            worker.produce_json(books, values, key=lambda v: str(v["seq"]))
            time.sleep(0.05)

    producer = threading.Thread(target=produce)
    producer.start()
    wait_results(worker, "price_signal", 300)
    second = pack(v2, "price-signal", "0.2.0", tmp_path)
    assert call("POST", worker, "/v1/packages", content=second.read_bytes()).status_code == 201
    upgraded = wait_status(worker, "price-signal", "loaded")
    assert upgraded["version"] == "0.2.0"
    producer.join(timeout=120)
    assert not producer.is_alive()
    deadline = time.monotonic() + 120
    while True:
        seqs = [r["outputs"]["signal"]["seq"] for r in results_of(worker, "price_signal")]
        if set(seqs) >= set(range(total)) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    lost = sorted(set(range(total)) - set(seqs))
    duplicates = len(seqs) - len(set(seqs))
    versions = [
        "0.2.0" if r["outputs"]["signal"].get("v") == 2 else "0.1.0"
        for r in results_of(worker, "price_signal")
    ]
    print(
        f"upgrade under load (real broker): {total} messages, {len(seqs)} results, "
        f"lost {len(lost)}, duplicates {duplicates}, by 0.1.0 {versions.count('0.1.0')}, "
        f"by 0.2.0 {versions.count('0.2.0')}"
    )
    assert lost == [], lost[:20]
    assert versions.count("0.1.0") >= 300 and versions.count("0.2.0") > 0
    assert worker.stop() == 0
