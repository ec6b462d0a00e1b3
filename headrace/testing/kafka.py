"""A real Kafka broker for tests, and small client helpers (topics, JSON in, records out).

:func:`choose_broker` picks, in order:

1. ``$KAFKA_BOOTSTRAP_SERVERS`` (an existing cluster; checked to answer, never replaced);
2. testcontainers' ``KafkaContainer`` in KRaft mode, when a Docker engine answers and
   ``testcontainers[kafka]`` is installed (``pip install 'headrace[docker]'``); image
   ``$HEADRACE_KAFKA_IMAGE``, default :data:`DEFAULT_IMAGE`;
3. a local broker: Apache Kafka jars from Maven Central (Java 17 and Maven), started by
   ``local-kafka/kafka-local.sh``, which ships inside this package.

When none works it raises :class:`NoBrokerError` with the reason of every attempt.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from headrace.testing.infra import ScriptError, env_line, run_script

LOCAL_KAFKA_DIR = Path(__file__).resolve().parent / "local-kafka"
"""The packaged local broker: ``kafka-local.sh``, ``pom.xml``, ``log4j2.xml``, template."""
LOCAL_KAFKA_SCRIPT = LOCAL_KAFKA_DIR / "kafka-local.sh"
DEFAULT_IMAGE = "confluentinc/cp-kafka:7.6.0"

Record = tuple[bytes | None, bytes, int, int]  # key, value, partition, offset
KeyArg = bytes | str | Callable[[Any], bytes | str | None] | None


class NoBrokerError(RuntimeError):
    """No Kafka broker could be found or started; the message says why for each way."""


@dataclass(frozen=True)
class Broker:
    """A running broker: where to connect, where it came from, how to stop it."""

    bootstrap: str
    origin: str
    stop: Callable[[], None]


def _admin(bootstrap: str, log_level: int = 3) -> AdminClient:
    return AdminClient({"bootstrap.servers": bootstrap, "log_level": log_level})


def broker_answers(bootstrap: str, timeout: float = 10.0) -> str | None:
    """None when the cluster answers a metadata request, else the reason it does not."""
    try:
        md = _admin(bootstrap, log_level=0).list_topics(timeout=timeout)
    except KafkaException as exc:
        return f"no metadata from {bootstrap}: {exc}"
    return None if md.brokers else f"no brokers in metadata from {bootstrap}"


def docker_engine_answers(timeout: float = 10.0) -> bool:
    """A Docker engine answers: the docker SDK's ping (what testcontainers uses), else
    ``docker info``."""
    try:
        import docker  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        pass
    else:
        try:
            return bool(docker.from_env(timeout=int(timeout)).ping())
        except Exception:
            return False
    cli = shutil.which("docker")
    if cli is None:
        return False
    try:
        proc = subprocess.run(
            [cli, "info"], capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def start_testcontainer(image: str = DEFAULT_IMAGE) -> Broker:
    """A KRaft ``KafkaContainer``; raises ``ImportError`` without testcontainers."""
    from testcontainers.kafka import KafkaContainer

    container = KafkaContainer(image).with_kraft()
    container.start()
    try:
        bootstrap = container.get_bootstrap_server()
    except BaseException:
        container.stop()
        raise
    return Broker(
        bootstrap, f"testcontainers KafkaContainer({image}) in KRaft mode", container.stop
    )


def start_local_broker(owner_pid: int | None = None, start_timeout: float = 300) -> Broker:
    """The packaged ``kafka-local.sh``: fetch the jars (once, cached), start a broker on free
    ports. A watchdog stops it when ``owner_pid`` (default: this process) exits."""
    state = tempfile.mkdtemp(prefix="headrace-kafka-state.")
    env = {"HEADRACE_KAFKA_STATE": state, "HEADRACE_PYTHON": sys.executable}

    def stop() -> None:
        try:
            run_script(LOCAL_KAFKA_SCRIPT, "stop", env=env, timeout=120)
        finally:
            shutil.rmtree(state, ignore_errors=True)

    owner = str(os.getpid() if owner_pid is None else owner_pid)
    try:
        run_script(LOCAL_KAFKA_SCRIPT, "fetch", env=env, timeout=900)
        out = run_script(
            LOCAL_KAFKA_SCRIPT, "start", "--owner-pid", owner, env=env, timeout=start_timeout
        )
        bootstrap = env_line(out, "KAFKA_BOOTSTRAP_SERVERS")
    except BaseException:
        stop()
        raise
    return Broker(bootstrap, f"local broker ({LOCAL_KAFKA_SCRIPT})", stop)


def choose_broker(
    environ: Mapping[str, str] | None = None,
    *,
    answers: Callable[[str], str | None] = broker_answers,
    docker_answers: Callable[[], bool] = docker_engine_answers,
    start_container: Callable[[str], Broker] = start_testcontainer,
    start_local: Callable[[], Broker] = start_local_broker,
) -> Broker:
    """The first broker that works, in the order of this module's docstring."""
    env = os.environ if environ is None else environ
    configured = env.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    if configured:
        problem = answers(configured)
        if problem:
            raise NoBrokerError(f"KAFKA_BOOTSTRAP_SERVERS is set but {problem}")
        return Broker(configured, "KAFKA_BOOTSTRAP_SERVERS", lambda: None)

    notes: list[str] = []
    if docker_answers():
        image = env.get("HEADRACE_KAFKA_IMAGE", "").strip() or DEFAULT_IMAGE
        try:
            return start_container(image)
        except ImportError:
            notes.append(
                "a Docker engine answers but testcontainers is not installed "
                "(pip install 'headrace[docker]')"
            )
        except Exception as exc:
            notes.append(f"testcontainers KafkaContainer({image}) failed: {exc!r}")
    else:
        notes.append("no Docker engine answers")
    try:
        return start_local()
    except (ScriptError, OSError) as exc:
        notes.append(f"local broker ({LOCAL_KAFKA_SCRIPT.name}, Java 17 + Maven) failed: {exc}")
    raise NoBrokerError("no Kafka broker: " + "; ".join(notes))


