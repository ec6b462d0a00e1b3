"""The changelogs of the keyed reactors a Kafka source feeds: topics, restore, revoke.

``KeyedChangelogs`` is what ``KafkaSource`` calls from its start, assign, revoke and
close paths:

- ``start``: for each keyed reactor fed by the source's topics, check that those topics
  are co-partitioned, create (or check) ``<group>.<reactor>.changelog`` with the same
  partition count and ``cleanup.policy=compact``, and give the reactor a ``ChangelogWriter``.
- ``assigned``: start restoring partition p of each such reactor; ``holds(tp)`` stays
  true (the source keeps ``tp`` paused) until p's keys are back in the reactor.
- ``revoked``: drop the keys of p from the reactor (the next owner restores them).
- ``join`` (exactly_once): the changelog records go in the worker's Kafka transaction;
  a commit waits while a keyed reactor fires (its outputs and its changelog records
  commit together), and after an abort the partitions that changed since the last commit
  are dropped and restored from the committed changelog, paused until restored.
"""

from __future__ import annotations

import asyncio
import inspect
import time
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pydantic
import structlog
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from headrace.connectors.kafka.changelog import (
    ChangelogWriter,
    KeyValues,
    Produce,
    changelog_topic,
    producer_produce,
    read_partition,
    transactional_produce,
)
from headrace.connectors.kafka.producer import LIBRDKAFKA_LOGGER, DeliveryProducer
from headrace.reactors.keyed_loop import KeyedReactorLoop

if TYPE_CHECKING:
    from headrace.connectors.base import SourceContext as Runtime
    from headrace.connectors.kafka.transactions import TransactionCoordinator

log = structlog.get_logger("headrace.kafka.changelog")

TP = tuple[str, int]
ADMIN_TIMEOUT = 30.0


CLIENT_SETTINGS = ("security.", "sasl.", "ssl.", "client.dns.")


def client_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The connection settings of a consumer config that other clients need too."""
    return {k: v for k, v in config.items() if isinstance(k, str) and k.startswith(CLIENT_SETTINGS)}


class CoPartitionError(ValueError):
    """The topics of one keyed reactor have different partition counts."""


@dataclass
class _Reactor:
    loop: KeyedReactorLoop
    topics: list[str]
    changelog: str
    partitions: int
    models: dict[str, type[pydantic.BaseModel]] = field(default_factory=dict)
    """Accumulators whose values are pydantic models: restored values are validated back."""
    restoring: dict[int, asyncio.Task[None]] = field(default_factory=dict)
    restored: set[int] = field(default_factory=set)


def partition_counts(admin: AdminClient, topics: Iterable[str]) -> dict[str, int | None]:
    """Blocking: the partition count of each topic (``None``: it does not exist)."""
    metadata = admin.list_topics(timeout=ADMIN_TIMEOUT)
    counts: dict[str, int | None] = {}
    for topic in topics:
        found = metadata.topics.get(topic)
        counts[topic] = None if found is None or found.error is not None else len(found.partitions)
    return counts


def value_models(
    runtime: Runtime, accumulators: Iterable[str]
) -> dict[str, type[pydantic.BaseModel]]:
    """The accumulators whose function is annotated to return a pydantic model."""
    models: dict[str, type[pydantic.BaseModel]] = {}
    for name in accumulators:
        runner = runtime.accumulators.get(name)
        if runner is None:
            continue
        try:
            returned = typing.get_type_hints(runner.spec.fn).get("return")
        except Exception:  # unresolvable annotations: values come back as JSON
            continue
        if inspect.isclass(returned) and issubclass(returned, pydantic.BaseModel):
            models[name] = returned
    return models


def as_models(
    reactor: str, keys: KeyValues, models: dict[str, type[pydantic.BaseModel]]
) -> KeyValues:
    """Validate restored JSON values back into their accumulators' models; a value that no
    longer validates is dropped with a warning (its key keeps the others)."""
    if not models:
        return keys
    for key, values in keys.items():
        for accumulator, (value, dirty) in list(values.items()):
            model = models.get(accumulator)
            if model is None or value is None:
                continue
            try:
                values[accumulator] = (model.model_validate(value), dirty)
            except pydantic.ValidationError as error:
                del values[accumulator]
                log.warning(
                    "restored value does not match its model; dropped",
                    reactor=reactor,
                    key=key,
                    accumulator=accumulator,
                    model=model.__name__,
                    error=str(error).splitlines()[0],
                )
    return keys


def check_co_partitioned(reactor: str, counts: dict[str, int | None]) -> int:
    """The common partition count of a keyed reactor's topics; a clear error otherwise."""
    missing = sorted(topic for topic, count in counts.items() if count is None)
    if missing:
        raise CoPartitionError(f"keyed reactor {reactor!r}: input topics {missing} do not exist")
    distinct = {count for count in counts.values()}
    if len(distinct) > 1:
        listed = ", ".join(f"{topic} has {count}" for topic, count in sorted(counts.items()))
        raise CoPartitionError(
            f"keyed reactor {reactor!r} joins topics that are not co-partitioned ({listed} "
            "partitions): a key's values must sit in the same partition number of every "
            "topic; give them the same partition count (and the same key partitioning)"
        )
    return distinct.pop()


