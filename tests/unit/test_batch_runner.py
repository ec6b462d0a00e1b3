"""BatchRunner under failure and load: dead letters that fail, bounded events (issue 7)."""

from __future__ import annotations

from typing import Any

from headrace.accumulators import batch_accumulator
from headrace.connectors import MemorySink
from headrace.connectors.dead_letters import DeadLetter
from headrace.engine import Runtime
from tests.unit.support import declare_reactor, one_node_graph, wait_until


class FlakyDeadLetters:
    """Refuses the first ``failures`` letters (a dead-letter topic that is down)."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.attempts = 0
        self.letters: list[DeadLetter] = []

    async def send(self, letter: DeadLetter) -> None:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise RuntimeError(f"dead-letter topic unavailable (attempt {self.attempts})")
        self.letters.append(letter)


def unlucky_batches(flush_interval: str = "10ms", max_buffer_size: int = 100) -> None:
    @batch_accumulator(flush_interval=flush_interval, max_buffer_size=max_buffer_size)
    def trades(events: list[Any]) -> Any:
        if 13 in events:
            raise ValueError("unlucky batch")
        return sum(events)

    declare_reactor("rx", ["trades"], strategy="sequential")
    one_node_graph("g", "rx", ["trades"], lambda trades: trades)


async def test_a_batch_whose_dead_letter_fails_keeps_its_acks_until_the_letter_is_sent() -> None:
    unlucky_batches()
    letters, settled = FlakyDeadLetters(failures=3), []
    runtime = Runtime(graphs=["g"], sinks=[MemorySink()], dead_letters=letters)
    async with runtime:
        runner = runtime.accumulator("trades")
        for value in (12, 13):
            await runner.offer(value, acks=(lambda v=value: settled.append(v),))
        await wait_until(lambda: letters.attempts >= 2, 10)
        assert settled == [], "acks settled before the dead letter was sent"
        assert not runner.has_space(), "a batch waiting for its dead letter holds new events"
        assert runner._task is not None and not runner._task.done(), "the flush loop died"
        await wait_until(lambda: len(letters.letters) == 1, 20)
        assert sorted(settled) == [12, 13]
        assert letters.letters[0].payload == [12, 13]
        assert runtime.failures == {}
        await runner.offer(1, acks=(lambda: settled.append(1),))  # it flows again
        await wait_until(lambda: 1 in settled, 10)


async def test_stop_finishes_when_the_dead_letter_still_fails_and_keeps_the_acks() -> None:
    unlucky_batches(flush_interval="1h")
    letters, settled = FlakyDeadLetters(failures=10**6), []
    runtime = Runtime(graphs=["g"], sinks=[MemorySink()], dead_letters=letters)
    await runtime.start()
    runner = runtime.accumulator("trades")
    for value in (12, 13):
        await runner.offer(value, acks=(lambda v=value: settled.append(v),))
    await runtime.stop()  # must not raise: sources still commit and leave the group
    assert letters.attempts >= 1 and settled == []  # uncommitted: consumed again later
    assert runner.unsent == 2
