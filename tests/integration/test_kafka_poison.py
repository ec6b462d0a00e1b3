"""Poison messages: every bad one reaches the dead-letter topic with its reason, the rest flow."""

from __future__ import annotations

import random
import uuid
from pathlib import Path
from typing import Any

import orjson
import pydantic
import pytest
from confluent_kafka import Consumer, KafkaError, TopicPartition
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.fixtures.kafka_broker import (
    create_topic,
    partitions_of,
    unique_topic,
)
from tests.integration.kafka_harness import (
    OutputReader,
    Worker,
    assert_committed_to_end,
    book,
    produce_raw,
)
from tests.integration.worker_app import OrderBook

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(240)]

MAX_MESSAGE_BYTES = 50_000
FIELDS = list(OrderBook.model_fields)


def rejected(raw: bytes | None) -> bool:
    """The worker's own rules: decodable JSON, an OrderBook, and not a crossed book."""
    if raw is None or len(raw) > MAX_MESSAGE_BYTES:
        return True
    try:
        parsed = OrderBook.model_validate(orjson.loads(raw))
    except (orjson.JSONDecodeError, pydantic.ValidationError):
        return True
    return parsed.ask < parsed.bid


def not_json(raw: bytes) -> bool:
    try:
        orjson.loads(raw)
    except orjson.JSONDecodeError:
        return True
    return False


text = st.text(st.characters(exclude_categories=("Cs",)), max_size=20)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=8,
)
random_bytes = st.binary(max_size=300).filter(not_json)
truncated_json = st.integers(0, 10**6).flatmap(
    lambda i: st.integers(1, len(orjson.dumps(book(i))) - 1).map(
        lambda cut, i=i: orjson.dumps(book(i))[:cut]
    )
)
wrong_types = st.integers(0, 10**6).flatmap(
    lambda i: st.dictionaries(st.sampled_from(FIELDS), json_values, min_size=1).map(
        lambda bad, i=i: orjson.dumps({**book(i), **bad})
    )
)
missing_fields = st.integers(0, 10**6).flatmap(
    lambda i: st.sets(st.sampled_from(FIELDS), min_size=1).map(
        lambda gone, i=i: orjson.dumps({k: v for k, v in book(i).items() if k not in gone})
    )
)
not_an_object = json_values.filter(lambda v: not isinstance(v, dict)).map(orjson.dumps)
crossed = st.integers(0, 10**6).map(
    lambda i: orjson.dumps({**book(i), "ask": book(i)["bid"] - 1.0})
)
huge = st.integers(MAX_MESSAGE_BYTES + 1, 300_000).map(
    lambda size: orjson.dumps({**book(7), "pad": "x" * size})
)
bad_messages = st.one_of(
    random_bytes,
    truncated_json,
    wrong_types,
    missing_fields,
    not_an_object,
    crossed,
    st.just(None),
    huge,
).filter(rejected)


def generate(strategy: st.SearchStrategy[Any], count: int) -> list[Any]:
    found: list[Any] = []

    @settings(
        max_examples=count,
        database=None,
        phases=[Phase.generate],
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(value: Any) -> None:
        found.append(value)

    collect()
    return found


def read_dead_letters(bootstrap: str, topic: str, expected: int) -> list[Any]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"dlq-reader-{uuid.uuid4().hex[:6]}",
            "enable.auto.commit": False,
        }
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions_of(bootstrap, topic)])
    records = []
    try:
        for _ in range(600):
            for msg in consumer.consume(1000, 0.1):
                if msg.error() is None:
                    records.append(msg)
                elif msg.error().code() != KafkaError._PARTITION_EOF:
                    raise AssertionError(msg.error())
            if len(records) >= expected:
                break
    finally:
        consumer.close()
    return records


def test_poison_messages_are_dead_lettered(kafka_bootstrap: str, tmp_path: Path) -> None:
    bad = generate(bad_messages, 2_500)
    huge_count = sum(1 for raw in bad if raw is not None and len(raw) > MAX_MESSAGE_BYTES)
    bad += [None] * 20 + [orjson.dumps({**book(3), "pad": "y" * 100_000})] * 10
    good_ids = list(range(2_500))
    messages: list[tuple[bytes | None, bytes | None, int | None]] = [
        (str(i).encode(), orjson.dumps(book(i)), i) for i in good_ids
    ] + [(None, raw, None) for raw in bad]
    random.Random(7).shuffle(messages)

    input_topic = create_topic(kafka_bootstrap, unique_topic("poison-in"), partitions=3)
    dlq_topic = create_topic(kafka_bootstrap, f"{input_topic}.dlq", partitions=1)
    output_topic = create_topic(kafka_bootstrap, unique_topic("poison-out"), partitions=3)
    group = f"poison-{uuid.uuid4().hex[:8]}"
    positions = produce_raw(kafka_bootstrap, input_topic, ((k, v) for k, v, _ in messages))
    bad_at = {
        pos: value for pos, (_, value, i) in zip(positions, messages, strict=True) if i is None
    }

    worker = Worker(
        kafka_bootstrap,
        input_topic,
        output_topic,
        group,
        tmp_path,
        max_message_bytes=MAX_MESSAGE_BYTES,
        commit_interval=0.2,
    )
    reader = OutputReader(kafka_bootstrap, output_topic)
    try:
        worker.start().wait_assigned(60)
        reader.wait_for(set(good_ids), timeout=120)
        health = worker.wait_for(
            lambda h: h["source"]["dead_letters"] >= len(bad) and h["source"]["in_flight"] == 0,
            120,
            "every dead letter sent",
        )
        assert worker.alive() and not health["failed"]
        letters = read_dead_letters(kafka_bootstrap, dlq_topic, len(bad))
        assert worker.terminate() == 0, worker.tail()
    finally:
        worker.close()
        reader.close()

    print(
        f"\npoison: {len(bad)} bad messages ({huge_count + 10} huge, "
        f"{sum(v is None for v in bad)} null) among {len(good_ids)} good; "
        f"{len(letters)} dead letters"
    )
    assert set(reader.ids) == set(good_ids)
    seen: dict[tuple[int, int], Any] = {}
    reasons: set[str] = set()
    for msg in letters:
        headers = {k: v.decode() for k, v in msg.headers() or []}
        assert headers["source.topic"] == input_topic
        assert headers["accumulator"] == "orderbook"
        assert headers["error"], "dead letter without a reason"
        reason = headers["error"]
        reasons.add("exceeds max_message_bytes" if "max_message_bytes" in reason else reason[:24])
        position = (int(headers["source.partition"]), int(headers["source.offset"]))
        original = bad_at[position]
        if original is not None and len(original) > MAX_MESSAGE_BYTES:
            assert "max_message_bytes" in headers["error"]
            assert original.startswith(msg.value())
        else:
            assert msg.value() == original
        seen[position] = msg
    assert seen.keys() == bad_at.keys(), "bad messages missing from the dead-letter topic"
    assert len(letters) == len(bad), "dead letters were duplicated"
    print("reasons:", sorted(reasons))
    assert_committed_to_end(kafka_bootstrap, group, input_topic)
