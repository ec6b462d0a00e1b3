"""``headrace.connectors.base`` holds the connector protocols; old names are the same objects."""

from __future__ import annotations

from typing import Any

import headrace.connectors
import headrace.connectors.dead_letters
import headrace.connectors.sinks
import headrace.engine
import headrace.engine.runtime
from headrace.connectors.base import DeadLetterSink, ResultStore, Sink, Source
from headrace.connectors.dead_letters import FanOutDeadLetters, MemoryDeadLetters
from headrace.connectors.sinks import CallbackSink, LogSink, MemorySink, StoreSink
from headrace.engine.store.state_store import StateStore


def test_the_protocols_are_importable_from_where_they_lived() -> None:
    assert headrace.engine.runtime.Source is Source
    assert headrace.engine.Source is Source
    assert headrace.connectors.Source is Source
    assert headrace.connectors.sinks.Sink is Sink
    assert headrace.connectors.sinks.ResultStore is ResultStore
    assert headrace.connectors.dead_letters.DeadLetterSink is DeadLetterSink


def test_the_shipped_connectors_satisfy_the_protocols() -> None:
    for sink in (MemorySink(), LogSink(), CallbackSink(lambda graph, outputs: None)):
        assert isinstance(sink, Sink), sink
    assert isinstance(StoreSink(StateStore("sqlite://")), Sink)
    assert isinstance(MemoryDeadLetters(), DeadLetterSink)
    assert isinstance(FanOutDeadLetters(), DeadLetterSink)
    assert isinstance(StateStore("sqlite://"), ResultStore)


def test_a_class_missing_a_method_is_not_a_source() -> None:
    class HalfSource:
        accumulators = frozenset({"a"})

        async def start(self, runtime: Any) -> None: ...

    class WholeSource(HalfSource):
        async def stop(self) -> None: ...

        async def close(self) -> None: ...

        def health(self) -> dict[str, Any]:
            return {}

    assert not isinstance(HalfSource(), Source)
    assert isinstance(WholeSource(), Source)
