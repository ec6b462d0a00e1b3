"""Smoke test: the real Kafka broker and PostgreSQL server fixtures work."""

from __future__ import annotations

import json

import psycopg
import pytest

from tests.fixtures.kafka_broker import consume_all, create_topic, produce_json, unique_topic
from tests.fixtures.postgres_server import libpq_url


@pytest.mark.kafka
def test_kafka_round_trip(kafka_bootstrap: str) -> None:
    topic = create_topic(kafka_bootstrap, unique_topic("smoke"), partitions=3)
    values = [{"n": i, "word": f"w{i}"} for i in range(10)]

    delivered = produce_json(kafka_bootstrap, topic, values, key=lambda v: f"k{v['n']}")

    assert len(delivered) == 10
    records = consume_all(kafka_bootstrap, topic, expected_count=10, timeout=30)
    assert len(records) == 10
    by_key = {key: json.loads(value) for key, value, _, _ in records}
    assert by_key == {f"k{v['n']}".encode(): v for v in values}
    # Each record comes back at the partition/offset the producer was told.
    assert sorted((p, o) for _, _, p, o in records) == sorted(delivered)
    assert {p for _, _, p, _ in records} <= {0, 1, 2}
    assert len({p for _, _, p, _ in records}) > 1, "10 distinct keys all hashed to one partition"


@pytest.mark.postgres
def test_postgres_select_one(postgres_url: str) -> None:
    assert postgres_url.startswith("postgresql+psycopg://")
    with psycopg.connect(libpq_url(postgres_url)) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
        assert conn.execute("select current_database()").fetchone() == ("headrace",)