# -- topics --------------------------------------------------------------------------------
def unique_topic(prefix: str = "test") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def create_topic(
    bootstrap: str,
    name: str,
    partitions: int = 1,
    *,
    config: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> str:
    """Create ``name`` and wait until every partition has a leader. Returns the name."""
    admin = _admin(bootstrap)
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=1, config=config or {})],
        operation_timeout=timeout,
    )
    futures[name].result(timeout=timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        topic = admin.list_topics(topic=name, timeout=5).topics.get(name)
        if (
            topic is not None
            and topic.error is None
            and len(topic.partitions) == partitions
            and all(p.leader >= 0 for p in topic.partitions.values())
        ):
            return name
        time.sleep(0.1)
    raise TimeoutError(f"topic {name} has no leader for all {partitions} partitions")


def delete_topics(bootstrap: str, names: Iterable[str], timeout: float = 30.0) -> None:
    """Delete topics; ones already gone are not an error."""
    names = list(names)
    if not names:
        return
    for name, future in _admin(bootstrap).delete_topics(names, operation_timeout=timeout).items():
        try:
            future.result(timeout=timeout)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise KafkaException(f"deleting topic {name}: {exc}") from exc


def partitions_of(bootstrap: str, topic: str, timeout: float = 10.0) -> list[int]:
    md = _admin(bootstrap).list_topics(topic=topic, timeout=timeout).topics[topic]
    if md.error is not None:
        raise KafkaException(md.error)
    return sorted(md.partitions)


# -- records -------------------------------------------------------------------------------
def produce(
    bootstrap: str,
    topic: str,
    messages: Iterable[tuple[bytes | str | None, bytes | None]],
    *,
    config: Mapping[str, Any] | None = None,
    timeout: float = 60.0,
) -> list[tuple[int, int]]:
    """Produce ``(key, value)`` pairs as they are (a ``None`` value is a tombstone), with
    acks=all and idempotence; ``config`` adds producer settings. Waits for every delivery
    report; returns the (partition, offset) of each message, in input order."""
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "linger.ms": 5,
            **(config or {}),
        }
    )
    results: list[tuple[int, int] | KafkaError | None] = []

    def delivered(index: int) -> Callable[[KafkaError | None, Message], None]:
        def cb(err: KafkaError | None, msg: Message) -> None:
            results[index] = err if err is not None else (msg.partition(), msg.offset())

        return cb

    for key, value in messages:
        results.append(None)
        while True:
            try:
                producer.produce(topic, value, key, on_delivery=delivered(len(results) - 1))
                break
            except BufferError:  # the local queue is full: let deliveries drain it
                producer.poll(0.05)
        producer.poll(0)
    remaining = producer.flush(timeout)
    if remaining:
        raise TimeoutError(f"{remaining} messages to {topic} not delivered in {timeout}s")
    failed = [r for r in results if not isinstance(r, tuple)]
    if failed:
        raise KafkaException(failed[0])
    return [r for r in results if isinstance(r, tuple)]


def produce_json(
    bootstrap: str,
    topic: str,
    values: Iterable[Any],
    key: KeyArg = None,
    *,
    timeout: float = 30.0,
) -> list[tuple[int, int]]:
    """Produce each value as JSON (acks=all, idempotent). ``key`` is fixed or ``key(value)``.

    Returns the (partition, offset) of each message, in input order.
    """

    def pairs() -> Iterator[tuple[bytes | str | None, bytes]]:
        for value in values:
            yield (key(value) if callable(key) else key), json.dumps(value).encode()

    return produce(bootstrap, topic, pairs(), timeout=timeout)


