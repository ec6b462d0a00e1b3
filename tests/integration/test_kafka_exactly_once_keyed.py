"""Keyed exactly-once through ``headrace run`` workers on a real broker: a keyed
``when_all`` join whose changelog writes commit in the worker's Kafka transaction.

Two worker slots in one group join ``lefts`` and ``rights`` by ``id`` (a keyed
``when_all``); each right value arrives well after its left one, so most lefts wait in the
keyed cache (and in the changelog) across many commits. Workers are SIGKILLed at random
moments and restarted. A ``read_committed`` reader of the output then sees every id
exactly once, each joined with its own left value (``left == right``): the left came back
from the committed changelog after a takeover, and no fire repeated.

``make test`` runs the short size; ``HEADRACE_SOAK=long`` (``make soak``) the long one.
"""

from __future__ import annotations

import json
import os
import random
import signal
import textwrap
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka import Producer

from tests.fixtures import REPO_ROOT
from tests.fixtures.kafka_broker import create_topic, unique_topic
from tests.integration.chaos import CliWorker, wait_until
from tests.integration.eos_harness import CommittedRecords


@dataclass(frozen=True)
class KeyedCrashSize:
    pairs: int
    rate: float
    lag: int
    kills: int
    timeout: float


SIZES = {
    "short": KeyedCrashSize(pairs=1_200, rate=120, lag=150, kills=3, timeout=420),
    "long": KeyedCrashSize(pairs=12_000, rate=120, lag=400, kills=20, timeout=2_400),
}
SIZE = os.environ.get("HEADRACE_SOAK", "short").strip().lower() or "short"
CRASH = SIZES.get(SIZE, SIZES["short"])

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.timeout(CRASH.timeout + 300)]

NODES = '''
"""A keyed join of two halves by id."""


def join(lefts: dict, rights: dict, key: str) -> dict:
    return {"id": key, "left": lefts["n"], "right": rights["n"]}
'''

CONFIG = """
modules = [{ name = "pairs_nodes", path = "." }]

[worker]
bootstrap_servers = "${KAFKA_BOOTSTRAP_SERVERS}"
group_id = "${PAIRS_GROUP}"
guarantee = "exactly_once"
commit_interval = "200ms"
drain_timeout = "30s"

[worker.transactions]
transactional_id = "${PAIRS_TXN_ID}"

[worker.consumer]
"session.timeout.ms" = 6000
"heartbeat.interval.ms" = 1000

[worker.http]
port = 0

[worker.state_store]
enabled = false

[accumulators.lefts]
kind = "stream"
topic = "${PAIRS_LEFTS}"
key = "id"

[accumulators.rights]
kind = "stream"
topic = "${PAIRS_RIGHTS}"
key = "id"

[reactors.pairs_rx]
accumulators = ["lefts", "rights"]
mode = "when_all"
keyed = true
max_concurrency = 4

[graphs.pairs]
module = "pairs_nodes"
reactor = "pairs_rx"
sinks = ["out"]
topology = { join = { inputs = ["lefts", "rights"] } }

[sinks.out]
type = "kafka"
topic = "${PAIRS_OUT}"
"""