def ensure_changelog(admin: AdminClient, topic: str, partitions: int) -> None:
    """Blocking: create the compacted changelog topic, or check the one that exists."""
    existing = partition_counts(admin, [topic])[topic]
    if existing is None:
        futures = admin.create_topics(
            [NewTopic(topic, partitions, config={"cleanup.policy": "compact"})],
            operation_timeout=ADMIN_TIMEOUT,
        )
        try:
            futures[topic].result(timeout=ADMIN_TIMEOUT)
            log.info("changelog topic created", topic=topic, partitions=partitions)
            return
        except Exception as error:  # created meanwhile by another worker of the group
            if "TOPIC_ALREADY_EXISTS" not in str(error):
                raise RuntimeError(f"changelog topic {topic!r} not created: {error}") from error
            existing = partition_counts(admin, [topic])[topic]
    if existing != partitions:
        raise CoPartitionError(
            f"changelog topic {topic!r} has {existing} partitions but its input has "
            f"{partitions}: delete it (its state is lost) or give the input {existing}"
        )
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    configs = admin.describe_configs([resource])[resource].result(timeout=ADMIN_TIMEOUT)
    policy = configs.get("cleanup.policy")
    if policy is not None and "compact" not in str(policy.value):
        raise ValueError(
            f"changelog topic {topic!r} has cleanup.policy={policy.value}, not compact: "
            "old records would be deleted and keys lost on restore"
        )


