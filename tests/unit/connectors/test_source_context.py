"""``SourceContext``: the narrow view of the runtime that a source is started with.

``Runtime`` satisfies it structurally, and ``KafkaSource`` runs against a context that is
not a ``Runtime`` at all (a fake consumer, no broker): it feeds the context's accumulators,
dead-letters a bad message there and tells its observers, has its task supervised, and
fails a component on a fatal error."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
from confluent_kafka import KafkaError

from headrace.accumulators import stream_accumulator
from headrace.accumulators.channel import Channel
from headrace.accumulators.runners import AccumulatorRunner, make_runner
from headrace.connectors import KafkaSource, MemoryDeadLetters, SourceContext
from headrace.connectors.dead_letters import DeadLetter
from headrace.engine import Runtime
from headrace.engine.observers import Observers
from headrace.reactors.loop import ReactorLoop
from tests.unit.kafka_fakes import install
from tests.unit.support import declare_reactor, one_node_graph, wait_until


class LetterLog:
    def __init__(self) -> None:
        self.letters: list[DeadLetter] = []

    def on_dead_letter(self, letter: DeadLetter) -> None:
        self.letters.append(letter)


@dataclass
class FakeContext:
    """Only what ``SourceContext`` names: no graphs, sinks or HTTP, and no reactors."""

    accumulators: Mapping[str, AccumulatorRunner]
    reactors: Mapping[str, ReactorLoop] = field(default_factory=dict)
    dead_letters: MemoryDeadLetters = field(default_factory=MemoryDeadLetters)
    letter_log: LetterLog = field(default_factory=LetterLog)
    supervised: list[tuple[asyncio.Task[Any], str]] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)

    @property
    def observers(self) -> Observers:
        return Observers([self.letter_log])

    def supervise(self, task: asyncio.Task[Any], component: str) -> None:
        self.supervised.append((task, component))

    def fail(self, component: str, reason: BaseException | str) -> None:
        self.failures.append((component, str(reason)))

    def failed(self) -> list[str]:
        return []


def test_runtime_is_a_source_context() -> None:
    stream_accumulator(topic="t", name="s")(lambda event: event)
    declare_reactor("rx", ["s"], strategy="sequential")
    one_node_graph("g", "rx", ["s"], lambda s: s)
    runtime: SourceContext = Runtime()  # the type checker's view of the same claim
    assert isinstance(runtime, SourceContext)
    assert not isinstance(object(), SourceContext)


async def test_kafka_source_runs_against_a_context_that_is_not_a_runtime(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    consumers = install(monkeypatch)
    spec = stream_accumulator(topic="t", name="s")(lambda event: event).__headrace_accumulator__
    channel = Channel("s", 16)
    context = FakeContext({"s": make_runner(spec, [channel])})
    assert isinstance(context, SourceContext)
    source = KafkaSource("fake:9092", "g1", commit_interval=0.05, poll_timeout=0.01)
    await source.start(context)
    try:
        assert source.accumulators == frozenset({"s"})
        assert [component for _, component in context.supervised] == ["kafka-source"]
        consumer = consumers[0]
        assert consumer.topics == ["t"]
        await source._call(consumer.rebalance, "on_assign", [("t", 0)])
        consumer.add(("t", 0), [{"i": 1}, b"not json {", {"i": 2}])
        await wait_until(lambda: len(channel) == 2 and context.dead_letters.letters, 10)
        envelopes = [channel.take() for _ in range(2)]
        assert [e.value for e in envelopes] == [{"i": 1}, {"i": 2}]
        for envelope in envelopes:
            envelope.settle()  # delivered: the offsets may be committed
        await wait_until(lambda: consumer.committed.get(("t", 0)) == 3, 10)
        (letter,) = context.dead_letters.letters
        assert (letter.accumulator, letter.partition, letter.offset) == ("s", 0, 1)
        assert context.letter_log.letters == [letter]
        assert source._fatal(KafkaError(KafkaError._FATAL, "fenced", fatal=True))
        ((component, reason),) = context.failures
        assert component == "kafka-consumer" and "fenced" in reason
    finally:
        await source.stop()
        await source.close()
    assert consumer.closed
