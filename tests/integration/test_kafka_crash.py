"""At-least-once across crashes: SIGKILL a worker repeatedly while order books flow."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest

from tests.integration.kafka_harness import (
    OutputReader,
    PacedProducer,
    Worker,
    assert_committed_to_end,
    finish_run,
    topics_and_group,
)

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(240)]

TOTAL = 24_000
RATE = 2_000  # order books per second from the producer
KILLS = 5
# What the worker may have taken without committing when it dies, per kill: a commit
# interval's worth at its capped rate, a fetched batch, a full channel, results in flight.
SETTINGS = {
    "commit_interval": 0.2,
    "batch_size": 200,
    "channel_size": 256,
    "max_rate": 5_000,
}
IN_FLIGHT_PER_KILL = int(
    SETTINGS["max_rate"] * SETTINGS["commit_interval"]
    + SETTINGS["batch_size"]
    + SETTINGS["channel_size"]
    + 250
)


def test_sigkill_repeatedly_loses_nothing(kafka_bootstrap: str, tmp_path: Path) -> None:
    seed = int(os.environ.get("HEADRACE_CRASH_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    input_topic, output_topic, group = topics_and_group(kafka_bootstrap, "crash")
    consumer = {"group.instance.id": f"{group}-member", "session.timeout.ms": 6000}
    worker = Worker(
        kafka_bootstrap,
        input_topic,
        output_topic,
        group,
        tmp_path,
        consumer_config=consumer,
        **SETTINGS,
    )
    feed = PacedProducer(kafka_bootstrap, input_topic, range(TOTAL), RATE)
    reader = OutputReader(kafka_bootstrap, output_topic)
    kills = 0
    taken_at_kill: list[int] = []
    try:
        feed.start()
        while kills < KILLS or (feed.is_alive() and kills < 2 * KILLS):
            worker.start().wait_assigned(60)
            time.sleep(rng.uniform(0.2, 1.5))
            health = worker.health() or {"source": {"messages": -1}}
            worker.kill()
            kills += 1
            taken_at_kill.append(health["source"]["messages"])
        assert feed.is_alive() or kills >= KILLS
        finish_run(worker, feed, reader, TOTAL, timeout=120)
    finally:
        feed.stop()
        worker.close()
        reader.close()

    duplicates = reader.duplicates()
    bound = kills * IN_FLIGHT_PER_KILL
    print(
        f"\ncrash test (seed {seed}): {TOTAL} inputs, {kills} SIGKILLs, {reader.records} "
        f"outputs, {duplicates} duplicates ({duplicates / kills:.0f} per kill; bound {bound}); "
        f"messages taken by each killed worker: {taken_at_kill}"
    )
    assert set(reader.ids) == set(range(TOTAL))
    assert duplicates <= bound, f"{duplicates} duplicates exceed the in-flight bound {bound}"
    assert_committed_to_end(kafka_bootstrap, group, input_topic)