class KeyedChangelogs:
    """Backs the keyed reactors of one Kafka source with changelog topics."""

    def __init__(
        self,
        bootstrap_servers: str,
        group: str,
        *,
        on_restored: Callable[[], None] = lambda: None,
        produce: Produce | None = None,
        client_config: dict[str, Any] | None = None,
        restore_timeout: float = 300.0,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.group = group
        self.on_restored = on_restored
        self._produce = produce
        self._client_config = dict(client_config or {})
        self.restore_timeout = restore_timeout
        self.producer: DeliveryProducer | None = None
        self.reactors: dict[str, _Reactor] = {}
        self._by_topic: dict[str, list[_Reactor]] = {}
        self._runtime: Runtime | None = None
        self._on_lost: Callable[[str], None] | None = None
        self._pause: Callable[[TP], None] = lambda _tp: None
        self.reloads = 0

    def join(self, coordinator: TransactionCoordinator, pause: Callable[[TP], None]) -> None:
        """Exactly-once (before ``start``): write the changelogs inside ``coordinator``'s
        transactions; ``pause(tp)`` holds an input partition back while its keys reload
        after an abort (it resumes once ``holds`` is false)."""
        self._produce = transactional_produce(coordinator)
        self._on_lost = coordinator.producer.doom
        self._pause = pause
        coordinator.add_busy(self.firing)
        coordinator.add_commit_listener(self.committed)
        coordinator.add_abort_listener(self.aborted)

    @property
    def multi_topic(self) -> bool:
        """Whether some keyed reactor joins several topics (needs the range assignor)."""
        return any(len(r.topics) > 1 for r in self.reactors.values())

    @staticmethod
    def keyed_topics(runtime: Runtime, accumulators: Iterable[str]) -> dict[str, list[str]]:
        """``{keyed reactor: [its input topics fed by these accumulators]}``."""
        names = set(accumulators)
        out: dict[str, list[str]] = {}
        for name, loop in runtime.reactors.items():
            if not isinstance(loop, KeyedReactorLoop):
                continue
            topics = sorted(
                {
                    topic
                    for accumulator in loop.spec.accumulators
                    if accumulator in names
                    and (topic := runtime.accumulators[accumulator].spec.topic) is not None
                }
            )
            if topics:
                out[name] = topics
        return out

    async def start(self, runtime: Runtime, accumulators: Iterable[str]) -> None:
        """Check co-partitioning, create the changelog topics, attach the writers."""
        self._runtime = runtime
        wanted = self.keyed_topics(runtime, accumulators)
        if not wanted:
            return
        admin = AdminClient(
            {
                **self._client_config,
                "bootstrap.servers": self.bootstrap_servers,
                "logger": LIBRDKAFKA_LOGGER,
            }
        )
        every = sorted({topic for topics in wanted.values() for topic in topics})
        counts = await asyncio.to_thread(partition_counts, admin, every)
        produce = self._produce
        if produce is None:
            self.producer = DeliveryProducer(
                self.bootstrap_servers, self._client_config or None, name="changelog"
            )
            self.producer.on_fatal = lambda error: runtime.fail(
                "changelog-producer", f"fatal Kafka error: {error}"
            )
            self.producer.start()
            produce = producer_produce(self.producer)
        for name, topics in wanted.items():
            partitions = check_co_partitioned(name, {t: counts[t] for t in topics})
            topic = changelog_topic(self.group, name)
            await asyncio.to_thread(ensure_changelog, admin, topic, partitions)
            loop = runtime.reactors[name]
            assert isinstance(loop, KeyedReactorLoop)
            loop.changelog = ChangelogWriter(topic, name, produce, self._on_lost)
            models = value_models(runtime, loop.spec.accumulators)
            reactor = _Reactor(loop, topics, topic, partitions, models)
            self.reactors[name] = reactor
            for input_topic in topics:
                self._by_topic.setdefault(input_topic, []).append(reactor)
            log.info(
                "keyed state backed by a changelog",
                reactor=name,
                changelog=topic,
                inputs=topics,
                partitions=partitions,
            )

    # -- the source's rebalance hooks (event loop) -------------------------------------
    def holds(self, tp: TP) -> bool:
        """Whether ``tp`` must stay paused: a reactor it feeds is restoring its partition."""
        return any(tp[1] in r.restoring for r in self._by_topic.get(tp[0], ()))

    def assigned(self, tps: Iterable[TP]) -> None:
        """Start restoring the newly assigned partitions (``holds`` is true until done)."""
        for topic, partition in tps:
            for reactor in self._by_topic.get(topic, ()):
                if partition in reactor.restoring or partition in reactor.restored:
                    continue
                self._start_restore(reactor, partition)

    def revoked(self, tps: Iterable[TP]) -> None:
        """Drop the keys of revoked partitions (and any restore still running for them)."""
        for topic, partition in tps:
            for reactor in self._by_topic.get(topic, ()):
                task = reactor.restoring.pop(partition, None)
                if task is not None:
                    task.cancel()
                if partition in reactor.restored:
                    reactor.restored.discard(partition)
                    dropped = reactor.loop.drop_partition(partition)
                    log.info(
                        "keyed state dropped",
                        reactor=reactor.loop.name,
                        partition=partition,
                        keys=dropped,
                    )

    def _start_restore(self, reactor: _Reactor, partition: int) -> None:
        task = asyncio.get_running_loop().create_task(
            self._restore(reactor, partition),
            name=f"restore:{reactor.loop.name}[{partition}]",
        )
        reactor.restoring[partition] = task
        task.add_done_callback(lambda t, r=reactor, p=partition: self._restore_done(r, p, t))

    # -- exactly-once hooks (see ``join``) ---------------------------------------------
    def firing(self) -> bool:
        """Whether a keyed reactor fires, or owes a fire (a commit waits for it)."""
        return any(r.loop.busy for r in self.reactors.values())

    def committed(self) -> None:
        """A transaction committed: what the writers wrote is the committed state now."""
        for reactor in self.reactors.values():
            writer = reactor.loop.changelog
            if isinstance(writer, ChangelogWriter):
                writer.touched.clear()

    def aborted(self, rewound: Iterable[TP]) -> None:
        """A transaction aborted: the keys of the partitions that took inputs since the
        last commit (``rewound``) or whose changelog was written since are dropped and
        restored from the committed changelog; their inputs stay paused meanwhile."""
        rewound = list(rewound)
        for reactor in self.reactors.values():
            writer = reactor.loop.changelog
            touched = writer.touched if isinstance(writer, ChangelogWriter) else set()
            partitions = {p for t, p in rewound if t in reactor.topics} | touched
            touched.clear()
            for partition in sorted(partitions):
                if partition not in reactor.restored:
                    continue  # not ours, or restoring the committed state already
                reactor.restored.discard(partition)
                dropped = reactor.loop.drop_partition(partition)
                self._start_restore(reactor, partition)
                for topic in reactor.topics:
                    self._pause((topic, partition))
                self.reloads += 1
                log.info(
                    "keyed state reloads after an abort",
                    reactor=reactor.loop.name,
                    partition=partition,
                    dropped=dropped,
                )

    async def _restore(self, reactor: _Reactor, partition: int) -> None:
        started = time.monotonic()
        keys = await asyncio.to_thread(
            read_partition,
            self.bootstrap_servers,
            reactor.changelog,
            partition,
            config=self._client_config,
            timeout=self.restore_timeout,
        )
        if reactor.restoring.get(partition) is not asyncio.current_task():
            return  # revoked meanwhile
        count = reactor.loop.restore(partition, as_models(reactor.loop.name, keys, reactor.models))
        seconds = time.monotonic() - started
        reactor.loop.restores += 1
        reactor.loop.last_restore_seconds = seconds
        reactor.restored.add(partition)
        log.info(
            "keyed state restored",
            reactor=reactor.loop.name,
            changelog=reactor.changelog,
            partition=partition,
            keys=count,
            seconds=round(seconds, 3),
        )

    def _restore_done(self, reactor: _Reactor, partition: int, task: asyncio.Task[None]) -> None:
        if reactor.restoring.get(partition) is task:
            del reactor.restoring[partition]
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            log.error(
                "keyed state restore failed",
                reactor=reactor.loop.name,
                changelog=reactor.changelog,
                partition=partition,
                error=repr(error),
            )
            if self._runtime is not None:  # never run on with a partition paused for good
                self._runtime.fail(
                    f"changelog:{reactor.loop.name}",
                    f"restoring {reactor.changelog}[{partition}] failed: {error}",
                )
            return
        self.on_restored()

    async def close(self) -> None:
        """Stop restores, flush the changelog records still in flight."""
        for reactor in self.reactors.values():
            for task in reactor.restoring.values():
                task.cancel()
        if self.producer is not None:
            await self.producer.close()
            self.producer = None

    def health(self) -> dict[str, Any]:
        return {
            name: {
                "changelog": r.changelog,
                "reloads_after_abort": self.reloads,
                "restoring": sorted(r.restoring),
                "restored": sorted(r.restored),
                **(
                    r.loop.changelog.health()
                    if isinstance(r.loop.changelog, ChangelogWriter)
                    else {}
                ),
            }
            for name, r in self.reactors.items()
        }
