"""Memory bounds on the real broker (issue 7 item 5): a poison flood into a slow dead-letter
destination behind a stuck head pauses partitions, and nothing is lost."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from headrace.accumulators import stream_accumulator
from headrace.connectors import KafkaSource, MemorySink
from headrace.engine import Runtime
from tests.fixtures.kafka_broker import create_topic, unique_topic
from tests.integration.kafka_harness import assert_committed_to_end, produce_raw
from tests.unit.support import declare_reactor, one_node_graph

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(180)]

TOTAL = 900
POISON_EVERY = 3  # a third of the messages are not JSON: 5 KB dead letters each
MAX_DEAD_LETTERS = 8
MAX_IN_FLIGHT = 40


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


class SlowDeadLetters:
    """Takes 20 ms per letter, as a remote destination under load would."""

    def __init__(self) -> None:
        self.sending = 0
        self.most_sending = 0
        self.letters: list[Any] = []

    async def send(self, letter: Any) -> None:
        self.sending += 1
        self.most_sending = max(self.most_sending, self.sending)
        try:
            await asyncio.sleep(0.02)
            self.letters.append(letter)
        finally:
            self.sending -= 1


async def test_a_poison_flood_into_a_slow_dead_letter_sink_pauses_and_loses_nothing(
    kafka_bootstrap: str,
) -> None:
    topic = create_topic(kafka_bootstrap, unique_topic("bounds"), partitions=3)
    group = f"bounds-{uuid.uuid4().hex[:8]}"
    poison = {i for i in range(TOTAL) if i % POISON_EVERY == 0}
    placed = produce_raw(
        kafka_bootstrap,
        topic,
        (
            (str(i).encode(), b"!" * 5_000 if i in poison else orjson.dumps({"i": i}))
            for i in range(TOTAL)
        ),
    )
    stream_accumulator(topic=topic, name="books")(lambda event: event)
    declare_reactor("books_rx", ["books"], strategy="sequential")
    one_node_graph("through", "books_rx", ["books"], lambda books: books)
    source = KafkaSource(
        kafka_bootstrap,
        group,
        commit_interval=0.2,
        pause_after=0.02,
        max_dead_letters_in_flight=MAX_DEAD_LETTERS,
        max_in_flight_per_partition=MAX_IN_FLIGHT,
    )
    sink, letters = MemorySink(), SlowDeadLetters()
    most_in_flight = 0

    async def sample() -> None:
        nonlocal most_in_flight
        while True:
            for tp in source.tracker.partitions():
                most_in_flight = max(most_in_flight, source.tracker.in_flight(tp))
            await asyncio.sleep(0.002)

    async with Runtime(sources=[source], sinks=[sink], dead_letters=letters):
        sampler = asyncio.create_task(sample())
        try:
            await wait_until(
                lambda: (
                    len(letters.letters) == len(poison) and len(sink.results) == TOTAL - len(poison)
                ),
                120,
                "every output and every dead letter",
            )
            await wait_until(lambda: source.tracker.committable() == {}, 30, "the commits")
        finally:
            sampler.cancel()
    outputs = sorted(out["run"]["i"] for _, out in sink.results)
    assert outputs == sorted(set(range(TOTAL)) - poison), "lost or duplicated outputs"
    dead = sorted((letter.partition, letter.offset) for letter in letters.letters)
    assert dead == sorted(placed[i] for i in poison), "a poison message not dead-lettered once"
    print(
        f"\nbounds: {source.stats['pauses']} pauses, {source.stats['resumes']} resumes, "
        f"at most {letters.most_sending} dead letters sending (cap {MAX_DEAD_LETTERS}), "
        f"at most {most_in_flight} offsets in flight per partition (cap {MAX_IN_FLIGHT})"
    )
    assert source.stats["pauses"] > 0 and source.stats["resumes"] > 0
    assert letters.most_sending <= MAX_DEAD_LETTERS
    assert most_in_flight <= MAX_IN_FLIGHT
    await asyncio.to_thread(assert_committed_to_end, kafka_bootstrap, group, topic)
