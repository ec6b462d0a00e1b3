"""The exactly-once wiring: one transaction coordinator from the config, joined by the Kafka
sinks and the Kafka dead letters (see ``connectors/kafka/transactions.py``); the same for
a Python ``Runtime(guarantee=...)`` (``join_runtime``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import structlog

from headrace.connectors.kafka.transactional_producer import TransactionalProducer
from headrace.connectors.kafka.transactions import (
    TransactionalView,
    TransactionCoordinator,
    check_guarantee,
    default_transactional_id,
)

if TYPE_CHECKING:
    from headrace.engine.config.loader import LoadedConfig

log = structlog.get_logger("headrace.worker")


def build_coordinator(config: LoadedConfig) -> TransactionCoordinator:
    """The worker's one transactional producer and its coordinator."""
    worker = config.worker
    settings = worker.transactions
    assert worker.bootstrap_servers, "worker.bootstrap_servers is checked at load time"
    producer = TransactionalProducer(
        worker.bootstrap_servers,
        settings.transactional_id or default_transactional_id(worker.group_id),
        worker.producer_config() or None,
    )
    return TransactionCoordinator(
        producer,
        commit_interval=worker.commit_interval,
        max_inputs=settings.max_inputs,
        barrier_timeout=settings.barrier_timeout,
    )


def _dead_letter_parts(dead_letters: Any) -> list[Any]:
    """``dead_letters`` and what it wraps (fan-outs, logging wrappers)."""
    parts, todo = [], [dead_letters]
    while todo:
        part = todo.pop()
        parts.append(part)
        todo.extend(getattr(part, "destinations", ()))
        inner = getattr(part, "inner", None)
        if inner is not None:
            todo.append(inner)
    return parts


def join_runtime(
    guarantee: str, sources: Iterable[Any], sinks: Iterable[Any], dead_letters: Any
) -> TransactionCoordinator | None:
    """``Runtime(guarantee=...)``: check that the Kafka sources agree with it and, under
    exactly_once, make the Kafka sinks and Kafka dead letters write inside the sources'
    one transaction coordinator (parts joined already are left alone); every other sink
    is named in a warning (its writes may repeat after a crash). Returns the coordinator.

    Raises ``ValueError`` naming the source when the guarantees disagree, when no Kafka
    source runs exactly_once, or when the sources do not share one coordinator."""
    from headrace.connectors.kafka.dead_letters import KafkaDeadLetters
    from headrace.connectors.kafka.sink import KafkaSink

    guarantee = check_guarantee(guarantee, "Runtime: guarantee")
    kafka = [s for s in sources if hasattr(s, "guarantee") and hasattr(s, "transactions")]
    wrong = [s for s in kafka if s.guarantee != guarantee]
    if wrong:
        names = ", ".join(f"group {s.group_id!r} ({s.guarantee})" for s in wrong)
        raise ValueError(
            f"Runtime: guarantee={guarantee!r} but Kafka source {names} differs: give the "
            "Runtime and every KafkaSource the same guarantee"
        )
    if guarantee == "at_least_once":
        return None
    coordinators = {id(s.transactions): s.transactions for s in kafka}
    if len(coordinators) != 1:
        raise ValueError(
            "Runtime: guarantee='exactly_once' needs KafkaSource(guarantee='exactly_once', "
            "transactions=...) sources that share one TransactionCoordinator (one "
            f"transactional producer per worker); found {len(coordinators)}"
        )
    (coordinator,) = coordinators.values()
    joined: list[str] = []
    outside: list[str] = []
    seen: set[int] = set()
    for sink in sinks:
        if id(sink) in seen:
            continue
        seen.add(id(sink))
        name = f"{type(sink).__name__}({getattr(sink, 'topic', '') or ''})"
        if isinstance(sink, KafkaSink):
            if not isinstance(sink.producer, TransactionalView):
                coordinator.join(sink, f"sink:{sink.topic}")
            joined.append(name)
        else:
            outside.append(name)
    for part in _dead_letter_parts(dead_letters):
        if isinstance(part, KafkaDeadLetters):
            if not isinstance(part.producer, TransactionalView):
                coordinator.join(part, "dead-letters:kafka")
            joined.append("dead-letters:kafka")
    for name in outside:
        log.warning(
            "sink cannot join a Kafka transaction: under exactly_once its writes may repeat "
            "after a crash",
            sink=name,
        )
    log.info("exactly-once: these write inside the Kafka transactions", parts=joined)
    return coordinator
