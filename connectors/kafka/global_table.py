"""Global (table) accumulators: every worker reads every partition of their topics.

``GlobalTables`` runs one consumer outside any consumer group (``assign()`` of every
partition from the beginning, nothing committed). At start it reads each topic to its
end as it is then, before the source takes its first message (so a keyed reactor's
first fires already see the table), then keeps following the topics in a thread of its
own. Each message goes through its accumulator into a ``TableRunner`` (latest value per
key); a null value removes the message key's entry (``key="@message"``). A message that
cannot be read is logged with its topic, partition, offset and the reason, and skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import orjson
import structlog
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition

from headrace.accumulators.runners import TableRunner
from headrace.accumulators.spec import AccumulatorInputError
from headrace.connectors.kafka.producer import LIBRDKAFKA_LOGGER, READ_AHEAD

if TYPE_CHECKING:
    from headrace.engine.runtime import Runtime

log = structlog.get_logger("headrace.kafka.global")

Record = tuple[str, int, int, bytes | None, bytes | None]
"""``(topic, partition, offset, key, value)``."""

BATCH = 1000
LOAD_TIMEOUT = 300.0
WARN_EVERY = 10.0


class GlobalTables:
    """Loads and follows the topics of global accumulators into their tables."""

    def __init__(self, bootstrap_servers: str, client_config: dict[str, Any] | None = None) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.client_config = dict(client_config or {})
        self.runners: dict[str, list[TableRunner]] = {}
        self.loaded = 0
        self.applied = 0
        self.skipped = 0
        self.load_seconds: float | None = None
        self._consumer: Consumer | None = None
        self._stopping = threading.Event()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_warning = 0.0

    async def start(self, runtime: Runtime, runners: Iterable[TableRunner]) -> None:
        """Read every table topic to its end, then follow it (a supervised task)."""
        for runner in runners:
            assert runner.spec.topic is not None
            if runner.spec.is_async:
                raise ValueError(
                    f"global accumulator {runner.name!r}: its function must not be async "
                    "(table records are applied as they are read)"
                )
            self.runners.setdefault(runner.spec.topic, []).append(runner)
        if not self.runners:
            return
        self._loop = asyncio.get_running_loop()
        started = time.monotonic()
        self._consumer = await asyncio.to_thread(self._open)
        records = await asyncio.to_thread(self._read_to_end)
        self._apply(records)
        self.loaded = len(records)
        self.load_seconds = time.monotonic() - started
        log.info(
            "global tables loaded",
            topics=sorted(self.runners),
            records=self.loaded,
            keys={r.name: len(r.table) for rs in self.runners.values() for r in rs},
            seconds=round(self.load_seconds, 3),
        )
        self._stopping.clear()
        self._task = asyncio.create_task(asyncio.to_thread(self._follow), name="global-tables")
        runtime.supervise(self._task, "global-tables")

    # -- the consumer (its own thread) --------------------------------------------------
    def _open(self) -> Consumer:
        consumer = Consumer(
            {
                "logger": LIBRDKAFKA_LOGGER,
                **READ_AHEAD,
                **self.client_config,
                "bootstrap.servers": self.bootstrap_servers,
                "group.id": "headrace-global-tables",  # never joined: assign() only
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
            }
        )
        metadata = consumer.list_topics(timeout=30)
        partitions: list[TopicPartition] = []
        for topic in sorted(self.runners):
            found = metadata.topics.get(topic)
            if found is None or found.error is not None:
                consumer.close()
                names = ", ".join(r.name for r in self.runners[topic])
                raise ValueError(f"global accumulator {names}: topic {topic!r} does not exist")
            partitions.extend(TopicPartition(topic, p, OFFSET_BEGINNING) for p in found.partitions)
        consumer.assign(partitions)
        return consumer

    def _read_to_end(self) -> list[Record]:
        """Blocking: everything in the table topics up to their ends as of now."""
        consumer = self._consumer
        assert consumer is not None
        ends: dict[tuple[str, int], int] = {}
        for tp in consumer.assignment():
            low, high = consumer.get_watermark_offsets(tp, timeout=30)
            if high > max(low, 0):
                ends[(tp.topic, tp.partition)] = high
        records: list[Record] = []
        deadline = time.monotonic() + LOAD_TIMEOUT
        while ends:
            if time.monotonic() > deadline:
                raise TimeoutError(f"global tables not loaded in {LOAD_TIMEOUT}s: {ends}")
            for msg in consumer.consume(BATCH, 0.5):
                if not self._readable(msg):
                    continue
                records.append(_record(msg))
                tp = (msg.topic(), msg.partition())
                if tp in ends and msg.offset() + 1 >= ends[tp]:
                    del ends[tp]
        return records

    def _follow(self) -> None:
        """Blocking: hand new table records to the event loop until stopped."""
        consumer = self._consumer
        assert consumer is not None and self._loop is not None
        while not self._stopping.is_set():
            batch = [_record(m) for m in consumer.consume(BATCH, 0.2) if self._readable(m)]
            if batch:
                self._loop.call_soon_threadsafe(self._apply, batch)

    def _readable(self, msg: Message) -> bool:
        error = msg.error()
        if error is None:
            return True
        if error.code() != KafkaError._PARTITION_EOF:
            if error.fatal():
                raise RuntimeError(f"global tables: fatal consumer error: {error}")
            log.warning("global table consumer error", error=str(error))
        return False

    # -- on the event loop ----------------------------------------------------------------
    def _apply(self, records: list[Record]) -> None:
        for topic, partition, offset, key, value in records:
            for runner in self.runners.get(topic, ()):
                try:
                    if value is None:
                        runner.remove(key)
                        continue
                    runner.offer_nowait(orjson.loads(value), (), key)
                    self.applied += 1
                except (AccumulatorInputError, orjson.JSONDecodeError) as error:
                    self.skipped += 1
                    self._warn(runner.name, topic, partition, offset, error)

    def _warn(self, name: str, topic: str, partition: int, offset: int, error: Exception) -> None:
        now = time.monotonic()
        if now - self._last_warning >= WARN_EVERY:
            self._last_warning = now
            reason = error.reason if isinstance(error, AccumulatorInputError) else str(error)
            log.warning(
                "global table record skipped",
                accumulator=name,
                topic=topic,
                partition=partition,
                offset=offset,
                reason=reason,
                skipped=self.skipped,
            )

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            task, self._task = self._task, None
            with contextlib.suppress(Exception):
                await task
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            await asyncio.to_thread(consumer.close)

    def health(self) -> dict[str, Any]:
        return {
            "topics": sorted(self.runners),
            "loaded": self.loaded,
            "applied": self.applied,
            "skipped": self.skipped,
            "load_seconds": self.load_seconds,
        }


def split_tables(
    topics: dict[str, list[Any]],
) -> tuple[dict[str, list[Any]], list[TableRunner]]:
    """``(topics the group consumes, global runners)`` out of a source's selection."""
    tables = [r for runners in topics.values() for r in runners if isinstance(r, TableRunner)]
    grouped = {
        topic: kept
        for topic, runners in topics.items()
        if (kept := [r for r in runners if not isinstance(r, TableRunner)])
    }
    return grouped, tables


def _record(msg: Message) -> Record:
    return (msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.value())
