"""Durable per-key state of keyed reactors: a compacted changelog topic per reactor.

``<group>.<reactor>.changelog`` has the input's partition count and
``cleanup.policy=compact``; the keys of input partition p live in changelog partition p.
One record per (key, accumulator): its key is the JSON ``[key, accumulator]``, its value
the JSON ``{"value": ..., "dirty": bool}`` (dirty: delivered, not fired yet), or a
tombstone once the key is evicted.

- ``ChangelogWriter`` (a ``KeyedStateLog``) writes through a produce function, so the
  producer can be swapped: ``producer_produce`` (at_least_once, its own producer) or
  ``transactional_produce`` (exactly_once: the records go in the worker's Kafka
  transaction with the outputs and the input offsets). A ``latest`` value's offset is
  acked as soon as its record is delivered (or when it is fired and handled, whichever
  comes first), so a key that waits (``when_all``) or stays idle never holds the commit
  back; under exactly_once that offset commits in the transaction that holds the record.
- ``read_partition`` reads one changelog partition to its end (a consumer outside any
  group, ``assign()``, nothing committed, ``read_committed``: records of aborted
  transactions are never restored).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

import orjson
import structlog
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from headrace.accumulators.channel import Envelope, OnceAck
from headrace.connectors.kafka.producer import LIBRDKAFKA_LOGGER, READ_AHEAD, DeliveryProducer

if TYPE_CHECKING:
    from headrace.connectors.kafka.transactions import TransactionCoordinator

log = structlog.get_logger("headrace.kafka.changelog")

Delivered = Callable[[BaseException | None], None]
KeyValues = dict[str, dict[str, tuple[Any, bool]]]
"""``{key: {accumulator: (value, dirty)}}``: what a changelog partition holds."""

RESTORE_BATCH = 10_000
LOG_EVERY = 30.0


def changelog_topic(group: str, reactor: str) -> str:
    """The changelog topic of keyed reactor ``reactor`` in consumer group ``group``."""
    return f"{group}.{reactor}.changelog"


class Produce(Protocol):
    """Hand one record to a producer; False when it cannot take it now."""

    def __call__(
        self, topic: str, partition: int, key: bytes, value: bytes | None, delivered: Delivered
    ) -> bool: ...


def producer_produce(producer: DeliveryProducer) -> Produce:
    """A ``Produce`` over a ``DeliveryProducer`` (delivery reports on the event loop)."""

    def produce(
        topic: str, partition: int, key: bytes, value: bytes | None, delivered: Delivered
    ) -> bool:
        return producer.produce_nowait(topic, value, key, None, delivered, partition=partition)

    return produce


def transactional_produce(coordinator: TransactionCoordinator) -> Produce:
    """A ``Produce`` into the worker's open Kafka transaction (exactly_once)."""

    def produce(
        topic: str, partition: int, key: bytes, value: bytes | None, delivered: Delivered
    ) -> bool:
        return coordinator.produce_nowait(topic, key, value, delivered, partition)

    return produce


def _encode(value: Any) -> Any:
    dump = getattr(value, "model_dump", None)  # pydantic models
    if callable(dump):
        return dump(mode="json")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def encode_key(key: str, accumulator: str) -> bytes:
    return orjson.dumps([key, accumulator])


def encode_value(value: Any, dirty: bool) -> bytes:
    return orjson.dumps({"value": value, "dirty": dirty}, default=_encode)