class CommittedJoins(CommittedRecords):
    """The joined outputs a read_committed reader sees: ``{id: [(left, right), ...]}``."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(bootstrap, topic)
        self.seen: dict[str, list[tuple[int, int]]] = {}

    def handle(self, msg: object) -> None:
        value = json.loads(msg.value())  # type: ignore[attr-defined]
        joined = value.get("join", value)
        self.seen.setdefault(joined["id"], []).append((joined["left"], joined["right"]))


def test_keyed_when_all_under_exactly_once_survives_sigkills(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Every id joined exactly once, with its own left value, after ``CRASH.kills``
    SIGKILLs of the workers holding the keyed state."""
    lefts = create_topic(kafka_bootstrap, unique_topic("lefts"), partitions=2)
    rights = create_topic(kafka_bootstrap, unique_topic("rights"), partitions=2)
    out = create_topic(kafka_bootstrap, unique_topic("pairs-out"), partitions=2)
    group = f"pairs-{uuid.uuid4().hex[:8]}"
    (tmp_path / "pairs_nodes.py").write_text(NODES)
    config = tmp_path / "pairs.toml"
    config.write_text(textwrap.dedent(CONFIG))
    base = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO_ROOT}",
        "PAIRS_GROUP": group,
        "PAIRS_LEFTS": lefts,
        "PAIRS_RIGHTS": rights,
        "PAIRS_OUT": out,
    }
    slots = [
        CliWorker(f"pairs-{s}", config, {**base, "PAIRS_TXN_ID": f"{group}-{s}"}, tmp_path)
        for s in ("a", "b")
    ]
    for slot in slots:
        slot.start()
    for slot in slots:
        slot.wait_ready(120)

    rng = random.Random(12)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 5})
    total = CRASH.pairs + CRASH.lag
    kill_at = sorted(rng.sample(range(CRASH.lag, total), CRASH.kills))
    kills = 0
    started = time.monotonic()
    for step in range(total):
        if step < CRASH.pairs:
            body = {"id": f"k{step}", "n": step}
            producer.produce(lefts, json.dumps(body).encode(), f"k{step}".encode())
        if step >= CRASH.lag:
            i = step - CRASH.lag
            body = {"id": f"k{i}", "n": i}
            producer.produce(rights, json.dumps(body).encode(), f"k{i}".encode())
        producer.poll(0)
        if kills < len(kill_at) and step == kill_at[kills]:
            slot = slots[rng.randrange(len(slots))]
            if slot.alive():
                slot.kill()  # SIGKILL: mid-transaction, nothing drained
            slot.start()
            kills += 1
        pause = started + (step + 1) / CRASH.rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)
    assert producer.flush(60) == 0, "inputs not all produced"

    reader = CommittedJoins(kafka_bootstrap, out)
    try:

        def all_joined() -> bool:
            failed = [e for s in slots for e in s.events("graph execution failed")]
            assert not failed, f"the join failed: {failed[:2]}"
            reader.poll(1.0)
            return len(reader.seen) >= CRASH.pairs

        wait_until(all_joined, CRASH.timeout, f"{CRASH.pairs} ids joined under read_committed")
        codes = []
        for slot in slots:
            if slot.alive():
                slot.signal(signal.SIGTERM)
        for slot in slots:
            incarnation = slot.current
            assert incarnation is not None
            codes.append(incarnation.proc.wait(120))
        reader.poll(3.0)  # anything committed late (a repeat) shows up too
    finally:
        reader.close()
    counts = Counter({key: len(joins) for key, joins in reader.seen.items()})
    duplicates = sum(n - 1 for n in counts.values() if n > 1)
    lost = [f"k{i}" for i in range(CRASH.pairs) if f"k{i}" not in reader.seen]
    wrong = {k: j for k, j in reader.seen.items() if any(a != b or f"k{a}" != k for a, b in j)}
    restored = sum(e["keys"] for s in slots for e in s.events("keyed state restored"))
    aborted = sum(len(s.events("keyed state reloads after an abort")) for s in slots)
    print(
        f"\nkeyed exactly-once ({SIZE}): {CRASH.pairs} pairs, {kills} SIGKILLs, "
        f"lost {len(lost)}, duplicates {duplicates}, wrong joins {len(wrong)}, "
        f"keys restored on takeover {restored}, reloads after aborts {aborted}"
    )
    assert not lost, f"{len(lost)} ids never joined: {lost[:10]}"
    assert duplicates == 0, f"{duplicates} repeated joins: {counts.most_common(5)}"
    assert not wrong, f"joined with the wrong state: {list(wrong.items())[:5]}"
    assert restored > 0, "no takeover restored keyed state: the kills proved nothing"
    assert codes == [0, 0], [slot.tail() for slot in slots]
