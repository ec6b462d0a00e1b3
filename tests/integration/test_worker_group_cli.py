"""Two ``headrace run`` workers in one consumer group, through the CLI only (JSON logs).

Scaling out from one worker to two must keep the whole group consuming and committing,
and a SIGTERM while the group rebalances must exit 0 and leave the group at once (the
other worker takes over well before the session timeout), with nothing lost.
"""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.kafka_broker import committed_offsets
from tests.integration.kafka_harness import (
    OutputReader,
    PacedProducer,
    end_offsets,
    topics_and_group,
)
from tests.integration.test_worker_cli import WorkerProcess, workers  # noqa: F401 (fixture)

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(300)]

SESSION_TIMEOUT = 60.0
"""Long on purpose: a worker that leaves without LeaveGroup keeps its partitions this long."""

NODES = '''
"""Node functions of the group test config."""


def signal(books):
    return {"id": books["id"]}
'''

CONFIG = """
modules = [{ name = "hr_group_nodes", path = "." }]

[worker]
bootstrap_servers = "${KAFKA_BOOTSTRAP_SERVERS}"
group_id = "${GROUP}"
commit_interval = "${COMMIT_INTERVAL:-200ms}"
drain_timeout = "30s"

[worker.consumer]
"session.timeout.ms" = @SESSION_MS@
"heartbeat.interval.ms" = 100

[worker.http]
port = 0

[worker.state_store]
url = "${STORE_URL}"

[accumulators.books]
kind = "stream"
topic = "${IN_TOPIC}"

[reactors.books_rx]
accumulators = ["books"]
strategy = "sequential"

[graphs.signals]
module = "hr_group_nodes"
reactor = "books_rx"
sinks = ["out"]
topology = { signal = { inputs = ["books"] } }

[sinks.out]
type = "kafka"
topic = "${OUT_TOPIC}"
""".replace("@SESSION_MS@", str(int(SESSION_TIMEOUT * 1000)))


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def events_in(base: str) -> int:
    response = httpx.get(f"{base}/v1/health/accumulators", timeout=10)
    return int(response.json()["books"]["events_in"])


def _partition_names(logged: list[Any]) -> set[str]:
    return {p if isinstance(p, str) else f"{p[0]}[{p[1]}]" for p in logged}


def assigned(worker: WorkerProcess) -> set[str]:
    """The partitions the worker holds now, from its assign/revoke log lines."""
    held: set[str] = set()
    for line in list(worker.lines):
        if line.get("event") == "partitions assigned":
            held |= _partition_names(line["partitions"])
        elif line.get("event") in ("partitions revoked", "partitions lost"):
            held -= _partition_names(line["partitions"])
    return held


def committed_to_end(bootstrap: str, group: str, topic: str) -> bool:
    ends = end_offsets(bootstrap, topic)
    committed = committed_offsets(bootstrap, group, topic)
    return {p: committed.get(p, 0) for p in ends} == ends


class Group:
    """The config, environment and workers of one test."""

    def __init__(
        self,
        bootstrap: str,
        tmp_path: Path,
        start: Callable[..., WorkerProcess],
        prefix: str,
        partitions: int = 4,
    ) -> None:
        (tmp_path / "hr_group_nodes.py").write_text(NODES)
        self.config = tmp_path / "group.toml"
        self.config.write_text(CONFIG)
        self.bootstrap = bootstrap
        self.tmp_path = tmp_path
        self.start_process = start
        self.in_topic, self.out_topic, self.group = topics_and_group(
            bootstrap, prefix, partitions=partitions
        )

    def start(self, **extra: str) -> WorkerProcess:
        env = {
            **extra,
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "GROUP": self.group,
            "IN_TOPIC": self.in_topic,
            "OUT_TOPIC": self.out_topic,
            "STORE_URL": f"sqlite:///{self.tmp_path / f'state-{uuid.uuid4().hex[:6]}.db'}",
        }
        return self.start_process([self.config], env, self.tmp_path)

    def committed_to_end(self) -> bool:
        return committed_to_end(self.bootstrap, self.group, self.in_topic)


def assert_json_lines(*processes: WorkerProcess) -> None:
    for process in processes:
        assert len(process.lines) == len([r for r in process.raw if r.strip()]), (
            "a stdout line is not JSON:\n" + process.output()
        )
        assert not process.events("component failed"), process.output()