@dataclass(frozen=True)
class KafkaRecord:
    """One consumed record; ``headers`` decoded as UTF-8 (last value wins)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: Mapping[str, str]

    def json(self) -> Any:
        return json.loads(self.value)


def _wait_for_partitions(bootstrap: str, topic: str, deadline: float) -> list[int]:
    """The partitions of ``topic``, waiting for it to exist (a dead-letter topic appears
    with its first letter)."""
    admin = _admin(bootstrap)
    while True:
        md = admin.list_topics(topic=topic, timeout=5).topics.get(topic)
        if md is not None and md.error is None and md.partitions:
            return sorted(md.partitions)
        if time.monotonic() >= deadline:
            reason = md.error if md is not None else "not in metadata"
            raise AssertionError(f"topic {topic} does not exist ({reason})")
        time.sleep(0.2)


def consume_messages(
    bootstrap: str, topic: str, expected_count: int, timeout: float = 30.0
) -> list[KafkaRecord]:
    """Read ``topic`` from the beginning of every partition until ``expected_count`` records.

    Waits for the topic to exist; uses manual assignment (no group join, commits nothing).
    Raises ``AssertionError`` listing what arrived when fewer records come within
    ``timeout``. Sorted by (partition, offset).
    """
    deadline = time.monotonic() + timeout
    partitions = _wait_for_partitions(bootstrap, topic, deadline)
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"consume-all-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
        }
    )
    records: list[KafkaRecord] = []
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        while len(records) < expected_count and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            if msg.error() is not None:
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    continue
                raise KafkaException(msg.error())
            headers = {
                name: (raw or b"").decode("utf-8", "replace") for name, raw in (msg.headers() or [])
            }
            records.append(
                KafkaRecord(
                    topic, msg.partition(), msg.offset(), msg.key(), msg.value() or b"", headers
                )
            )
    finally:
        consumer.close()
    records.sort(key=lambda r: (r.partition, r.offset))
    assert len(records) >= expected_count, (
        f"expected {expected_count} records on {topic}, got {len(records)} in {timeout}s: "
        f"{[(r.key, r.value, r.partition, r.offset) for r in records]!r}"
    )
    return records


def consume_all(
    bootstrap: str, topic: str, expected_count: int, timeout: float = 30.0
) -> list[Record]:
    """:func:`consume_messages` as ``(key, value, partition, offset)`` tuples."""
    return [
        (r.key, r.value, r.partition, r.offset)
        for r in consume_messages(bootstrap, topic, expected_count, timeout)
    ]


def consume_json(
    bootstrap: str, topic: str, expected_count: int, timeout: float = 30.0
) -> list[Any]:
    """:func:`consume_messages`, values decoded from JSON."""
    return [r.json() for r in consume_messages(bootstrap, topic, expected_count, timeout)]


def committed_offsets(
    bootstrap: str, group: str, topic: str, timeout: float = 10.0
) -> dict[int, int]:
    """{partition: committed offset} of ``group`` on ``topic``; never-committed omitted."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
    )
    try:
        tps = [TopicPartition(topic, p) for p in partitions_of(bootstrap, topic)]
        committed = consumer.committed(tps, timeout=timeout)
    finally:
        consumer.close()
    return {tp.partition: tp.offset for tp in committed if tp.offset >= 0}


def end_offsets(bootstrap: str, topic: str, timeout: float = 10.0) -> dict[int, int]:
    """{partition: high watermark} of ``topic`` (with idempotent producers and no
    transactions: how many messages each partition holds)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "headrace-watermarks"})
    try:
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)[1]
            for p in partitions_of(bootstrap, topic)
        }
    finally:
        consumer.close()


class TopicReader:
    """Reads ``topic`` from the beginning of every partition, a little at a time, for
    tests that wait for outputs while a worker runs (manual assignment: no group join, no
    commits). Subclasses override :meth:`handle`; ``records`` counts what was read; a
    subclass with ``isolation = "read_committed"`` sees only committed transactions."""

    isolation = "read_uncommitted"

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"reader-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "isolation.level": self.isolation,
                "log_level": 2,
            }
        )
        self.consumer.assign([TopicPartition(topic, p, 0) for p in partitions_of(bootstrap, topic)])
        self.records = 0

    def handle(self, msg: Message) -> None:
        """One record read (not an error); the default keeps nothing."""

    def poll(self, seconds: float) -> None:
        """Read for ``seconds``, handing each record to :meth:`handle`."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for msg in self.consumer.consume(1000, 0.1):
                error = msg.error()
                if error is not None:
                    if error.code() != KafkaError._PARTITION_EOF:
                        raise KafkaException(error)
                    continue
                self.records += 1
                self.handle(msg)

    def close(self) -> None:
        self.consumer.close()

    def __enter__(self) -> TopicReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
