"""Exactly-once with inputs a reactor holds across commits, through a ``headrace run``
worker on a real broker: an unkeyed ``when_all`` waits for each right half while its left
half sits in the cache for several commit intervals.

The commit no longer waits for the held half (it covers the offsets below it), so no commit
runs into ``barrier_timeout`` ("transaction commits with inputs still in flight"), and after
SIGKILLs a ``read_committed`` reader sees no joined pair twice.
"""

from __future__ import annotations

import json
import os
import signal
import textwrap
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka import Producer

from tests.fixtures import REPO_ROOT
from tests.fixtures.kafka_broker import create_topic, unique_topic
from tests.integration.chaos import CliWorker, wait_until
from tests.integration.eos_harness import CommittedRecords

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.timeout(600)]

PAIRS = 40
KILL_AT = (12, 27)
HOLD = 0.6  # seconds a left half waits for its right half: 3 commit intervals
IN_FLIGHT_WARNING = "transaction commits with inputs still in flight"

NODES = '''
"""An unkeyed join of the newest left and right halves."""


def join(lefts: dict, rights: dict) -> dict:
    return {"left": lefts["n"], "right": rights["n"]}
'''

CONFIG = """
modules = [{ name = "held_nodes", path = "." }]

[worker]
bootstrap_servers = "${KAFKA_BOOTSTRAP_SERVERS}"
group_id = "${HELD_GROUP}"
guarantee = "exactly_once"
commit_interval = "200ms"
drain_timeout = "30s"

[worker.transactions]
transactional_id = "${HELD_GROUP}-txn"
barrier_timeout = "3s"

[worker.consumer]
"session.timeout.ms" = 6000

[worker.http]
port = 0

[worker.state_store]
enabled = false

[accumulators.lefts]
kind = "stream"
topic = "${HELD_LEFTS}"

[accumulators.rights]
kind = "stream"
topic = "${HELD_RIGHTS}"

[reactors.pair_rx]
accumulators = ["lefts", "rights"]
mode = "when_all"

[graphs.pairs]
module = "held_nodes"
reactor = "pair_rx"
sinks = ["out"]
topology = { join = { inputs = ["lefts", "rights"] } }

[sinks.out]
type = "kafka"
topic = "${HELD_OUT}"
"""


class Pairs(CommittedRecords):
    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(bootstrap, topic)
        self.pairs: Counter[tuple[int, int]] = Counter()

    def handle(self, msg: object) -> None:
        value = json.loads(msg.value())  # type: ignore[attr-defined]
        joined = value.get("join", value)
        self.pairs[(joined["left"], joined["right"])] += 1


def assigned(worker: CliWorker) -> None:
    """Wait until the current incarnation owns the partitions (the killed one's session
    has timed out)."""
    incarnation = worker.current
    assert incarnation is not None
    incarnation.worker.wait_for_log("partitions assigned", 120)


def test_a_when_all_holding_inputs_across_commits_under_sigkills(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    lefts = create_topic(kafka_bootstrap, unique_topic("held-lefts"), partitions=1)
    rights = create_topic(kafka_bootstrap, unique_topic("held-rights"), partitions=1)
    out = create_topic(kafka_bootstrap, unique_topic("held-out"), partitions=1)
    (tmp_path / "held_nodes.py").write_text(NODES)
    config = tmp_path / "held.toml"
    config.write_text(textwrap.dedent(CONFIG))
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO_ROOT}",
        "HELD_GROUP": f"held-{uuid.uuid4().hex[:8]}",
        "HELD_LEFTS": lefts,
        "HELD_RIGHTS": rights,
        "HELD_OUT": out,
    }
    worker = CliWorker("held", config, env, tmp_path)
    worker.start()
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 0})
    kills = 0
    assigned(worker)
    for i in range(PAIRS):
        producer.produce(lefts, json.dumps({"n": i}).encode())
        producer.flush(10)
        time.sleep(HOLD)  # commits go by while the left half waits
        if i in KILL_AT:  # while the left half is held: it was not committed
            worker.kill()  # SIGKILL: mid-transaction, nothing drained
            worker.start()
            assigned(worker)
            kills += 1
        producer.produce(rights, json.dumps({"n": i}).encode())
        producer.flush(10)
        time.sleep(0.15)
    reader = Pairs(kafka_bootstrap, out)
    try:

        def joined_last() -> bool:
            reader.poll(1.0)
            return any(right == PAIRS - 1 for _, right in reader.pairs)

        wait_until(joined_last, 120, "the last right half joined under read_committed")
        worker.signal(signal.SIGTERM)
        incarnation = worker.current
        assert incarnation is not None
        code = incarnation.proc.wait(120)
        reader.poll(2.0)
    finally:
        reader.close()
    repeated = {pair: n for pair, n in reader.pairs.items() if n > 1}
    warnings = [e for e in worker.events() if str(e.get("event")).startswith(IN_FLIGHT_WARNING)]
    matched = sum(n for (left, right), n in reader.pairs.items() if left == right)
    print(
        f"\nheld when_all exactly-once: {PAIRS} pairs, {kills} SIGKILLs, "
        f"{sum(reader.pairs.values())} outputs ({matched} matched halves), "
        f"repeated {sum(n - 1 for n in repeated.values())}, barrier timeouts {len(warnings)}"
    )
    assert not repeated, f"pairs output more than once: {repeated}"
    assert not warnings, f"commits waited for the held half: {warnings[:2]}"
    assert matched >= PAIRS - 2 * len(KILL_AT), reader.pairs
    assert code == 0, worker.tail()