def test_scaling_from_one_to_two_workers_keeps_the_group_consuming_and_committing(
    kafka_bootstrap: str,
    tmp_path: Path,
    workers: Callable[..., WorkerProcess],  # noqa: F811
) -> None:
    total = 6_000
    group = Group(kafka_bootstrap, tmp_path, workers, "scale")
    feed = PacedProducer(kafka_bootstrap, group.in_topic, range(total), rate=250)
    reader = OutputReader(kafka_bootstrap, group.out_topic)
    first = group.start()
    try:
        base_a = first.ready()
        wait_until(lambda: len(assigned(first)) == 4, 60, "the first worker's assignment")
        feed.start()
        wait_until(lambda: events_in(base_a) >= 500, 60, "the first worker consuming")
        second = group.start()
        base_b = second.ready()
        wait_until(lambda: assigned(second), 60, "a partition for the second worker")
        a_at_join = events_in(base_a)
        wait_until(lambda: events_in(base_b) >= 200, 60, "the second worker consuming")
        wait_until(
            lambda: events_in(base_a) >= a_at_join + 200, 60, "the first worker consuming still"
        )
        assert first.events("partitions revoked"), "the join rebalanced no partition of the first"
        feed.finish(timeout=180)
        reader.wait_for(set(range(total)), timeout=120)
        wait_until(group.committed_to_end, 60, "the group committing to the end")
        assert first.stop() == 0, first.output()
        assert second.stop() == 0, second.output()
        reader.poll(0.5)
        duplicates = reader.duplicates()
    finally:
        if feed.ident is not None:
            feed.stop()
        reader.close()
    assert_json_lines(first, second)
    split = (events_in_total(first), events_in_total(second))
    print(f"\nscale-out: {total} inputs, consumed {split}, {duplicates} duplicates")
    assert all(split)


def events_in_total(worker: WorkerProcess) -> int:
    """Messages the worker's Kafka source took, from its closing log line."""
    (closed,) = worker.events("kafka source closed")
    return int(closed["messages"])


def test_sigterm_during_the_rebalance_of_a_joining_worker_exits_0_and_leaves_the_group(
    kafka_bootstrap: str,
    tmp_path: Path,
    workers: Callable[..., WorkerProcess],  # noqa: F811
) -> None:
    total = 4_000
    group = Group(kafka_bootstrap, tmp_path, workers, "term-rebalance")
    feed = PacedProducer(kafka_bootstrap, group.in_topic, range(total), rate=250)
    reader = OutputReader(kafka_bootstrap, group.out_topic)
    first = group.start(COMMIT_INTERVAL="60s")  # offsets wait for the revoke or final commit
    try:
        base_a = first.ready()
        wait_until(lambda: len(assigned(first)) == 4, 60, "the first worker's assignment")
        feed.start()
        wait_until(lambda: events_in(base_a) >= 300, 60, "the first worker consuming")
        second = group.start()
        second.wait_for("kafka source started", 60)  # joining: the group rebalances now
        time.sleep(0.3)  # the first worker's heartbeat (100 ms) learns of the rebalance
        first.send(signal.SIGTERM)
        stopped_at = time.monotonic()
        assert first.wait(60) == 0, first.output()
        wait_until(lambda: len(assigned(second)) == 4, SESSION_TIMEOUT / 2, "a full takeover")
        takeover = time.monotonic() - stopped_at
        feed.finish(timeout=180)
        reader.wait_for(set(range(total)), timeout=120)
        wait_until(group.committed_to_end, 60, "the group committing to the end")
        assert second.stop() == 0, second.output()
        reader.poll(0.5)
        duplicates = reader.duplicates()
    finally:
        if feed.ident is not None:
            feed.stop()
        reader.close()
    assert_json_lines(first, second)
    assert first.events("kafka source closed"), "the first worker never closed its consumer"
    print(
        f"\nSIGTERM in a rebalance: exit 0, takeover {takeover:.1f}s (session timeout "
        f"{SESSION_TIMEOUT:.0f}s), {duplicates} duplicates; commit failures of the "
        f"first: {first.events('kafka source closed')[0]['commit_failures']}; "
        f"commit failed lines: {[e.get('error') for e in first.events('commit failed')]}"
    )
