"""Two workers in one consumer group share the partitions; one dies, the other takes over."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from tests.fixtures.kafka_broker import create_topic, unique_topic
from tests.integration.kafka_harness import (
    OutputReader,
    PacedProducer,
    Worker,
    assert_committed_to_end,
)

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(180)]

PARTITIONS = 6


def test_two_workers_split_partitions_and_survive_a_kill(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    total = 12_000
    input_topic = create_topic(kafka_bootstrap, unique_topic("group-in"), partitions=PARTITIONS)
    output_topic = create_topic(kafka_bootstrap, unique_topic("group-out"), partitions=3)
    group = f"group-{uuid.uuid4().hex[:8]}"
    settings = {
        "consumer_config": {"session.timeout.ms": 6000, "heartbeat.interval.ms": 500},
        "commit_interval": 0.2,
    }
    first = Worker(kafka_bootstrap, input_topic, output_topic, group, tmp_path, **settings)
    second = Worker(kafka_bootstrap, input_topic, output_topic, group, tmp_path, **settings)
    feed = PacedProducer(kafka_bootstrap, input_topic, range(total), rate=1_500)
    reader = OutputReader(kafka_bootstrap, output_topic)
    try:
        first.start().wait_assigned(60)
        feed.start()
        second.start().wait_assigned(60)

        def split(h: dict) -> bool:
            return 0 < len(h["source"]["assigned"]) < PARTITIONS

        a = first.wait_for(split, 60, "a share of the partitions")
        b = second.wait_for(split, 60, "a share of the partitions")
        shares = (set(a["source"]["assigned"]), set(b["source"]["assigned"]))
        assert not shares[0] & shares[1], f"both workers own {shares[0] & shares[1]}"
        assert len(shares[0] | shares[1]) == PARTITIONS
        b = second.wait_for(lambda h: h["source"]["messages"] > 0, 30, "messages")
        time.sleep(0.5)

        first.kill()
        killed_at = time.monotonic()
        taken = second.wait_for(
            lambda h: len(h["source"]["assigned"]) == PARTITIONS, 60, "all partitions"
        )
        takeover = time.monotonic() - killed_at
        feed.finish()
        reader.wait_for(set(range(total)), timeout=90)
        assert second.terminate() == 0, second.tail()
        reader.poll(0.5)
    finally:
        feed.stop()
        first.close()
        second.close()
        reader.close()
    print(
        f"\ntwo workers: shares {sorted(map(len, shares))}, takeover after {takeover:.1f}s, "
        f"{reader.records} outputs for {total} inputs, {reader.duplicates()} duplicates"
    )
    assert taken["source"]["rebalances"] >= 2
    assert set(reader.ids) == set(range(total))
    assert_committed_to_end(kafka_bootstrap, group, input_topic)
