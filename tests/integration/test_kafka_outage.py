"""Kafka away for longer than ``message.timeout.ms`` while outputs are pending: nothing is lost.

One ``headrace run`` worker (JSON logs) on a broker of the test's own, with the producer's
``message.timeout.ms`` set to 5 s. The graph is slowed down so that thousands of inputs
are still being turned into outputs when the broker is SIGKILLed; it stays down for
three message timeouts, so every output queued meanwhile times out in librdkafka
(``_MSG_TIMED_OUT``). When the broker is back, every output must reach the output topic —
not the execution dead letters — the group must commit to the end, and SIGTERM exit 0.
"""

from __future__ import annotations

import signal
import time
import uuid
from pathlib import Path

import pytest

from tests.fixtures.kafka_broker import create_topic, unique_topic
from tests.integration.chaos import (
    CliWorker,
    SignalReader,
    own_broker,
    wait_committed_to_end,
    wait_until,
    write_soak_app,
)
from tests.integration.kafka_harness import end_offsets, produce_books

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.timeout(420)]

MESSAGE_TIMEOUT_MS = 5_000
DOWN_SECONDS = 3 * MESSAGE_TIMEOUT_MS / 1000
INPUTS = 3_000
NODE_DELAY = 0.004  # seconds per input: ~12 s of work, most of it while the broker is down


def test_outputs_pending_through_an_outage_longer_than_message_timeout(tmp_path: Path) -> None:
    with own_broker() as broker:
        bootstrap = broker.bootstrap
        in_topic = create_topic(bootstrap, unique_topic("outage-in"), partitions=3)
        out_topic = create_topic(bootstrap, unique_topic("outage-out"), partitions=3)
        create_topic(bootstrap, f"{in_topic}.dlq", partitions=1)
        execution_dlq = create_topic(bootstrap, unique_topic("outage-exec-dlq"), partitions=1)
        group = f"outage-{uuid.uuid4().hex[:8]}"
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "SOAK_GROUP": group,
            "SOAK_IN_TOPIC": in_topic,
            "SOAK_OUT_TOPIC": out_topic,
            "SOAK_EXECUTION_DLQ": execution_dlq,
            "SOAK_MESSAGE_TIMEOUT_MS": str(MESSAGE_TIMEOUT_MS),
            "SOAK_NODE_DELAY": str(NODE_DELAY),
            # the member outlives the outage: its partitions are not lost and re-read, so
            # what it had in hand must be delivered by the worker itself
            "SOAK_SESSION_TIMEOUT_MS": "180000",
        }
        worker = CliWorker("outage", write_soak_app(tmp_path), env, tmp_path)
        reader: SignalReader | None = None
        try:
            worker.start()
            worker.wait_ready(90)
            wait_until(
                lambda: worker.events("partitions assigned"), 60, "the worker's first assignment"
            )
            produce_books(bootstrap, in_topic, range(INPUTS))
            reader = SignalReader(bootstrap, out_topic)
            wait_until(
                lambda: reader.poll(0.2) or len(reader.ids) >= 200, 60, "the first 200 outputs"
            )
            before = len(reader.ids)
            broker.kill()
            killed_at = time.monotonic()
            time.sleep(DOWN_SECONDS)
            assert worker.alive(), f"the worker died while the broker was down:\n{worker.tail()}"
            broker.revive()
            downtime = time.monotonic() - killed_at
            back_at = time.monotonic()
            reader.wait_for(set(range(INPUTS)), timeout=120)
            outputs_seconds = time.monotonic() - back_at
            commit_seconds = wait_committed_to_end(bootstrap, group, in_topic, 60)
            assert worker.alive(), worker.tail()
            incarnation = worker.signal(signal.SIGTERM)
            code = incarnation.proc.wait(60)
            reader.poll(1.0)
            letters = sum(end_offsets(bootstrap, execution_dlq).values())
        finally:
            worker.close()
            if reader is not None:
                reader.close()

    given_up = [e for e in worker.events("dead letter") if e.get("kind") == "execution"]
    lost_partitions = len(worker.events("partitions lost"))
    timeouts = sum(
        1
        for line in worker.events()
        if "_MSG_TIMED_OUT" in str(line) or "timed out" in str(line.get("error", ""))
    )
    print(
        f"\nOUTAGE: broker down {downtime:.1f}s (message.timeout.ms={MESSAGE_TIMEOUT_MS}) with "
        f"{INPUTS - before} of {INPUTS} outputs pending; all {len(reader.ids)} outputs "
        f"{outputs_seconds:.1f}s after it came back, duplicates={reader.duplicates()}, "
        f"execution dead letters={letters} (logged {len(given_up)}), partitions lost="
        f"{lost_partitions}, commit to end {commit_seconds:.1f}s after the "
        f"outputs, log lines naming timed-out deliveries={timeouts}, SIGTERM exit {code}"
    )
    assert before < INPUTS // 2, f"{before} outputs before the outage: none was left pending"
    assert letters == 0, f"{letters} outputs were dead-lettered because Kafka was away"
    assert not given_up, f"{len(given_up)} outputs given up on: {given_up[0]['reason']}"
    assert code == 0, worker.tail()
