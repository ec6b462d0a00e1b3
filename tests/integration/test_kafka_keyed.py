"""Keyed reactors on a real broker (in-process per-key state; no changelog yet)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import defaultdict
from collections.abc import Callable

import orjson
import pytest

from headrace.accumulators import stream_accumulator
from headrace.connectors import KafkaSource, MemoryDeadLetters
from headrace.engine import ComputationGraphBuilder, Runtime
from headrace.reactors import reactor
from tests.fixtures.kafka_broker import create_topic, produce_json, unique_topic
from tests.integration.kafka_harness import assert_committed_to_end, produce_raw

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]

SYMBOLS = [f"S{n:02d}" for n in range(20)]


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


async def test_a_slow_latest_graph_fires_every_symbols_last_value(kafka_bootstrap: str) -> None:
    """20 symbols on one topic, a graph that awaits 5 ms: each symbol's last book is fired
    (``latest`` coalesces per symbol only), books without a symbol are dead-lettered with
    the reason, and every offset is committed."""
    topic = create_topic(kafka_bootstrap, unique_topic("keyed-books"), partitions=3)
    group = f"keyed-{uuid.uuid4().hex[:8]}"
    per_symbol = 30
    books = [{"symbol": symbol, "seq": seq} for seq in range(per_symbol) for symbol in SYMBOLS]
    keyless = [{"seq": -n} for n in range(1, 11)]
    # keyed by symbol, so one symbol's books keep their order (one partition each)
    messages = books[:300] + keyless + books[300:]
    produce_json(kafka_bootstrap, topic, messages, key=lambda book: book.get("symbol", "none"))

    stream_accumulator(topic=topic, name="books", key="symbol")(lambda event: event)
    reactor(name="books_rx", accumulators=["books"], keyed=True, max_concurrency=4)(
        type("Rx", (), {})
    )
    seen: dict[str, list[int]] = defaultdict(list)

    async def signal(books: dict, key: str) -> None:
        seen[key].append(books["seq"])
        await asyncio.sleep(0.005)

    with ComputationGraphBuilder(
        "keyed_signal", reactor="books_rx", graph={"signal": {"inputs": ["books"]}}
    ) as builder:
        builder.add_node("signal", signal)

    source = KafkaSource(kafka_bootstrap, group, commit_interval=0.2)
    dead_letters = MemoryDeadLetters()
    async with Runtime(graphs=["keyed_signal"], sources=[source], dead_letters=dead_letters):
        await wait_until(
            lambda: all(seen.get(s, [None])[-1] == per_symbol - 1 for s in SYMBOLS),
            60,
            "every symbol's last book to fire",
        )
        await wait_until(lambda: len(dead_letters.letters) == 10, 30, "10 dead letters")
        await wait_until(
            lambda: source.tracker.committable() == {} and source.stats["commits"] > 0,
            30,
            "commits to catch up",
        )
    for symbol in SYMBOLS:
        assert seen[symbol] == sorted(seen[symbol]), "latest never goes back within a key"
        assert seen[symbol][-1] == per_symbol - 1
    reasons = {letter.reason for letter in dead_letters.letters}
    assert reasons == {"key field 'symbol' is missing from the value"}
    assert {letter.accumulator for letter in dead_letters.letters} == {"books"}
    assert all(
        letter.topic == topic and letter.offset is not None for letter in dead_letters.letters
    )
    assert_committed_to_end(kafka_bootstrap, group, topic)


async def test_message_key_from_kafka_keys_the_values_and_dead_letters_bad_keys(
    kafka_bootstrap: str,
) -> None:
    """``key="@message"``: the Kafka source hands each message's key to the accumulator, so
    fires are keyed by it; a message without a key, or with a key that is not UTF-8, is
    dead-lettered naming its topic, partition, offset and the reason, and still committed."""
    topic = create_topic(kafka_bootstrap, unique_topic("keyed-msgkey"), partitions=2)
    group = f"keyed-msgkey-{uuid.uuid4().hex[:8]}"
    good = [
        (symbol.encode(), orjson.dumps({"seq": seq})) for seq in range(5) for symbol in SYMBOLS[:4]
    ]
    bad_keys: list[bytes | None] = [None, b"\xff\xfe"]
    placed = produce_raw(
        kafka_bootstrap, topic, [*good[:10], *((k, b'{"seq": -1}') for k in bad_keys), *good[10:]]
    )
    bad_at = {placed[10]: "key='@message' but the message has no key", placed[11]: "not UTF-8"}

    stream_accumulator(topic=topic, name="quotes", key="@message")(lambda event: event)
    reactor(name="quotes_rx", accumulators=["quotes"], keyed=True, strategy="sequential")(
        type("Rx", (), {})
    )
    seen: dict[str, list[int]] = defaultdict(list)

    def record(quotes: dict, key: str) -> None:
        seen[key].append(quotes["seq"])

    with ComputationGraphBuilder(
        "msgkey_graph", reactor="quotes_rx", graph={"record": {"inputs": ["quotes"]}}
    ) as builder:
        builder.add_node("record", record)

    source = KafkaSource(kafka_bootstrap, group, commit_interval=0.2)
    dead_letters = MemoryDeadLetters()
    async with Runtime(graphs=["msgkey_graph"], sources=[source], dead_letters=dead_letters):
        await wait_until(
            lambda: sum(map(len, seen.values())) == len(good) and len(dead_letters.letters) == 2,
            60,
            "every keyed message fired and both bad keys dead-lettered",
        )
        await wait_until(lambda: source.tracker.committable() == {}, 30, "commits to catch up")
    assert dict(seen) == {symbol: list(range(5)) for symbol in SYMBOLS[:4]}
    by_place = {(letter.partition, letter.offset): letter for letter in dead_letters.letters}
    assert set(by_place) == set(bad_at)
    for place, reason in bad_at.items():
        letter = by_place[place]
        assert letter.topic == topic and letter.accumulator == "quotes"
        assert reason in letter.reason, letter.reason
    assert_committed_to_end(kafka_bootstrap, group, topic)
