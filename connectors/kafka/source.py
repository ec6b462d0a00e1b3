"""The Kafka source: one consumer per worker feeding stream and batch accumulators.

All consumer calls run in one dedicated thread (a single-thread executor), so they are
serialized; decoding and delivering messages happens on the event loop. Offsets are
committed only once the events they carry are fully handled (see ``OffsetTracker``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable, Iterable
from functools import partial
from typing import TYPE_CHECKING, Any

import orjson
import structlog
from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from headrace.accumulators import (
    AccumulatorInputError,
    AccumulatorKind,
    AccumulatorRunner,
    BatchRunner,
)
from headrace.accumulators.channel import Ack, SharedAck
from headrace.accumulators.keys import MESSAGE_KEY
from headrace.connectors.dead_letters import DeadLetter
from headrace.connectors.kafka.call_thread import CallThread
from headrace.connectors.kafka.commits import Commits
from headrace.connectors.kafka.flow import (
    Budget,
    PartitionFlow,
    label,
    labelled,
    labels,
    released_on_assign,
)
from headrace.connectors.kafka.global_table import GlobalTables, split_tables
from headrace.connectors.kafka.keyed_changelogs import KeyedChangelogs, client_settings
from headrace.connectors.kafka.offsets import OffsetRange, OffsetTracker, PartitionOffsets
from headrace.connectors.kafka.producer import LIBRDKAFKA_LOGGER, READ_AHEAD, ErrorLog
from headrace.connectors.kafka.transactions import check_guarantee

if TYPE_CHECKING:
    from headrace.connectors.base import SourceContext
    from headrace.connectors.kafka.transactions import TransactionCoordinator

log = structlog.get_logger("headrace.kafka")

TP = tuple[str, int]
CONSUMER_DEFAULTS: dict[str, Any] = {
    "auto.offset.reset": "earliest",
    "logger": LIBRDKAFKA_LOGGER,
    # A fetch the broker holds open delays everything behind it on that connection,
    # including the fetch that follows a resume: keep the long poll short.
    "fetch.wait.max.ms": 100,
    **READ_AHEAD,
}
FORCED: dict[str, Any] = {"enable.auto.commit": False, "enable.auto.offset.store": False}
PREVIEW_BYTES = 1024
"""Dead letters of oversized messages carry only this much of the value."""
DEFAULT_MAX_IN_FLIGHT_PER_PARTITION = 100_000
"""Offsets taken but not handled per partition before it pauses (a stuck head)."""
DEFAULT_MAX_BATCH_EVENTS = 200_000
"""Events a batch accumulator holds (buffered + in unhandled batches) before pausing."""
DEFAULT_MAX_DEAD_LETTERS_IN_FLIGHT = 1_000
DEFAULT_MAX_DEAD_LETTER_BYTES = 64 * 1024 * 1024
"""Message dead letters being sent (count, payload bytes) before every partition pauses."""


class _Route:
    """The runners fed by one topic, and how much room they have left.

    A batch runner's room is bounded twice: by its buffer, and by ``max_batch_events``
    events held in all (buffered, or in batches not handled yet). No route has room while
    the source's dead letters in flight are over their budget.
    """

    __slots__ = (
        "capacity",
        "dead_letters",
        "is_async",
        "max_batch_events",
        "max_depth",
        "runners",
        "topic",
        "wants_key",
    )

    def __init__(
        self,
        topic: str,
        runners: list[AccumulatorRunner],
        max_batch_events: int = 1 << 30,
        dead_letters: Budget | None = None,
    ) -> None:
        self.topic = topic
        self.runners = runners
        self.max_batch_events = max_batch_events
        self.dead_letters = dead_letters or Budget(1 << 30, 1 << 62)
        self.is_async = any(
            r.spec.kind is AccumulatorKind.STREAM and r.spec.is_async for r in runners
        )
        self.wants_key = any(r.spec.key == MESSAGE_KEY for r in runners)
        """A runner keys by the message key: read ``msg.key()`` (else never)."""
        self.max_depth = min((r.spec.max_depth for r in runners), default=0)
        """The lowest depth limit of the runners (a message with no more brackets than
        this is within every runner's limit)."""
        self.capacity = min(
            min((c.maxsize for c in r.channels), default=1 << 30)
            if not isinstance(r, BatchRunner)
            else min(r.capacity, max_batch_events)
            for r in runners
        )

    def room(self) -> int:
        """How many more events every runner takes without waiting."""
        if self.dead_letters.full:
            return 0
        room = 1 << 30
        for runner in self.runners:
            if not runner.has_space():
                return 0
            if isinstance(runner, BatchRunner):
                room = min(
                    room,
                    runner.capacity - runner.buffered,
                    self.max_batch_events - runner.held,
                )
            else:
                for channel in runner.channels:
                    room = min(room, channel.maxsize - channel.depth)
        return room

    def drained(self) -> bool:
        """Room enough to resume a paused partition: at least half the capacity."""
        return self.room() * 2 >= self.capacity

    def batched(self) -> AccumulatorRunner | None:
        """The route's one runner when a run of messages can go to it as one batch
        (``offer_many``): a plain stream accumulator with a sync function and one channel."""
        if len(self.runners) != 1 or self.is_async:
            return None
        runner = self.runners[0]
        if type(runner) is not AccumulatorRunner or len(runner.channels) != 1:
            return None
        return runner


class _Run:
    """The messages of one partition taken for a batched route, not delivered yet."""

    __slots__ = ("events", "keys", "messages", "shallows")

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.events: list[Any] = []
        self.shallows: list[bool] = []
        self.keys: list[Any] = []

    def clear(self) -> None:
        self.messages.clear()
        self.events.clear()
        self.shallows.clear()
        self.keys.clear()


class KafkaSource:
    """Consumes the topics of stream accumulators and of batch accumulators with a topic.

    ``accumulators`` limits it to those names; by default it takes every running
    accumulator with a Kafka topic. Poison messages (null, too large, not JSON, rejected
    by the accumulator) go to ``runtime.dead_letters`` and count as handled. A full
    channel pauses the partitions feeding it until the channel drains.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        group_id: str,
        *,
        accumulators: Iterable[str] | None = None,
        consumer_config: dict[str, Any] | None = None,
        commit_interval: float = 1.0,
        batch_size: int = 500,
        poll_timeout: float = 0.1,
        max_message_bytes: int = 1_000_000,
        revoke_timeout: float = 5.0,
        pause_after: float = 0.2,
        max_in_flight_per_partition: int = DEFAULT_MAX_IN_FLIGHT_PER_PARTITION,
        max_batch_events: int = DEFAULT_MAX_BATCH_EVENTS,
        max_dead_letters_in_flight: int = DEFAULT_MAX_DEAD_LETTERS_IN_FLIGHT,
        max_dead_letter_bytes: int = DEFAULT_MAX_DEAD_LETTER_BYTES,
        guarantee: str = "at_least_once",
        transactions: TransactionCoordinator | None = None,
    ) -> None:
        self.guarantee = check_guarantee(guarantee, "KafkaSource: guarantee")
        if (self.guarantee == "exactly_once") != (transactions is not None):
            raise ValueError(
                "KafkaSource: guarantee='exactly_once' needs transactions="
                "TransactionCoordinator(...) (the worker's transactional producer), and "
                "transactions= needs guarantee='exactly_once'"
            )
        self.transactions = transactions
        self.in_callback = False
        self._callback_metadata: Any = None
        self._seeks: dict[TP, int | None] = {}
        for name, cap in (
            ("max_in_flight_per_partition", max_in_flight_per_partition),
            ("max_batch_events", max_batch_events),
            ("max_dead_letters_in_flight", max_dead_letters_in_flight),
            ("max_dead_letter_bytes", max_dead_letter_bytes),
        ):
            if not isinstance(cap, int) or cap < 1:
                raise ValueError(f"KafkaSource: {name} must be an integer >= 1, got {cap!r}")
        self.max_in_flight_per_partition = max_in_flight_per_partition
        self.max_batch_events = max_batch_events
        self.dead_letter_budget = Budget(max_dead_letters_in_flight, max_dead_letter_bytes)
        self._names = frozenset(accumulators) if accumulators is not None else None
        self._errors = ErrorLog("consumer")
        self.accumulators: frozenset[str] = self._names or frozenset()
        self.group_id = group_id
        self.commit_interval = commit_interval
        self.batch_size = batch_size
        self.poll_timeout = poll_timeout
        self.max_message_bytes = max_message_bytes
        self.revoke_timeout = revoke_timeout
        self.pause_after = pause_after
        self.config: dict[str, Any] = {
            **CONSUMER_DEFAULTS,
            "partition.assignment.strategy": "cooperative-sticky",
            **(consumer_config or {}),
            **FORCED,
            "bootstrap.servers": bootstrap_servers,
            "group.id": group_id,
            "error_cb": self._on_client_error,
            "on_commit": self._on_commit_thread,
        }
        if transactions is not None:  # outputs of aborted transactions are never inputs
            self.config["isolation.level"] = "read_committed"
            transactions.attach(self)
        strategy = str(self.config["partition.assignment.strategy"])
        self._cooperative = "cooperative" in strategy
        self._strategy_given = "partition.assignment.strategy" in (consumer_config or {})
        self.changelogs = KeyedChangelogs(
            bootstrap_servers,
            group_id,
            on_restored=self._on_space,
            client_config=client_settings(self.config),
        )
        """The changelogs of the keyed reactors fed here (durable per-key state)."""
        if transactions is not None:  # their records commit with the outputs and offsets
            self.changelogs.join(transactions, self._hold_back)
        self.tables = GlobalTables(bootstrap_servers, client_settings(self.config))
        """The global (table) accumulators of this source, read outside the group."""
        self.tracker = OffsetTracker()
        self._routes: dict[str, _Route] = {}
        self._runtime: SourceContext | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._executor: CallThread | None = None
        self._consumer: Consumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._resume_scheduled = False
        self._space = asyncio.Event()
        self._dead_letter_tasks: set[asyncio.Task[None]] = set()
        self._rooms: dict[str, int] = {}
        self._lag: dict[TP, int] = {}
        self.stats = {
            "messages": 0,
            "dead_letters": 0,
            "pauses": 0,
            "resumes": 0,
            "commits": 0,
            "commit_failures": 0,
            "rebalances": 0,
            "errors": 0,
        }
        self.flow = PartitionFlow(self.stats)
        self.commits = Commits(self.tracker, commit_interval, TopicPartition, self.stats)

    # -- wiring ------------------------------------------------------------------------
    def _select(self, runtime: SourceContext) -> dict[str, list[AccumulatorRunner]]:
        kinds = (AccumulatorKind.STREAM, AccumulatorKind.BATCH)
        if self._names is None:
            names = [  # an accumulator that names another consumer group is not ours
                name
                for name, runner in runtime.accumulators.items()
                if runner.spec.topic and runner.spec.kind in kinds
                if runner.spec.source_type == "kafka" and runner.spec.group in (None, self.group_id)
            ]
        else:
            names = sorted(self._names)
            for name in names:
                runner = runtime.accumulators.get(name)
                if runner is None:
                    known = ", ".join(sorted(runtime.accumulators)) or "none"
                    raise ValueError(
                        f"KafkaSource: accumulator {name!r} is not running (running: {known})"
                    )
                if not runner.spec.topic or runner.spec.kind not in kinds:
                    raise ValueError(
                        f"KafkaSource: accumulator {name!r} ({runner.spec.kind.value}) has no "
                        "Kafka topic; only stream and batch accumulators with a topic can be fed"
                    )
        topics: dict[str, list[AccumulatorRunner]] = {}
        for name in names:
            runner = runtime.accumulators[name]
            topics.setdefault(runner.spec.topic, []).append(runner)  # type: ignore[arg-type]
        return topics

    async def start(self, runtime: SourceContext) -> None:
        """Subscribe to the topics of the accumulators and start fetching."""
        self._runtime = runtime
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        topics, tables = split_tables(self._select(runtime))
        await self.tables.start(runtime, tables)
        self.accumulators = frozenset(r.name for rs in topics.values() for r in rs)
        self._routes = {
            topic: _Route(topic, runners, self.max_batch_events, self.dead_letter_budget)
            for topic, runners in topics.items()
        }
        if not topics:
            log.warning("kafka source has no accumulator with a topic", group=self.group_id)
            return
        for route in self._routes.values():
            for runner in route.runners:
                for channel in runner.channels:
                    channel.add_space_listener(self._on_space)
        await self.changelogs.start(runtime, self.accumulators)
        if self.changelogs.multi_topic:
            self._use_range_assignor()
        self._executor = CallThread("headrace-kafka-consumer")
        self._stopping = False
        await self._call(self._open, sorted(topics))
        if self.transactions is not None:
            await self.transactions.start(runtime)
        self._task = asyncio.create_task(self._fetch_loop(), name="kafka-source")
        runtime.supervise(self._task, "kafka-source")
        log.info("kafka source started", group=self.group_id, topics=sorted(topics))

    def _use_range_assignor(self) -> None:
        """A keyed reactor joins topics: the range assignor gives a worker the same partition
        numbers of every topic (confluent-kafka cannot plug a co-locating assignor)."""
        strategy = self.config["partition.assignment.strategy"]
        if self._strategy_given and strategy != "range":
            raise ValueError(
                f"consumer group {self.group_id!r}: a keyed reactor joins several topics, which "
                f"needs partition.assignment.strategy=range (set: {strategy!r}) so that one "
                "worker owns the same partition of each"
            )
        self.config["partition.assignment.strategy"] = "range"
        self._cooperative = False
        log.info(
            "range assignor for a keyed join: every rebalance revokes all partitions "
            "(cooperative-sticky would not co-locate the topics' partitions)",
            group=self.group_id,
        )

    async def change_accumulators(
        self, runtime: SourceContext, add: Iterable[str] = (), remove: Iterable[str] = ()
    ) -> None:
        """Feed more or fewer accumulators while running (packages loaded or unloaded).

        Subscribes to the new topic set: with cooperative-sticky assignment that is an
        incremental rebalance, so partitions of the topics that stay are neither revoked
        nor moved and keep their offsets; partitions of dropped topics are revoked, which
        waits for their in-flight events and commits what was handled.
        """
        gone = set(remove)
        runners: dict[str, list[AccumulatorRunner]] = {}
        for route in self._routes.values():
            runners[route.topic] = [r for r in route.runners if r.name not in gone]
        self._names = (self._names or frozenset(self.accumulators)) - gone | frozenset(add)
        for name, topic_runners in self._select(runtime).items():
            runners[name] = topic_runners
        self._routes = {
            topic: _Route(topic, rs, self.max_batch_events, self.dead_letter_budget)
            for topic, rs in runners.items()
            if rs
        }
        self.accumulators = frozenset(r.name for rs in runners.values() for r in rs)
        for name in add:
            for channel in runtime.accumulators[name].channels:
                channel.add_space_listener(self._on_space)
        topics = sorted(self._routes)
        if self._consumer is None:
            if topics and self._task is None:
                await self.start(runtime)
            return
        await self._call(self._resubscribe, topics)
        log.info("kafka source topics changed", group=self.group_id, topics=topics)

    def _resubscribe(self, topics: list[str]) -> None:
        assert self._consumer is not None
        if topics:
            self._consumer.subscribe(
                topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
            )
        else:
            self._consumer.unsubscribe()

    def _open(self, topics: list[str]) -> None:
        self._consumer = Consumer(self.config)
        self._consumer.subscribe(
            topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn`` on the consumer thread (every consumer call goes through here)."""
        assert self._executor is not None
        return await self._executor.call(fn, *args)

    # -- fetching ----------------------------------------------------------------------
    def _fetch(self, limit: int) -> list[Message]:
        """Consumer thread: take what is ready; when nothing is, wait for the first message.

        ``consume(n, timeout)`` waits to fill the whole batch, so it is only called
        without a timeout; ``poll`` returns as soon as one message arrives.
        """
        consumer = self._consumer
        assert consumer is not None
        messages = consumer.consume(limit, 0)
        if messages:
            return messages
        first = consumer.poll(self.poll_timeout)
        if first is None:
            return []
        return [first, *consumer.consume(limit - 1, 0)] if limit > 1 else [first]

    async def _fetch_loop(self) -> None:
        """Fetch, hand over, resume, commit, until stopping (supervised as "kafka-source").

        A Kafka error that is not fatal is logged and retried; a fatal one fails
        "kafka-consumer". Anything else is a bug: it is logged and ends the task, which the
        supervisor turns into a failed worker (never a live process with a dead consumer).
        """
        try:
            while not self._stopping:
                try:
                    limit = await self._wait_for_room()
                    if self.flow.to_pause:
                        pauses = self.flow.take_pending()
                        try:
                            failed = await self._call(self._pause_and_seek, pauses)
                        except BaseException:
                            self.flow.applied(pauses, pauses)
                            raise
                        self.flow.applied(pauses, failed)  # failed: out until it works
                    if self.transactions is not None:
                        await self.transactions.gate(self)  # parked while a transaction ends
                    messages = await self._call(self._fetch, limit)
                except KafkaException as error:
                    self.stats["errors"] += 1
                    if self._fatal(error.args[0] if error.args else None):
                        await self._idle_until_stopped()
                        return
                    log.warning("kafka consume failed", group=self.group_id, error=str(error))
                    await asyncio.sleep(self.poll_timeout)
                    continue
                if messages:
                    await self._handle(messages)
                if self.flow.paused:
                    self._try_resume()
                if self.transactions is None and self.commits.due():
                    await self._commit(asynchronous=True)
        except Exception:
            self.stats["errors"] += 1
            log.exception("kafka fetch loop failed", group=self.group_id)
            raise

    async def _idle_until_stopped(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.poll_timeout)

    def _fatal(self, error: Any) -> bool:
        """A fatal client error (any thread): fail "kafka-consumer", the worker stops."""
        if not isinstance(error, KafkaError) or not error.fatal():
            return False
        if self._runtime is not None:
            self._runtime.fail("kafka-consumer", f"fatal consumer error: {error}")
        return True

    def _on_client_error(self, error: KafkaError) -> None:
        """``error_cb`` (consumer thread): log without flooding; a fatal error fails."""
        self._errors(error)
        self._fatal(error)

    async def _wait_for_room(self) -> int:
        """Wait until every route being fetched has room for a batch; returns the batch size.

        A route without room is paused at once when others still take events, or after
        ``pause_after`` seconds when nothing could be fetched anyway (a short wait lets a
        busy reactor catch up without purging what librdkafka prefetched).
        """
        deadline: float | None = None
        while True:
            limit = self.batch_size
            short: list[_Route] = []
            fetching = 0
            for route in self._routes.values():
                if not self.flow.active(route.topic):
                    continue
                room = route.room()
                if room < min(self.batch_size, max(1, route.capacity // 2)):
                    short.append(route)
                else:
                    fetching += 1
                    limit = min(limit, room)
            if not short:
                return max(1, limit)
            now = time.monotonic()
            deadline = deadline if deadline is not None else now + self.pause_after
            if fetching or now >= deadline or self._stopping:
                for route in short:
                    for tp in self.flow.active(route.topic):
                        self._pause(tp, None)
                continue
            self._space.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._space.wait(), deadline - now)

    # -- handling messages (event loop) ------------------------------------------------
    async def _handle(self, messages: list[Message]) -> None:
        """Decode and deliver a batch; per partition run, look-ups happen once.

        The messages of one partition run share one ``OffsetRange``: it is every one of
        their acks (no closure per message) and is closed when the run ends. A route with
        an async accumulator awaits per message: each of its messages is a range of its own,
        closed before the await, so no range is open while other code runs.

        A route with one plain sync stream accumulator (``_Route.batched``) gets each run
        as one ``offer_many``: the run is delivered when the partition changes, before
        the route's room is looked at again, and at the end of the batch.
        """
        routes = self._routes
        flow = self.flow
        paused = flow.paused
        assigned = flow.assigned
        loads = orjson.loads
        limit = self.max_message_bytes
        cap = self.max_in_flight_per_partition
        self._rooms = rooms = {}  # cleared when dead letters run out of budget
        left = 0  # offsets the current partition may still take (in-flight cap)
        count = 0
        current: tuple[str, int] | None = None
        skip = True
        route: _Route | None = None
        state: PartitionOffsets | None = None
        window: OffsetRange | None = None  # the open range of the current run
        exactly_once = self.transactions is not None
        taken = 0  # offsets in it
        acks: tuple[Ack, ...] = ()
        run = _Run()
        batched: AccumulatorRunner | None = None  # the current route's, if batched
        own_ranges = False  # each message a range of its own (async route, exactly-once)
        max_depth = shallow_bytes = 0  # the current route's
        wants_key = False
        add_message, add_event, add_shallow, add_key = (
            run.messages.append,
            run.events.append,
            run.shallows.append,
            run.keys.append,
        )
        try:
            for msg in messages:
                if msg.error() is not None:
                    self._on_message_error(msg)
                    continue
                topic = msg.topic()
                partition = msg.partition()
                if current is None or partition != current[1] or topic != current[0]:
                    if run.messages:
                        self._deliver_run(route, batched, run, acks, current)
                    if window is not None:
                        window.close(taken)
                        window = None
                    current = (topic, partition)
                    route = routes.get(topic)
                    batched = None if route is None or exactly_once else route.batched()
                    if route is not None:
                        own_ranges = route.is_async or exactly_once
                        max_depth, wants_key = route.max_depth, route.wants_key
                        # the longest document that cannot be nested deeper than max_depth
                        # (each level takes an opening and a closing bracket)
                        shallow_bytes = 2 * max_depth + 1
                    skip = route is None or current not in assigned
                    state = None if skip else self.tracker.partition(current)
                    left = 0 if state is None else cap - state.in_flight
                if skip:
                    continue  # not ours any more
                assert route is not None and state is not None
                offset = msg.offset()
                if current in paused:
                    # Fetched before the pause took effect: rewind the partition to the first
                    # offset not taken yet, so that nothing is skipped for good.
                    flow.rewind(current, state.last_begun + 1 if state.last_begun >= 0 else offset)
                    continue
                room = rooms.get(topic, 0)
                if room <= 0:
                    if run.messages:  # the room must count what the run holds
                        self._deliver_run(route, batched, run, acks, current)
                    room = route.room()
                    if room <= 0:  # full: pause, and fetch from here again on resume
                        self._pause(
                            current, state.last_begun + 1 if state.last_begun >= 0 else offset
                        )
                        continue
                rooms[topic] = room - 1
                if offset <= state.last_begun:
                    continue  # already taken (fetched again after a seek)
                if left <= 0:  # too many in flight behind a stuck head: pause, fetch here again
                    self._pause(current, state.last_begun + 1 if state.last_begun >= 0 else offset)
                    continue
                left -= 1
                count += 1
                if own_ranges:
                    # A closed range of its own: an async route awaits below, and under
                    # exactly-once a commit that leaves held inputs out stops each
                    # partition right below its lowest held offset, which a range
                    # spanning done and held messages would hold back to its first.
                    ack = state.begin(offset)
                    acks = (ack,)
                else:
                    if window is None:
                        window = state.open(offset)
                        acks = (window,)
                        taken = 1
                    else:
                        state.last_begun = offset
                        taken += 1
                    ack = window
                value = msg.value()
                try:
                    if value is None:
                        self._dead_letter(route, msg, "null value", ack)
                        continue
                    size = len(value)
                    if size > limit:
                        reason = f"value of {size} bytes exceeds max_message_bytes={limit}"
                        self._dead_letter(route, msg, reason, ack, value[:PREVIEW_BYTES])
                        continue
                    try:
                        event = loads(value)
                    except orjson.JSONDecodeError as error:
                        self._dead_letter(route, msg, f"not JSON: {error}", ack)
                        continue
                    # Every level of nesting opens with { or [: this few is never too deep
                    # (brackets inside strings only overcount), so no walk over the event.
                    shallow = (
                        size <= shallow_bytes or value.count(b"{") + value.count(b"[") <= max_depth
                    )
                    if batched is not None:
                        add_message(msg)
                        add_event(event)
                        add_shallow(shallow)
                        if wants_key:
                            add_key(msg.key())
                        continue
                    key = msg.key() if wants_key else None
                    runners = route.runners
                    if len(runners) == 1:
                        runner = runners[0]
                        try:
                            if route.is_async:
                                await runner.offer(event, acks, key, partition)
                            else:
                                runner.offer_nowait(event, acks, key, partition, shallow)
                        except AccumulatorInputError as error:
                            self._refused(route, msg, error, ack, runner.name)
                    else:
                        await self._offer_many(route, msg, event, ack, key, partition, shallow)
                except Exception as error:  # never drop a taken message silently
                    self._refused(route, msg, error, ack)
        finally:
            if run.messages:
                self._deliver_run(route, batched, run, acks, current)
            if window is not None:
                window.close(taken)
            self.stats["messages"] += count

    def _deliver_run(
        self,
        route: _Route | None,
        runner: AccumulatorRunner | None,
        run: _Run,
        acks: tuple[Ack, ...],
        tp: TP | None,
    ) -> None:
        """Deliver a batched route's run (``offer_many``); dead-letter what it refused
        (``_refused``). An error of the delivery itself is a bug: it propagates and fails
        the fetch loop, with the run's offsets never acknowledged (consumed again after a
        restart)."""
        assert route is not None and runner is not None and tp is not None
        try:
            refused = runner.offer_many(
                run.events, run.shallows, run.keys if route.wants_key else None, acks, tp[1]
            )
            for index, error in refused:
                self._refused(route, run.messages[index], error, acks[0], runner.name)
        finally:
            run.clear()

    def _refused(
        self,
        route: _Route,
        msg: Message,
        error: Exception,
        ack: Callable[[], None],
        accumulator: str | None = None,
    ) -> None:
        """Dead-letter a taken message that was not delivered: an ``AccumulatorInputError``
        with its reason (and ``accumulator``); anything else is a bug, logged with its
        traceback and dead-lettered as an unexpected error."""
        if isinstance(error, AccumulatorInputError):
            self._dead_letter(route, msg, error.reason, ack, accumulator=accumulator)
            return
        log.error(
            "unexpected error handling a message",
            topic=msg.topic(),
            partition=msg.partition(),
            offset=msg.offset(),
            exc_info=error,
        )
        self._dead_letter(route, msg, f"unexpected error: {error!r}", ack)

    async def _offer_many(
        self,
        route: _Route,
        msg: Message,
        event: Any,
        ack: Callable[[], None],
        key: Any,
        partition: int,
        shallow: bool,
    ) -> None:
        shared = SharedAck((ack,), len(route.runners))
        for runner in route.runners:
            try:
                if runner.spec.kind is AccumulatorKind.STREAM and runner.spec.is_async:
                    await runner.offer(event, (shared,), key, partition)
                else:
                    runner.offer_nowait(event, (shared,), key, partition, shallow)
            except AccumulatorInputError as error:
                self._dead_letter(route, msg, error.reason, shared, accumulator=runner.name)

    def _on_message_error(self, msg: Message) -> None:
        error: KafkaError = msg.error()
        if error.code() == KafkaError._PARTITION_EOF:
            return
        self.stats["errors"] += 1
        self._fatal(error)
        log.warning(
            "kafka consumer error",
            error=str(error),
            topic=msg.topic(),
            partition=msg.partition(),
            retriable=error.retriable(),
        )

    # -- dead letters ------------------------------------------------------------------
    def _dead_letter(
        self,
        route: _Route,
        msg: Message,
        reason: str,
        ack: Callable[[], None],
        payload: bytes | None = None,
        accumulator: str | None = None,
    ) -> None:
        letter = DeadLetter(
            kind="message",
            reason=reason,
            payload=msg.value() if payload is None else payload,
            accumulator=accumulator or ",".join(r.name for r in route.runners),
            topic=msg.topic(),
            partition=msg.partition(),
            offset=msg.offset(),
        )
        size = len(letter.payload) if isinstance(letter.payload, bytes | str) else 0
        if self.dead_letter_budget.add(size):
            self._rooms.clear()  # the batch being handled takes no more from here on
        task = asyncio.get_running_loop().create_task(self._send_dead_letter(letter, ack))
        self._dead_letter_tasks.add(task)
        task.add_done_callback(partial(self._dead_letter_done, size))

    def _dead_letter_done(self, size: int, task: asyncio.Task[None]) -> None:
        self._dead_letter_tasks.discard(task)
        if self.dead_letter_budget.remove(size):
            self._on_space()  # reopened: paused partitions may resume

    async def _send_dead_letter(self, letter: DeadLetter, ack: Callable[[], None]) -> None:
        """Send until it is durable (the offset waits for it), then count it as handled."""
        assert self._runtime is not None
        delay = 0.1
        while True:
            try:
                await self._runtime.dead_letters.send(letter)
                break
            except Exception as error:
                log.warning(
                    "dead letter not sent; retrying",
                    topic=letter.topic,
                    partition=letter.partition,
                    offset=letter.offset,
                    error=str(error),
                )
                if isinstance(letter.payload, bytes) and len(letter.payload) > PREVIEW_BYTES:
                    letter = dataclasses.replace(letter, payload=letter.payload[:PREVIEW_BYTES])
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        self.stats["dead_letters"] += 1
        self._runtime.observers.on_dead_letter(letter)
        ack()

    # -- backpressure ------------------------------------------------------------------
    def _pause(self, tp: TP, offset: int | None) -> None:
        """Stop taking ``tp``; before the next fetch it is paused and, with an offset,
        rewound to it (the first event not delivered)."""
        self.flow.pause(tp, offset)

    def _hold_back(self, tp: TP) -> None:
        """Pause an assigned ``tp`` until it can resume (its keyed state reloads)."""
        if tp in self.flow.assigned:
            self._pause(tp, None)

    def _pause_and_seek(self, pauses: dict[TP, int | None]) -> dict[TP, int | None]:
        """Consumer thread: pause, then seek back; returns what failed (to try again)."""
        consumer = self._consumer
        assert consumer is not None
        try:
            current = {(tp.topic, tp.partition) for tp in consumer.assignment()}
            pauses = {tp: offset for tp, offset in pauses.items() if tp in current}
            if pauses:
                consumer.pause([TopicPartition(t, p) for t, p in pauses])
        except KafkaException as error:
            log.warning("pause failed", error=str(error))
            return pauses
        failed: dict[TP, int | None] = {}
        for (topic, partition), offset in pauses.items():
            if offset is None:
                continue
            try:  # pause first, then seek: librdkafka resumes at the seek offset
                consumer.seek(TopicPartition(topic, partition, offset))
            except KafkaException as error:
                log.warning("seek failed", partition=label((topic, partition)), error=str(error))
                failed[(topic, partition)] = offset
        return failed

    def _on_space(self) -> None:
        """Channel listener: called whenever a reactor takes a value."""
        self._space.set()
        if self.flow.paused and not self._resume_scheduled and self._loop is not None:
            self._resume_scheduled = True
            self._loop.call_soon(self._try_resume)

    def _try_resume(self) -> None:
        self._resume_scheduled = False
        if self._stopping or self._executor is None:
            return
        ready = self.flow.take_ready(self._can_resume)
        if not ready:
            return
        try:
            done = self._executor.submit(self._resume, ready)
        except RuntimeError:  # shut down
            self.flow.resume_failed(ready)
            return
        done.add_done_callback(partial(self._resumed, ready))

    def _can_resume(self, tp: TP) -> bool:
        route = self._routes.get(tp[0])
        return (
            route is not None
            and route.drained()
            and self.tracker.in_flight(tp) * 2 <= self.max_in_flight_per_partition
            and not self.changelogs.holds(tp)
        )

    def _resumed(self, ready: list[TP], done: concurrent.futures.Future[list[TP]]) -> None:
        """A resume that failed (or raised) leaves its partitions paused: hold them, try
        again later (the fetch loop retries held partitions every iteration)."""
        error = done.exception()
        if error is not None:
            log.warning("resume failed", partitions=labels(ready), error=repr(error))
        failed = ready if error is not None else done.result()
        if failed and self._loop is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self.flow.resume_failed, failed)

    def _resume(self, ready: list[TP]) -> list[TP]:
        """Consumer thread: resume ``ready``; returns those that could not be resumed."""
        consumer = self._consumer
        if consumer is None:
            return []
        current = {(tp.topic, tp.partition) for tp in consumer.assignment()}
        tps = [TopicPartition(t, p) for t, p in ready if (t, p) in current]
        if not tps:
            return []
        try:
            consumer.resume(tps)
        except KafkaException as error:
            log.warning("resume failed", error=str(error))
            return [(tp.topic, tp.partition) for tp in tps]
        # librdkafka's fetcher notices a resume only when its broker thread next wakes
        # (up to ~1 s later); a request to each partition's leader wakes it now.
        for tp in tps:
            with contextlib.suppress(KafkaException):
                consumer.get_watermark_offsets(tp, timeout=0.5)
        return []

    # -- rebalancing (consumer thread, hopping to the loop) ------------------------------
    def _on_loop(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn`` on the event loop from the consumer thread and wait for its result."""
        assert self._loop is not None
        if threading.get_ident() == self._loop_thread:
            return fn(*args)
        done: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def run() -> None:
            try:
                done.set_result(fn(*args))
            except BaseException as error:
                done.set_exception(error)

        try:
            self._loop.call_soon_threadsafe(run)
        except RuntimeError:  # loop closed
            return None
        return done.result(timeout=self.revoke_timeout + 30)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if self._cooperative:
            consumer.incremental_assign(partitions)
        else:
            consumer.assign(partitions)
        tps = [(p.topic, p.partition) for p in partitions]
        to_pause = self._on_loop(self._assigned_on_loop, tps) or []
        if to_pause:
            consumer.pause([TopicPartition(t, p) for t, p in to_pause])
        # librdkafka keeps a partition's pause flag across unassign (#1849): a partition
        # paused before it was revoked would come back paused for good. Resume explicitly
        # every new partition not meant to stay paused.
        released = released_on_assign(tps, to_pause)
        if released:
            self._resume_now(consumer, released, "assign")
        log.info(
            "partitions assigned",
            group=self.group_id,
            partitions=labels(tps),
            paused=labels(to_pause),
        )

    def _resume_now(self, consumer: Consumer, tps: list[TP], when: str) -> None:
        """Consumer thread, in a rebalance callback: clear librdkafka's pause flag."""
        try:
            consumer.resume([TopicPartition(t, p) for t, p in tps])
        except KafkaException as error:
            log.warning("resume failed", when=when, partitions=labels(tps), error=str(error))

    def _assigned_on_loop(self, tps: list[TP]) -> list[TP]:
        """Track new partitions; returns those to pause (ours already, or channel full)."""
        self.stats["rebalances"] += 1
        self.changelogs.assigned(tps)  # keyed state restores before the partition is fetched
        return self.flow.assign(tps, self._must_pause)

    def _must_pause(self, tp: TP) -> bool:
        route = self._routes.get(tp[0])
        return route is not None and (not route.drained() or self.changelogs.holds(tp))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        tps = [(p.topic, p.partition) for p in partitions]
        offsets: dict[TP, int] = {}
        assert self._loop is not None
        if self.transactions is not None:  # commit the open transaction before they go
            self._in_transaction_callback(consumer, self.transactions.commit("revoke", self))
        try:
            waited = asyncio.run_coroutine_threadsafe(self._revoke_on_loop(tps), self._loop)
            offsets = waited.result(timeout=self.revoke_timeout + 30)
        except (RuntimeError, concurrent.futures.TimeoutError) as error:
            log.warning("revoke: could not reach the event loop", error=repr(error))
        if offsets and self.transactions is None:
            self._commit_sync(consumer, offsets)
        self._on_loop(self._drop_on_loop, tps)
        self._resume_now(consumer, tps, "revoke")  # never hand a paused partition back
        if self._cooperative:
            consumer.incremental_unassign(partitions)
        else:
            consumer.unassign()
        log.info(
            "partitions revoked",
            group=self.group_id,
            partitions=labels(tps),
            committed=labelled(offsets),
        )

    async def _revoke_on_loop(self, tps: list[TP]) -> dict[TP, int]:
        """Give in-flight events of ``tps`` a moment to finish; return what to commit."""
        self.stats["rebalances"] += 1
        self.flow.revoke(tps)
        deadline = time.monotonic() + self.revoke_timeout
        while (
            not (self._runtime is not None and self._runtime.failed())
            and any(self.tracker.in_flight(tp) for tp in tps)
            and time.monotonic() < deadline
        ):
            await asyncio.sleep(0.01)
        return self.commits.take(tps)

    def _drop_on_loop(self, tps: list[TP]) -> None:
        self.changelogs.revoked(tps)
        self.tracker.revoke(tps)
        for tp in tps:
            self._lag.pop(tp, None)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        tps = [(p.topic, p.partition) for p in partitions]
        if self.transactions is not None:  # their outputs may be someone else's now: abort
            self._in_transaction_callback(consumer, self.transactions.abort("lost", self, tps))
        self._on_loop(self._lost_on_loop, tps)
        self._resume_now(consumer, tps, "lost")
        if self._cooperative:
            consumer.incremental_unassign(partitions)
        else:
            consumer.unassign()
        log.warning("partitions lost", group=self.group_id, partitions=labels(tps))

    def _lost_on_loop(self, tps: list[TP]) -> None:
        self.stats["rebalances"] += 1
        self.flow.revoke(tps)
        self._drop_on_loop(tps)

    # -- committing --------------------------------------------------------------------
    async def _commit(self, asynchronous: bool) -> None:
        offsets = self.commits.take()
        if asynchronous:
            await self._call(self._commit_async, offsets)
        elif offsets:
            committed = await self._call(self._commit_sync, self._consumer, offsets)
            self.commits.accepted(committed)

    def _commit_async(self, offsets: dict[TP, int]) -> None:
        consumer = self._consumer
        assert consumer is not None
        self.commits.commit_async(consumer, offsets)
        self._update_lag(consumer)

    def _commit_sync(self, consumer: Consumer | None, offsets: dict[TP, int]) -> dict[TP, int]:
        """Commit and wait (consumer thread); returns what the broker accepted."""
        return self.commits.commit_sync(consumer, offsets)

    def _on_commit_thread(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        """Async commit result (served on the consumer thread)."""
        accepted = self.commits.on_commit(error, partitions)
        if accepted and self._loop is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self.commits.accepted, accepted)

    def _update_lag(self, consumer: Consumer) -> None:
        try:
            assignment = consumer.assignment()
            if not assignment:
                self._lag = {}
                return
            lag: dict[TP, int] = {}
            for tp in consumer.position(assignment):
                marks = consumer.get_watermark_offsets(tp, cached=True)
                if marks and marks[1] >= 0 and tp.offset >= 0:
                    lag[(tp.topic, tp.partition)] = max(0, marks[1] - tp.offset)
            self._lag = lag
        except KafkaException:
            pass

    # -- lifecycle ---------------------------------------------------------------------
    async def stop(self) -> None:
        """Stop fetching; events already taken keep flowing through the reactors."""
        self._stopping = True
        if self._task is not None:
            task, self._task = self._task, None
            # a fetch loop that died was logged and failed through the supervisor already;
            # stopping goes on (drain, final commit, leave the group)
            with contextlib.suppress(Exception):
                await task

    async def close(self) -> None:
        """Send pending dead letters, commit what is done, leave the group."""
        self._stopping = True
        if self._dead_letter_tasks:
            await asyncio.gather(*list(self._dead_letter_tasks), return_exceptions=True)
        await self.tables.stop()
        if self._executor is None:
            await self.changelogs.close()
            return
        try:
            try:
                if self.transactions is not None:
                    await self.transactions.detach(self)
                else:
                    await self._commit(asynchronous=False)
            except Exception as error:  # e.g. ILLEGAL_GENERATION mid-rebalance: still leave
                self.stats["commit_failures"] += 1
                log.warning("final commit failed", group=self.group_id, error=repr(error))
            await self._call(self._close_consumer)
        finally:
            self._executor.shutdown(wait=True)
            self._executor = None
            await self.changelogs.close()
        log.info("kafka source closed", group=self.group_id, **self.stats)

    def _close_consumer(self) -> None:
        """Consumer thread: leave the group (LeaveGroup); never raises."""
        if self._consumer is not None:
            try:
                self._consumer.close()  # revokes (and commits) through _on_revoke
            except Exception as error:
                log.warning("consumer close failed", group=self.group_id, error=repr(error))
            finally:
                self._consumer = None

    def health(self) -> dict[str, Any]:
        return {
            "type": "kafka",
            "group": self.group_id,
            "guarantee": self.guarantee,
            **(
                {"transactions": self.transactions.health()}
                if self.transactions is not None
                else {}
            ),
            "topics": sorted(self._routes),
            "accumulators": sorted(self.accumulators),
            "assigned": labels(self.flow.assigned),
            "paused": labels(self.flow.paused),
            "lag": labelled(self._lag),
            "in_flight": self.tracker.in_flight(),
            "dead_letters_in_flight": self.dead_letter_budget.count,
            "dead_letter_bytes_in_flight": self.dead_letter_budget.bytes,
            **self.stats,
            "client_errors": self._errors.count,
        }

    # -- exactly-once hooks (see connectors/kafka/transactions.py) -------------------------
    def _in_transaction_callback(self, consumer: Consumer, step: Any) -> None:
        """Rebalance callback: run a coordinator step on the loop and wait for it, then
        apply the seeks back it queued (this is the consumer thread)."""
        assert self._loop is not None
        try:  # here, on the consumer thread: never from the loop while a callback runs
            self._callback_metadata = consumer.consumer_group_metadata()
        except KafkaException as error:
            log.warning("rebalance: no group metadata", error=str(error))
        self.in_callback = True
        try:
            waited = asyncio.run_coroutine_threadsafe(step, self._loop)
            waited.result(timeout=self.revoke_timeout + 60)
        except concurrent.futures.TimeoutError:
            # Kafka is away: the step goes on after the rebalance (the fetch loop stays
            # parked until it ends; the next owner's offset fetch waits for our pending
            # transaction to commit or abort, KIP-447)
            log.warning("rebalance: the transaction step goes on after the callback")
        except Exception as error:
            log.error("rebalance: transaction step failed", error=repr(error))
            if self._runtime is not None:
                self._runtime.fail("kafka-transactions", f"rebalance step failed: {error!r}")
        finally:
            self.in_callback = False
            self._callback_metadata = None
        self._seek_pending(consumer)

    @property
    def fetching(self) -> bool:
        return self._task is not None and not self._task.done()

    async def group_metadata(self) -> Any:
        """The consumer's group metadata for ``send_offsets_to_transaction`` (KIP-447),
        read on the consumer thread (from the loop it can deadlock with a callback)."""
        if self.in_callback and self._callback_metadata is not None:
            return self._callback_metadata
        return await self._call(self._read_group_metadata)

    def _read_group_metadata(self) -> Any:
        assert self._consumer is not None
        return self._consumer.consumer_group_metadata()

    def taken(self) -> int:
        return int(self.stats["messages"])

    @property
    def dead_letters_in_flight(self) -> int:
        return self.dead_letter_budget.count

    def forget_uncommitted(self, exclude: Iterable[TP] = ()) -> dict[TP, int | None]:
        """Event loop: drop the state of partitions that took inputs since their last
        commit and queue a seek back to it (None: the group's committed offset)."""
        skip = set(exclude)
        rewound: dict[TP, int | None] = {}
        for tp in self.tracker.partitions():
            state = self.tracker.partition(tp)
            if tp in skip or state.last_begun < 0:
                continue
            if state.committed is not None and state.last_begun < state.committed:
                continue
            rewound[tp] = state.committed  # type: ignore[assignment]
        self.tracker.revoke(rewound)
        for tp in rewound:
            if tp in self.flow.to_pause:
                self.flow.to_pause[tp] = None  # a backpressure seek is stale now
        self._seeks.update(rewound)
        return rewound

    async def seek_back(self) -> None:
        if self._seeks:
            await self._call(self._seek_pending, self._consumer)

    def _seek_pending(self, consumer: Consumer | None) -> None:
        """Consumer thread: seek back to the last committed offsets queued for it."""
        seeks, self._seeks = self._seeks, {}
        if consumer is None or not seeks:
            return
        try:
            assigned = {(tp.topic, tp.partition) for tp in consumer.assignment()}
            seeks = {tp: offset for tp, offset in seeks.items() if tp in assigned}
            unknown = [TopicPartition(t, p) for (t, p), offset in seeks.items() if offset is None]
            if unknown:
                for tp in consumer.committed(unknown, timeout=30):
                    seeks[(tp.topic, tp.partition)] = tp.offset
            reset = str(self.config.get("auto.offset.reset", "earliest"))
            start = (
                OFFSET_BEGINNING if reset in ("earliest", "smallest", "beginning") else OFFSET_END
            )
            for (topic, partition), offset in seeks.items():
                target = offset if offset is not None and offset >= 0 else start
                consumer.seek(TopicPartition(topic, partition, target))
        except KafkaException as error:
            log.error("seek back after an abort failed", error=str(error), seeks=str(seeks))
            if self._runtime is not None:
                self._runtime.fail("kafka-consumer", f"seek back after an abort failed: {error}")
            return
        log.info(
            "rewound to the last committed offsets",
            offsets=labelled({tp: o if o is not None else -1 for tp, o in seeks.items()}),
        )