class ChangelogWriter:
    """Writes one keyed reactor's cache changes to its changelog topic."""

    def __init__(
        self,
        topic: str,
        reactor: str,
        produce: Produce,
        on_lost: Callable[[str], None] | None = None,
    ) -> None:
        self.topic = topic
        self.reactor = reactor
        self.produce = produce
        self.on_lost = on_lost
        """Called when a dirty or fired record could not be written (exactly_once: dooms
        the transaction, so that the state and the outputs never part); None: skip it."""
        self.touched: set[int] = set()
        """Partitions written since ``touched`` was last cleared (the last commit)."""
        self.written = 0
        self.delivered = 0
        self.failed = 0
        self.skipped = 0
        self._last_warning = 0.0

    # -- KeyedStateLog -----------------------------------------------------------------
    def recorded(self, envelope: Envelope) -> None:
        """Write the dirty value; its acks settle once the record is delivered."""
        if envelope.partition is None or envelope.key is None:
            return  # not from a Kafka partition (a passthrough value): acked when fired
        try:
            value = encode_value(envelope.value, True)
        except TypeError as error:
            self._skip(envelope.key, f"value not JSON: {error}")
            return
        once = OnceAck(envelope.acks)
        envelope.acks = (once,)
        key = encode_key(envelope.key, envelope.accumulator)
        self._write(envelope.partition, key, value, once, needed=True)

    def fired(self, key: str, partition: int | None, values: Iterable[tuple[str, Any]]) -> None:
        if partition is None:
            return
        for accumulator, value in values:
            try:
                encoded = encode_value(value, False)
            except TypeError as error:
                self._skip(key, f"value not JSON: {error}")
                continue
            self._write(partition, encode_key(key, accumulator), encoded, None, needed=True)

    def forget(self, key: str, partition: int | None, accumulators: Iterable[str]) -> None:
        if partition is None:
            return
        for accumulator in accumulators:
            self._write(partition, encode_key(key, accumulator), None, None)

    # -- writing -----------------------------------------------------------------------
    def _write(
        self,
        partition: int,
        key: bytes,
        value: bytes | None,
        ack: Callable[[], None] | None,
        needed: bool = False,
    ) -> None:
        def delivered(error: BaseException | None) -> None:
            if error is None:
                self.delivered += 1
                if ack is not None:
                    ack()
            else:  # the value's offset waits for its fire instead
                self.failed += 1
                self._warn("changelog record not delivered", error=repr(error))

        self.touched.add(partition)
        if self.produce(self.topic, partition, key, value, delivered):
            self.written += 1
            return
        self._skip(key.decode(errors="replace"), "producer full")
        if needed and self.on_lost is not None:
            self.on_lost(
                f"changelog record of {self.reactor!r} not taken by the producer "
                f"({self.topic}[{partition}]): the transaction must abort"
            )

    def _skip(self, key: str, reason: str) -> None:
        self.skipped += 1
        self._warn(
            "changelog record skipped; the offset waits for the fire", key=key, reason=reason
        )

    def _warn(self, event: str, **fields: Any) -> None:
        now = time.monotonic()
        if now - self._last_warning >= LOG_EVERY:
            self._last_warning = now
            log.warning(event, reactor=self.reactor, topic=self.topic, **fields)

    def health(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "written": self.written,
            "delivered": self.delivered,
            "failed": self.failed,
            "skipped": self.skipped,
        }


def decode_record(key: bytes | None, value: bytes | None) -> tuple[str, str, Any, bool] | None:
    """``(key, accumulator, value, dirty)``, with value ``None`` for a tombstone; ``None``
    when the record is not a changelog record."""
    try:
        parsed = orjson.loads(key) if key is not None else None
        if not (
            isinstance(parsed, list)
            and len(parsed) == 2
            and all(isinstance(p, str) for p in parsed)
        ):
            return None
        if value is None:
            return parsed[0], parsed[1], None, False
        body = orjson.loads(value)
        if not isinstance(body, dict) or "value" not in body:
            return None
        return parsed[0], parsed[1], body["value"], bool(body.get("dirty", False))
    except orjson.JSONDecodeError:
        return None


def read_partition(
    bootstrap_servers: str,
    topic: str,
    partition: int,
    *,
    config: dict[str, Any] | None = None,
    timeout: float = 120.0,
) -> KeyValues:
    """Blocking: read changelog ``topic[partition]`` from the beginning to its end now.

    Raises ``TimeoutError`` (naming the partition) when the end is not reached in
    ``timeout`` seconds, and ``RuntimeError`` on a Kafka error while reading.
    """
    consumer = Consumer(
        {
            "logger": LIBRDKAFKA_LOGGER,
            **READ_AHEAD,
            **(config or {}),
            "bootstrap.servers": bootstrap_servers,
            "group.id": f"{topic}.restore",  # never joined: assign() only, nothing committed
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": False,
            "isolation.level": "read_committed",
        }
    )
    where = f"{topic}[{partition}]"
    keys: KeyValues = {}
    try:
        low, high = consumer.get_watermark_offsets(
            TopicPartition(topic, partition), timeout=min(timeout, 30.0)
        )
        if high <= max(low, 0):
            return keys
        consumer.assign([TopicPartition(topic, partition, OFFSET_BEGINNING)])
        deadline = time.monotonic() + timeout
        position = low
        while position < high:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"restoring {where}: at offset {position} of {high} after {timeout}s "
                    "(read_committed: a transaction on it may still be open)"
                )
            messages = consumer.consume(RESTORE_BATCH, 0.5)
            # transaction markers and aborted records are never returned, but the position
            # steps over them (librdkafka >= 1.4): the end is reached by position
            position = max(position, _position(consumer, topic, partition))
            for msg in messages:
                error = msg.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        continue
                    raise RuntimeError(f"restoring {where}: {error}")
                position = max(position, msg.offset() + 1)
                record = decode_record(msg.key(), msg.value())
                if record is None:
                    log.warning(
                        "not a changelog record; skipped",
                        topic=topic,
                        partition=partition,
                        offset=msg.offset(),
                    )
                    continue
                key, accumulator, value, dirty = record
                if msg.value() is None:
                    entries = keys.get(key)
                    if entries is not None:
                        entries.pop(accumulator, None)
                        if not entries:
                            del keys[key]
                else:
                    keys.setdefault(key, {})[accumulator] = (value, dirty)
        return keys
    finally:
        consumer.close()


def _position(consumer: Consumer, topic: str, partition: int) -> int:
    """The consumer's next offset in ``topic[partition]`` (-1 before its first fetch)."""
    (tp,) = consumer.position([TopicPartition(topic, partition)])
    return int(tp.offset)
