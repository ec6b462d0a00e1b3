"""The worker's exactly-once wiring: one transaction coordinator from the config, joined by
the Kafka sinks and the Kafka dead letters (see ``connectors/kafka/transactions.py``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import structlog

from headrace.connectors.kafka.transactional_producer import TransactionalProducer
from headrace.connectors.kafka.transactions import (
    TransactionCoordinator,
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


def join_transactions(
    coordinator: TransactionCoordinator, sinks: Mapping[str, Any], kafka_dead_letters: Any
) -> list[str]:
    """Make the Kafka sinks and Kafka dead letters write inside the transactions; returns
    the names of the parts that joined (the others were named at config load)."""
    from headrace.connectors.kafka.sink import KafkaSink

    joined: list[str] = []
    for name, sink in sinks.items():
        if isinstance(sink, KafkaSink):
            coordinator.join(sink, f"sink:{name}")
            joined.append(f"sink:{name}")
    if kafka_dead_letters is not None:
        coordinator.join(kafka_dead_letters, "dead-letters:kafka")
        joined.append("dead-letters:kafka")
    log.info("exactly-once: these write inside the Kafka transactions", parts=joined)
    return joined
