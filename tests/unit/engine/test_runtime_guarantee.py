"""``Runtime(guarantee=...)``: under exactly_once the Kafka sinks and Kafka dead letters
write through the Kafka sources' transaction coordinator; guarantees that disagree, or
sources without one shared coordinator, are refused with the source named."""

from __future__ import annotations

import pytest

from headrace.connectors import MemorySink
from headrace.connectors.kafka.dead_letters import KafkaDeadLetters
from headrace.connectors.kafka.sink import KafkaSink
from headrace.connectors.kafka.source import KafkaSource
from headrace.connectors.kafka.transactional_producer import TransactionalProducer
from headrace.connectors.kafka.transactions import TransactionalView, TransactionCoordinator
from headrace.engine import Runtime
from headrace.engine.worker import LoggedDeadLetters

BROKER = "127.0.0.1:9"  # never reached: nothing here starts


def coordinator() -> TransactionCoordinator:
    return TransactionCoordinator(TransactionalProducer(BROKER, "txn-unit"))


def eos_source(group: str, transactions: TransactionCoordinator) -> KafkaSource:
    return KafkaSource(BROKER, group, guarantee="exactly_once", transactions=transactions)


def test_exactly_once_joins_the_kafka_sinks_and_dead_letters_to_the_sources_transactions() -> None:
    shared = coordinator()
    sink, per_graph = KafkaSink(BROKER, "out"), KafkaSink(BROKER, "alerts")
    memory = MemorySink()
    dead = KafkaDeadLetters(BROKER)
    runtime = Runtime(
        graphs=[],
        sources=[eos_source("g1", shared), eos_source("g2", shared)],
        sinks=[sink, memory],
        graph_sinks={"alerts": [per_graph]},
        dead_letters=LoggedDeadLetters(dead),
        guarantee="exactly_once",
    )
    assert runtime.guarantee == "exactly_once"
    for part in (sink, per_graph, dead):
        assert isinstance(part.producer, TransactionalView), part
        assert part.producer.coordinator is shared


def test_at_least_once_leaves_the_sinks_alone() -> None:
    sink = KafkaSink(BROKER, "out")
    Runtime(graphs=[], sources=[KafkaSource(BROKER, "g")], sinks=[sink])
    assert not isinstance(sink.producer, TransactionalView)


def test_guarantees_that_disagree_are_refused_naming_the_source() -> None:
    with pytest.raises(ValueError, match=r"guarantee='at_least_once'.*group 'g1' \(exactly_once\)"):
        Runtime(graphs=[], sources=[eos_source("g1", coordinator())])
    with pytest.raises(ValueError, match=r"guarantee='exactly_once'.*group 'g2' \(at_least_once\)"):
        Runtime(graphs=[], sources=[KafkaSource(BROKER, "g2")], guarantee="exactly_once")


def test_exactly_once_needs_one_shared_coordinator() -> None:
    with pytest.raises(ValueError, match=r"share one TransactionCoordinator.*found 0"):
        Runtime(graphs=[], guarantee="exactly_once")
    two = [eos_source("g1", coordinator()), eos_source("g2", coordinator())]
    with pytest.raises(ValueError, match=r"found 2"):
        Runtime(graphs=[], sources=two, guarantee="exactly_once")


def test_an_unknown_guarantee_is_named() -> None:
    with pytest.raises(ValueError, match=r"Runtime: guarantee must be 'at_least_once'"):
        Runtime(graphs=[], guarantee="exactly-once")
