"""Keyed changelogs without a broker: what is written, when offsets are acked, restore/drop."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from headrace.accumulators.channel import Envelope
from headrace.connectors.kafka.changelog import ChangelogWriter, decode_record, encode_key
from headrace.connectors.kafka.keyed_changelogs import CoPartitionError, check_co_partitioned
from headrace.reactors.declaration import make_reactor_spec
from headrace.reactors.keyed_policy import KeyedPolicy


class FakeProducer:
    """Keeps every record and its delivery callback; ``deliver`` confirms them in order."""

    def __init__(self, room: bool = True) -> None:
        self.records: list[tuple[str, int, bytes, bytes | None]] = []
        self.pending: list[Any] = []
        self.room = room

    def __call__(
        self, topic: str, partition: int, key: bytes, value: bytes | None, delivered: Any
    ) -> bool:
        if not self.room:
            return False
        self.records.append((topic, partition, key, value))
        self.pending.append(delivered)
        return True

    def deliver(self, error: BaseException | None = None) -> None:
        pending, self.pending = self.pending, []
        for delivered in pending:
            delivered(error)

    def decoded(self) -> list[tuple[int, Any]]:
        return [(p, decode_record(k, v)) for _, p, k, v in self.records]


def envelope(
    acks: list[str], accumulator: str, key: str, value: Any, partition: int = 1
) -> Envelope:
    return Envelope(
        accumulator, value, (lambda: acks.append(f"{key}:{value}"),), key=key, partition=partition
    )


def test_a_waiting_value_is_acked_once_its_record_is_delivered_and_never_twice() -> None:
    produce = FakeProducer()
    writer = ChangelogWriter("g.rx.changelog", "rx", produce)
    policy = KeyedPolicy(
        make_reactor_spec("rx", ["books", "refs"], "when_all", "latest", keyed=True)
    )
    acks: list[str] = []
    book = envelope(acks, "books", "SOL", {"bid": 1})
    writer.recorded(book)
    policy.apply(book)
    assert acks == [], "not acked before the changelog has it"
    assert produce.decoded() == [(1, ("SOL", "books", {"bid": 1}, True))]
    assert produce.records[0][0] == "g.rx.changelog"
    produce.deliver()
    assert acks == ["SOL:{'bid': 1}"], "acked once delivered, though the key still waits"
    ref = envelope(acks, "refs", "SOL", {"price": 2})
    writer.recorded(ref)
    policy.apply(ref)
    fire = policy.next_fire()
    assert fire is not None and fire.inputs == {"books": {"bid": 1}, "refs": {"price": 2}}
    fire.settle()  # fired and handled before the ref's record was delivered
    assert acks == ["SOL:{'bid': 1}", "SOL:{'price': 2}"]
    produce.deliver()
    assert len(acks) == 2, "the later delivery does not ack again"


def test_a_failed_delivery_leaves_the_ack_to_the_fire() -> None:
    produce = FakeProducer()
    writer = ChangelogWriter("t", "rx", produce)
    acks: list[str] = []
    book = envelope(acks, "books", "BTC", 1)
    writer.recorded(book)
    produce.deliver(RuntimeError("broker away"))
    assert acks == [] and writer.failed == 1
    book.settle()
    assert acks == ["BTC:1"]


def test_a_full_producer_or_a_value_that_is_not_json_is_skipped_and_acked_by_the_fire() -> None:
    writer = ChangelogWriter("t", "rx", FakeProducer(room=False))
    acks: list[str] = []
    book = envelope(acks, "books", "BTC", 1)
    writer.recorded(book)
    assert writer.skipped == 1 and acks == []
    book.settle()
    assert acks == ["BTC:1"]
    strange = envelope(acks, "books", "ETH", object())
    ChangelogWriter("t", "rx", FakeProducer()).recorded(strange)
    strange.settle()
    assert acks[-1].startswith("ETH:")


def test_values_without_a_partition_are_not_written() -> None:
    produce = FakeProducer()
    writer = ChangelogWriter("t", "rx", produce)
    writer.recorded(Envelope("books", 1, (), key="BTC", partition=None))
    writer.fired("BTC", None, [("books", 1)])
    writer.forget("BTC", None, ["books"])
    assert produce.records == []


def test_fired_values_are_written_clean_and_evicted_keys_as_tombstones() -> None:
    produce = FakeProducer()
    writer = ChangelogWriter("t", "rx", produce)
    writer.fired("BTC", 0, [("books", {"bid": 3})])
    writer.forget("BTC", 0, ["books", "refs"])
    assert produce.decoded() == [
        (0, ("BTC", "books", {"bid": 3}, False)),
        (0, ("BTC", "books", None, False)),
        (0, ("BTC", "refs", None, False)),
    ]
    assert produce.records[1][3] is None


def test_decode_record_refuses_what_is_not_a_changelog_record() -> None:
    assert decode_record(b"not json", b"{}") is None
    assert decode_record(orjson.dumps(["k"]), b"{}") is None
    assert decode_record(encode_key("k", "a"), b'{"no": 1}') is None
    assert decode_record(encode_key("k", "a"), b'{"value": 5, "dirty": true}') == (
        "k",
        "a",
        5,
        True,
    )


def test_restore_puts_dirty_values_back_as_owing_a_fire_and_clean_ones_in_the_cache() -> None:
    spec = make_reactor_spec("rx", ["books", "refs"], "when_all", "latest", keyed=True)
    policy = KeyedPolicy(spec)
    policy.restore("SOL", 1, {"books": ({"bid": 1}, True)})
    policy.restore("BTC", 0, {"books": ({"bid": 2}, False), "refs": ({"p": 2}, False)})
    assert policy.next_fire() is None, "a half join does not fire"
    assert list(policy.idle) == ["BTC"]
    policy.apply(Envelope("refs", {"p": 1}, (), key="SOL", partition=1))
    fire = policy.next_fire()
    assert fire is not None and fire.key == "SOL"
    assert fire.inputs == {"books": {"bid": 1}, "refs": {"p": 1}}, "the restored book joins"


def test_drop_partition_forgets_its_keys_and_a_running_key_after_its_fire() -> None:
    spec = make_reactor_spec("rx", ["books"], "when_any", "latest", keyed=True)
    policy = KeyedPolicy(spec)
    for key, partition in (("A", 0), ("B", 1), ("C", 1)):
        policy.apply(Envelope("books", key, (), key=key, partition=partition))
    fire = policy.next_fire()
    assert fire is not None and fire.key == "A"
    policy.next_fire()  # B runs
    assert policy.drop_partition(1) == 2
    assert set(policy.keys) == {"A", "B"} and list(policy.ready) == []
    policy.finished("B")
    assert set(policy.keys) == {"A"}
    policy.finished("A")
    assert list(policy.idle) == ["A"]


def test_co_partitioning_is_checked_with_the_topics_and_their_counts() -> None:
    assert check_co_partitioned("rx", {"books": 3, "refs": 3}) == 3
    with pytest.raises(CoPartitionError, match=r"books has 3, refs has 2 partitions"):
        check_co_partitioned("rx", {"books": 3, "refs": 2})
    with pytest.raises(CoPartitionError, match=r"input topics \['refs'\] do not exist"):
        check_co_partitioned("rx", {"books": 3, "refs": None})


def test_a_multi_topic_keyed_group_switches_to_the_range_assignor_or_refuses_another() -> None:
    from headrace.connectors.kafka.source import KafkaSource

    source = KafkaSource("127.0.0.1:9", "g")
    assert source.config["partition.assignment.strategy"] == "cooperative-sticky"
    source._use_range_assignor()
    assert source.config["partition.assignment.strategy"] == "range"
    assert source._cooperative is False
    chosen = KafkaSource(
        "127.0.0.1:9", "g2", consumer_config={"partition.assignment.strategy": "roundrobin"}
    )
    with pytest.raises(ValueError, match=r"group 'g2'.*needs partition.assignment.strategy=range"):
        chosen._use_range_assignor()
