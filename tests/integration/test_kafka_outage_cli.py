"""The broker is away for longer than ``message.timeout.ms`` while results are in flight.

Through ``headrace run`` (JSON logs) against a private broker that is killed and started
again while the worker is behind its input (a slow node), so results are in flight:
deliveries time out (``_MSG_TIMED_OUT``) and are sent again with backoff while the inputs'
offsets are held; once the broker is back every result reaches the output topic, nothing
is dead-lettered, the group commits to the end, and SIGTERM exits 0.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.fixtures.kafka_broker import create_topic, unique_topic
from tests.integration.kafka_harness import (
    OutputReader,
    PacedProducer,
    assert_committed_to_end,
    end_offsets,
)
from tests.integration.test_kafka_broker_restart import (  # noqa: F401 (fixture)
    PrivateBroker,
    private_broker,
)
from tests.integration.test_worker_cli import WorkerProcess, workers  # noqa: F401 (fixture)
from tests.integration.test_worker_group_cli import wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(300)]

MESSAGE_TIMEOUT_MS = 1500
OUTAGE_SECONDS = 6.0  # four times message.timeout.ms
NODE_SECONDS = 0.005
"""The node's time per input: the worker keeps up with 200/s against a 300/s feed, so a
backlog of fetched inputs is still being turned into results when the broker dies, and
those results are in flight for the whole outage (a fast worker has almost none)."""

NODES = f'''
"""Node functions of the outage test config: one slow node, run off the event loop."""

import time


def signal(books):
    time.sleep({NODE_SECONDS})
    return {{"id": books["id"]}}
'''

CONFIG = """
modules = [{ name = "hr_group_nodes", path = "." }]

[worker]
bootstrap_servers = "${KAFKA_BOOTSTRAP_SERVERS}"
group_id = "${GROUP}"
commit_interval = "200ms"
drain_timeout = "30s"

[worker.producer]
"message.timeout.ms" = @TIMEOUT_MS@

[worker.http]
port = 0

[worker.state_store]
url = "${STORE_URL}"

[worker.dead_letters]
execution_topic = "${DLQ_TOPIC}"

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
topology = { signal = { inputs = ["books"], thread = true } }

[sinks.out]
type = "kafka"
topic = "${OUT_TOPIC}"
""".replace("@TIMEOUT_MS@", str(MESSAGE_TIMEOUT_MS))


def test_results_in_flight_during_a_broker_outage_all_arrive_none_dead_lettered(
    private_broker: PrivateBroker,  # noqa: F811
    tmp_path: Path,
    workers: Callable[..., WorkerProcess],  # noqa: F811
) -> None:
    total = 3_000
    bootstrap = private_broker.bootstrap
    in_topic = create_topic(bootstrap, unique_topic("outage-in"), partitions=3)
    out_topic = create_topic(bootstrap, unique_topic("outage-out"), partitions=3)
    dlq_topic = create_topic(bootstrap, unique_topic("outage-dlq"), partitions=1)
    group = f"outage-{uuid.uuid4().hex[:8]}"
    (tmp_path / "hr_group_nodes.py").write_text(NODES)
    config = tmp_path / "outage.toml"
    config.write_text(CONFIG)
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "GROUP": group,
        "IN_TOPIC": in_topic,
        "OUT_TOPIC": out_topic,
        "DLQ_TOPIC": dlq_topic,
        "STORE_URL": f"sqlite:///{tmp_path / 'state.db'}",
    }
    worker = workers([config], env, tmp_path)
    feed = PacedProducer(bootstrap, in_topic, range(total), rate=300)
    reader: OutputReader | None = None
    try:
        base = worker.ready()
        feed.start()

        def taken() -> int:
            response = httpx.get(f"{base}/v1/health/accumulators", timeout=10)
            return int(response.json()["books"]["events_in"])

        wait_until(lambda: taken() >= 500, 60, "the worker consuming")
        private_broker.kill()
        time.sleep(OUTAGE_SECONDS)
        assert worker.proc.poll() is None, worker.output()
        private_broker.revive()
        feed.finish(timeout=180)
        reader = OutputReader(bootstrap, out_topic)
        reader.wait_for(set(range(total)), timeout=120)
        wait_until(lambda: _committed_to_end(bootstrap, group, in_topic), 60, "commits to the end")
        graphs = httpx.get(f"{base}/v1/health/graphs", timeout=10).json()
        assert worker.stop() == 0, worker.output()
        reader.poll(0.5)
        duplicates = reader.duplicates()
    finally:
        if feed.ident is not None:
            feed.stop()
        if reader is not None:
            reader.close()
    retried = worker.events("sink delivery failed; retrying")
    print(
        f"\noutage: broker down {OUTAGE_SECONDS:.0f}s (message.timeout.ms "
        f"{MESSAGE_TIMEOUT_MS}); {len(retried)} deliveries sent again, {total} inputs, "
        f"{duplicates} duplicates, redeliveries {graphs['signals']['redeliveries']}"
    )
    assert retried, "no delivery timed out: the outage proved nothing"
    assert worker.events("dead letter") == [], worker.output()
    assert sum(end_offsets(bootstrap, dlq_topic).values()) == 0
    assert graphs["signals"]["failures"] == 0
    assert_committed_to_end(bootstrap, group, in_topic)


def _committed_to_end(bootstrap: str, group: str, topic: str) -> bool:
    try:
        assert_committed_to_end(bootstrap, group, topic)
    except AssertionError:
        return False
    return True
