"""Keyed changelogs under exactly_once, without a broker: the records go in the worker's
transaction, a record the producer cannot take dooms it, a commit waits while a keyed
reactor fires, and an abort drops the keyed state changed since the last commit and
restores the committed changelog, its input partitions paused until then."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable
from typing import Any

import pytest

from headrace.accumulators.channel import Channel, Envelope
from headrace.connectors.kafka import keyed_changelogs
from headrace.connectors.kafka.changelog import ChangelogWriter, changelog_topic
from headrace.connectors.kafka.keyed_changelogs import KeyedChangelogs, _Reactor
from headrace.reactors.declaration import make_reactor_spec
from headrace.reactors.keyed_loop import KeyedReactorLoop

TP = tuple[str, int]
KeyValues = dict[str, dict[str, tuple[Any, bool]]]


class FakeProducer:
    def __init__(self) -> None:
        self.dooms: list[str] = []

    def doom(self, reason: str) -> None:
        self.dooms.append(reason)


class FakeCoordinator:
    """The coordinator's hooks ``KeyedChangelogs.join`` uses; records are delivered at once."""

    def __init__(self) -> None:
        self.producer = FakeProducer()
        self.records: list[tuple[str, int | None, Any, Any]] = []
        self.room = True
        self.busy: list[Callable[[], bool]] = []
        self.on_commit: list[Callable[[], None]] = []
        self.on_abort: list[Callable[[list[TP]], None]] = []

    def produce_nowait(
        self, topic: str, key: Any, value: Any, delivered: Any, partition: int | None = None
    ) -> bool:
        if not self.room:
            return False
        self.records.append((topic, partition, key, value))
        delivered(None)
        return True

    def add_busy(self, busy: Callable[[], bool]) -> None:
        self.busy.append(busy)

    def add_commit_listener(self, listener: Callable[[], None]) -> None:
        self.on_commit.append(listener)

    def add_abort_listener(self, listener: Callable[[list[TP]], None]) -> None:
        self.on_abort.append(listener)


async def _no_fire(_fire: Any) -> None:
    return None


class Joined:
    """A ``KeyedChangelogs`` joined to a fake coordinator, backing one keyed ``when_all``
    reactor over ``books`` and ``refs`` whose partition 1 holds ``committed``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, committed: KeyValues) -> None:
        spec = make_reactor_spec("rx", ["books", "refs"], "when_all", "latest", keyed=True)
        channels = {"books": Channel("books"), "refs": Channel("refs")}
        self.loop = KeyedReactorLoop(spec, channels, _no_fire)
        self.coordinator = FakeCoordinator()
        self.paused: list[TP] = []
        self.reads: list[int] = []
        self.changelogs = KeyedChangelogs("fake:9092", "g")
        self.changelogs.join(self.coordinator, self.paused.append)  # type: ignore[arg-type]
        topic = changelog_topic("g", "rx")
        self.writer = ChangelogWriter(
            topic,
            "rx",
            self.changelogs._produce,
            self.changelogs._on_lost,  # type: ignore[arg-type]
        )
        self.loop.changelog = self.writer
        self.reactor = _Reactor(self.loop, ["books", "refs"], topic, 2)
        self.changelogs.reactors["rx"] = self.reactor
        for input_topic in self.reactor.topics:
            self.changelogs._by_topic.setdefault(input_topic, []).append(self.reactor)

        def read(_servers: str, _topic: str, partition: int, **_options: Any) -> KeyValues:
            self.reads.append(partition)
            return copy.deepcopy(committed)

        monkeypatch.setattr(keyed_changelogs, "read_partition", read)
        self.loop.restore(1, copy.deepcopy(committed))
        self.reactor.restored.add(1)

    def take(self, accumulator: str, key: str, value: Any, partition: int = 1) -> None:
        """What the keyed loop does with a value it takes from a channel."""
        envelope = Envelope(accumulator, value, (), key=key, partition=partition)
        self.writer.recorded(envelope)
        self.loop.per_key.apply(envelope)

    def cache(self, key: str) -> dict[str, Any]:
        return dict(self.loop.per_key.keys[key].policy.cache)


COMMITTED: KeyValues = {"SOL": {"books": ({"bid": 1}, True)}}


async def test_an_abort_drops_the_changes_since_the_commit_and_restores_the_committed_state(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    joined = Joined(monkeypatch, COMMITTED)
    joined.take("books", "SOL", {"bid": 2})
    joined.take("books", "BTC", {"bid": 3})
    assert joined.cache("SOL") == {"books": {"bid": 2}}
    assert len(joined.coordinator.records) == 2, "the records went through the transaction"

    for listener in joined.coordinator.on_abort:
        listener([("books", 1)])
    assert set(joined.loop.per_key.keys) == set(), "the uncommitted state is gone"
    assert joined.paused == [("books", 1), ("refs", 1)], "every input of the partition waits"
    assert joined.changelogs.holds(("books", 1)) and joined.changelogs.holds(("refs", 1))

    await asyncio.wait_for(joined.reactor.restoring[1], 10)
    await asyncio.sleep(0)  # the restore's done callback
    assert joined.reads == [1]
    assert not joined.changelogs.holds(("books", 1))
    assert set(joined.loop.per_key.keys) == {"SOL"}, "BTC was never committed"
    assert joined.cache("SOL") == {"books": {"bid": 1}}, "the committed book is back"
    assert joined.changelogs.reloads == 1


async def test_a_partition_written_since_the_commit_reloads_though_it_took_no_input(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A fire of restored values writes the changelog without taking an input: its
    partition is not rewound, yet its state since the commit is discarded too."""
    joined = Joined(monkeypatch, COMMITTED)
    joined.writer.fired("SOL", 1, [("books", {"bid": 1})])
    for listener in joined.coordinator.on_abort:
        listener([])
    assert joined.paused == [("books", 1), ("refs", 1)]
    await asyncio.wait_for(joined.reactor.restoring[1], 10)
    assert joined.reads == [1]


async def test_after_a_commit_an_abort_with_nothing_rewound_keeps_the_state(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    joined = Joined(monkeypatch, COMMITTED)
    joined.take("books", "SOL", {"bid": 2})
    for listener in joined.coordinator.on_commit:
        listener()
    for listener in joined.coordinator.on_abort:
        listener([("books", 0)])  # a partition of which no key is held here
    assert joined.paused == [] and joined.reads == []
    assert joined.cache("SOL") == {"books": {"bid": 2}}, "committed: it stays"


async def test_a_record_the_transaction_cannot_take_dooms_it_but_a_tombstone_does_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    joined = Joined(monkeypatch, COMMITTED)
    joined.coordinator.room = False
    joined.writer.forget("SOL", 1, ["books"])
    assert joined.coordinator.producer.dooms == []
    joined.take("books", "SOL", {"bid": 2})
    joined.writer.fired("SOL", 1, [("books", {"bid": 2})])
    dooms = joined.coordinator.producer.dooms
    assert len(dooms) == 2 and all("g.rx.changelog[1]" in d for d in dooms), dooms


async def test_a_commit_waits_while_a_keyed_reactor_owes_a_fire(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    joined = Joined(monkeypatch, COMMITTED)
    (busy,) = joined.coordinator.busy
    assert not busy(), "a half join owes nothing"
    joined.take("refs", "SOL", {"p": 1})
    assert busy(), "the join is complete: its fire belongs to this transaction"
