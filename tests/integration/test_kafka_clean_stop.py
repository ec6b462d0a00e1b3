"""SIGTERM drains: stop fetching, finish in flight, commit, leave; a restart repeats nothing."""

from __future__ import annotations

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

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(180)]


def test_sigterm_then_restart_has_no_duplicates(kafka_bootstrap: str, tmp_path: Path) -> None:
    total = 8_000
    input_topic, output_topic, group = topics_and_group(kafka_bootstrap, "stop")
    # A slow-ish graph keeps the channel busy, so SIGTERM lands with events in flight.
    worker = Worker(kafka_bootstrap, input_topic, output_topic, group, tmp_path, max_rate=2_000)
    feed = PacedProducer(kafka_bootstrap, input_topic, range(total), rate=4_000)
    reader = OutputReader(kafka_bootstrap, output_topic)
    stops = 0
    in_flight_at_stop: list[int] = []
    try:
        feed.start()
        for _ in range(2):
            worker.start().wait_assigned(60)
            health = worker.wait_for(lambda h: h["source"]["messages"] >= 1_500, 60, "progress")
            in_flight_at_stop.append(health["source"]["in_flight"])
            assert worker.terminate() == 0, worker.tail()
            stops += 1
        finish_run(worker, feed, reader, total, timeout=90)
    finally:
        feed.stop()
        worker.close()
        reader.close()
    print(
        f"\nclean stop: {stops} SIGTERM restarts with {in_flight_at_stop} events in flight, "
        f"{reader.records} outputs for {total} inputs"
    )
    assert any(in_flight_at_stop), "SIGTERM never landed while events were in flight"
    assert reader.duplicates() == 0, f"{reader.duplicates()} duplicates after clean stops"
    assert set(reader.ids) == set(range(total))
    assert_committed_to_end(kafka_bootstrap, group, input_topic)
