"""Black-box chaos harness: ``headrace run`` workers, a mixed producer, a seeded chaos loop.

Everything goes through the CLI and Kafka, as production does: each worker is a real
``headrace run`` subprocess whose stdout is a file (so its logs are JSON, the default off a
terminal); the test only sends signals, restarts the broker and reads topics and logs.

- ``write_soak_app`` writes a small graph (a stream accumulator validating ``Book``, one
  node, a Kafka sink keyed by id) and its TOML config;
- ``CliWorker`` is one worker slot; every start is a new incarnation with its own logs;
- ``MixedProducer`` sends good books and poison (not JSON, null value, wrong schema) and
  records, from its delivery reports, where each landed;
- ``DeadLetterReader`` reads ``<topic>.dlq`` and collects the source offsets it names;
- ``Chaos`` runs the seeded loop of SIGKILLs, SIGTERMs, joins, leaves and one broker restart.
"""

from __future__ import annotations

import contextlib
import random
import re
import signal
import subprocess
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import KafkaError, KafkaException

from headrace.testing.kafka import TopicReader as TopicReader  # re-exported: chaos API
from headrace.testing.kafka import end_offsets
from headrace.testing.worker import HeadraceWorker
from tests.fixtures import REPO_ROOT, ScriptError, unavailable
from tests.fixtures.kafka_broker import committed_offsets
from tests.integration.kafka_harness import SignalReader as SignalReader  # re-exported
from tests.integration.kafka_harness import book, producer
from tests.integration.test_kafka_broker_restart import PrivateBroker

TP = tuple[int, int]  # partition, offset


SOAK_NODES = '''
"""Node functions and the input model of the chaos soak graph."""
import asyncio
import os

from pydantic import BaseModel


class Book(BaseModel):
    id: int
    symbol: str
    bid: float
    ask: float


async def signal(books: Book) -> dict:
    delay = float(os.environ.get("SOAK_NODE_DELAY", "0"))
    if delay:
        await asyncio.sleep(delay)
    return {"id": books.id, "mid": (books.bid + books.ask) / 2}
'''

SOAK_CONFIG = """
modules = [{ name = "soak_nodes", path = "." }]

[worker]
bootstrap_servers = "${KAFKA_BOOTSTRAP_SERVERS}"
group_id = "${SOAK_GROUP}"
commit_interval = "200ms"
drain_timeout = "${SOAK_DRAIN_TIMEOUT:-45s}"

[worker.consumer]
"session.timeout.ms" = "${SOAK_SESSION_TIMEOUT_MS:-6000}"
"heartbeat.interval.ms" = 1000

[worker.producer]
"message.timeout.ms" = "${SOAK_MESSAGE_TIMEOUT_MS:-300000}"

[worker.http]
port = 0

[worker.state_store]
enabled = false

[worker.dead_letters]
kafka = true
state_store = false
execution_topic = "${SOAK_EXECUTION_DLQ}"

[accumulators.books]
kind = "stream"
topic = "${SOAK_IN_TOPIC}"
model = "soak_nodes:Book"

[reactors.books_rx]
accumulators = ["books"]
strategy = "sequential"

[graphs.soak]
module = "soak_nodes"
reactor = "books_rx"
on_error = "dead_letter"
sinks = ["out"]
topology = { signal = { inputs = ["books"] } }

[sinks.out]
type = "kafka"
topic = "${SOAK_OUT_TOPIC}"
key = "signal.id"
"""


def write_soak_app(directory: Path) -> Path:
    """The soak's node module and config in ``directory``; returns the config path."""
    (directory / "soak_nodes.py").write_text(SOAK_NODES)
    config = directory / "soak.toml"
    config.write_text(textwrap.dedent(SOAK_CONFIG))
    return config


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``predicate`` until truthy; AssertionError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)


# -- one worker slot --------------------------------------------------------------------------


@dataclass
class Incarnation:
    """One ``headrace run`` process of a slot, and how it ended."""

    number: int
    worker: HeadraceWorker
    stdout: Path  # copies of the worker's streams, written as they arrive
    stderr: Path
    signalled: str | None = None  # "SIGKILL" or "SIGTERM" once the test sent one
    signalled_at: float = 0.0

    @property
    def proc(self) -> subprocess.Popen[str]:
        return self.worker.proc

    @property
    def exit_code(self) -> int | None:
        return self.proc.poll()


class CliWorker:
    """A worker slot: ``headrace run CONFIG``; each ``start`` is a new incarnation, a
    ``HeadraceWorker`` of the toolkit that dies with the test process.

    The worker logs with its default format (JSON: its stdout is not a terminal); a copy of
    stdout and of stderr goes to files of their own, so stdout can be checked to be JSON
    lines only.
    """

    def __init__(self, name: str, config: Path, env: dict[str, str], workdir: Path) -> None:
        self.name, self.config, self.workdir = name, config, workdir
        # HEADRACE_LOG_FORMAT removed: the default decides (JSON off a terminal)
        self.env: dict[str, str | None] = {
            "PYTHONPATH": str(REPO_ROOT),
            **env,
            "HEADRACE_LOG_FORMAT": None,
        }
        self.incarnations: list[Incarnation] = []

    @property
    def current(self) -> Incarnation | None:
        return self.incarnations[-1] if self.incarnations else None

    def alive(self) -> bool:
        return self.current is not None and self.current.exit_code is None

    def running(self) -> bool:
        """Alive and not yet told to stop."""
        return self.alive() and self.current is not None and self.current.signalled is None

    def start(self) -> Incarnation:
        assert not self.alive(), f"{self.name} is still running"
        number = len(self.incarnations) + 1
        stdout = self.workdir / f"{self.name}.{number}.out"
        stderr = self.workdir / f"{self.name}.{number}.err"
        worker = HeadraceWorker(
            [self.config],
            env=self.env,
            cwd=self.config.parent,
            log_format=None,
            stdout_path=stdout,
            stderr_path=stderr,
            die_with_parent=True,
        )
        incarnation = Incarnation(number, worker, stdout, stderr)
        self.incarnations.append(incarnation)
        return incarnation

    def signal(self, signum: signal.Signals) -> Incarnation:
        incarnation = self.current
        assert incarnation is not None and incarnation.exit_code is None
        incarnation.signalled, incarnation.signalled_at = signum.name, time.monotonic()
        incarnation.worker.send(signum)
        return incarnation

    def kill(self) -> None:
        """SIGKILL and reap (a crash: no drain, no commit, no LeaveGroup)."""
        incarnation = self.signal(signal.SIGKILL)
        incarnation.proc.wait(30)

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """JSON log lines of every incarnation (``name``: only that event)."""
        return [
            line
            for incarnation in self.incarnations
            for line in list(incarnation.worker.lines)
            if name is None or line.get("event") == name
        ]

    def wait_ready(self, timeout: float) -> None:
        incarnation = self.current
        assert incarnation is not None
        incarnation.worker.wait_for_log("worker ready", timeout)

    def tail(self, lines: int = 30) -> str:
        incarnation = self.current
        return "(never started)" if incarnation is None else incarnation.worker.output()

    def close(self) -> None:
        for incarnation in self.incarnations:
            incarnation.worker.kill()


def log_lines(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """(JSON objects, lines that are not JSON objects) of a worker's stdout file."""
    parsed: list[dict[str, Any]] = []
    other: list[str] = []
    try:
        text = path.read_bytes()
    except OSError:
        return parsed, other
    lines = text.split(b"\n")
    if lines and lines[-1] and not text.endswith(b"\n"):
        lines = lines[:-1]  # a line still being written
    for raw in lines:
        if not raw.strip():
            continue
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            other.append(raw.decode(errors="replace"))
            continue
        if isinstance(value, dict):
            parsed.append(value)
        else:
            other.append(raw.decode(errors="replace"))
    return parsed, other


# -- the producer ------------------------------------------------------------------------------

POISON_KINDS = ("not-json", "null", "wrong-schema")


def poison_value(kind: str, n: int) -> bytes | None:
    if kind == "not-json":
        return b"\xffnot json {" + str(n).encode()
    if kind == "null":
        return None
    return orjson.dumps({"id": f"poison-{n}", "symbol": 7})  # id not an int, bid/ask missing


class MixedProducer(threading.Thread):
    """Produces ``total`` messages at about ``rate``/s; every ``poison_every``-th is poison.

    Good message ``i`` is book ``i`` keyed ``i``. Delivery reports record where each message
    landed: ``good`` maps (partition, offset) to its id, ``poison`` maps it to its kind.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        total: int,
        rate: float,
        rng: random.Random,
        poison_share: float = 0.1,
    ) -> None:
        super().__init__(name="mixed-producer", daemon=True)
        self.bootstrap, self.topic, self.total, self.rate = bootstrap, topic, total, rate
        self.plan: list[str | None] = [
            rng.choice(POISON_KINDS) if rng.random() < poison_share else None for _ in range(total)
        ]
        self.good: dict[TP, int] = {}
        self.poison: dict[TP, str] = {}
        self.failed: list[str] = []
        self.sent = 0
        self.finished_at: float | None = None
        self.error: BaseException | None = None

    @property
    def good_ids(self) -> set[int]:
        return {i for i, kind in enumerate(self.plan) if kind is None}

    def _delivered(self, index: int) -> Callable[[KafkaError | None, Any], None]:
        def callback(error: KafkaError | None, msg: Any) -> None:
            if error is not None:
                self.failed.append(f"message {index}: {error}")
                return
            where = (msg.partition(), msg.offset())
            kind = self.plan[index]
            if kind is None:
                self.good[where] = index
            else:
                self.poison[where] = kind

        return callback

    def run(self) -> None:
        try:
            prod = producer(self.bootstrap)
            started = time.monotonic()
            for index, kind in enumerate(self.plan):
                ahead = started + index / self.rate - time.monotonic()
                if ahead > 0.002:
                    time.sleep(ahead)
                if kind is None:
                    key, value = str(index).encode(), orjson.dumps(book(index))
                else:
                    key, value = f"poison-{index}".encode(), poison_value(kind, index)
                while True:
                    try:
                        prod.produce(self.topic, value, key, on_delivery=self._delivered(index))
                        break
                    except BufferError:
                        prod.poll(0.05)
                self.sent += 1
                prod.poll(0)
            if prod.flush(180):
                raise TimeoutError(f"producer to {self.topic}: not all delivered in 180s")
            self.finished_at = time.monotonic()
        except BaseException as error:
            self.error = error

    def finish(self, timeout: float) -> float:
        """Wait for every delivery report; returns when the last one came (monotonic)."""
        self.join(timeout)
        assert not self.is_alive(), f"producer still running after {timeout:.0f}s"
        if self.error is not None:
            raise self.error
        assert not self.failed, f"{len(self.failed)} inputs not delivered: {self.failed[:5]}"
        assert self.finished_at is not None
        return self.finished_at


# -- reading topics -------------------------------------------------------------------------


class DeadLetterReader(TopicReader):
    """A message dead-letter topic: ``sources`` counts letters per source (partition, offset)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(bootstrap, topic)
        self.sources: Counter[TP] = Counter()
        self.reasons: Counter[str] = Counter()

    def handle(self, msg: Any) -> None:
        headers = {k: v.decode() for k, v in (msg.headers() or [])}
        self.sources[(int(headers["source.partition"]), int(headers["source.offset"]))] += 1
        self.reasons[headers.get("error", "?").split(":")[0][:60]] += 1

    def wait_for(self, expected: set[TP], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.poll(0.3)
            if expected <= self.sources.keys():
                return
        missing = sorted(expected - self.sources.keys())
        raise AssertionError(
            f"{self.topic}: {len(missing)} poison messages not dead-lettered after "
            f"{timeout:.0f}s, e.g. (partition, offset) {missing[:20]}"
        )


def wait_committed_to_end(bootstrap: str, group: str, topic: str, timeout: float) -> float:
    """Seconds until ``group``'s commits on ``topic`` reach the end of every partition."""
    started = time.monotonic()
    ends = end_offsets(bootstrap, topic)
    last: dict[int, int] = {}
    while time.monotonic() - started < timeout:
        with contextlib.suppress(KafkaException):
            committed = committed_offsets(bootstrap, group, topic)
            last = {p: committed.get(p, 0) for p in ends}
            if last == ends:
                return time.monotonic() - started
        time.sleep(0.25)
    behind = {p: ends[p] - last.get(p, 0) for p in ends if last.get(p, 0) != ends[p]}
    raise AssertionError(
        f"group {group} did not commit {topic} to the end within {timeout:.0f}s: "
        f"committed {last}, ends {ends}, behind by {behind}"
    )


# -- the chaos loop ------------------------------------------------------------------------


@dataclass
class ChaosPlan:
    seed: int
    min_kills: int
    min_workers: int = 1
    max_workers: int = 3
    pause: tuple[float, float] = (2.0, 4.0)
    broker_down: tuple[float, float] = (3.0, 6.0)
    term_deadline: float = 90.0
    ready_deadline: float = 90.0


@dataclass
class ChaosLog:
    kills: int = 0
    # (worker#incarnation, exit code); None: still running at the deadline, so killed
    sigterms: list[tuple[str, int | None]] = field(default_factory=list)
    joins: int = 0
    leaves: int = 0
    broker_downtime: float = 0.0
    unexpected_exits: list[str] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)


class Chaos:
    """The seeded chaos loop over worker slots; every decision comes from ``Random(seed)``."""

    def __init__(
        self,
        plan: ChaosPlan,
        broker: PrivateBroker,
        new_worker: Callable[[str], CliWorker],
    ) -> None:
        self.plan = plan
        self.rng = random.Random(plan.seed)
        self.broker = broker
        self.new_worker = new_worker
        self.slots: list[CliWorker] = []
        self.terminating: list[tuple[CliWorker, Incarnation]] = []
        self.log = ChaosLog()
        self.started = time.monotonic()
        self.ended_at: float | None = None

    # -- bookkeeping -------------------------------------------------------------------
    def running(self) -> list[CliWorker]:
        return [w for w in self.slots if w.running()]

    def note(self, action: str) -> None:
        self.log.actions.append(f"{time.monotonic() - self.started:6.1f}s {action}")

    def reap(self) -> None:
        """Collect the exit codes of SIGTERMed workers; notice workers that died by themselves."""
        still: list[tuple[CliWorker, Incarnation]] = []
        for worker, incarnation in self.terminating:
            code = incarnation.exit_code
            name = f"{worker.name}#{incarnation.number}"
            if code is not None:
                self.log.sigterms.append((name, code))
                if code != 0:
                    self.note(f"{name} exited {code} on SIGTERM")
            elif time.monotonic() - incarnation.signalled_at > self.plan.term_deadline:
                incarnation.proc.kill()
                incarnation.proc.wait(30)
                self.log.sigterms.append((name, None))
                self.note(f"{name} ignored SIGTERM for {self.plan.term_deadline:.0f}s: killed")
            else:
                still.append((worker, incarnation))
        self.terminating = still
        for worker in self.slots:
            incarnation = worker.current
            if incarnation is not None and incarnation.signalled is None:
                code = incarnation.exit_code
                if code is not None:
                    incarnation.signalled = "none (exited by itself)"
                    self.log.unexpected_exits.append(f"{worker.name}#{incarnation.number}={code}")
                    self.note(f"{worker.name}#{incarnation.number} exited by itself: {code}")
                    worker.start()  # a supervisor would restart it

    def sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.reap()
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))

    # -- actions -----------------------------------------------------------------------
    def join(self) -> CliWorker:
        idle = [w for w in self.slots if not w.alive()]
        worker = idle[0] if idle else self.new_worker(f"w{len(self.slots) + 1}")
        if worker not in self.slots:
            self.slots.append(worker)
        worker.start()
        self.log.joins += 1
        self.note(f"join {worker.name}#{worker.current.number if worker.current else '?'}")
        return worker

    def kill(self) -> None:
        worker = self.rng.choice(self.running())
        number = worker.current.number if worker.current else 0
        worker.kill()
        self.log.kills += 1
        self.note(f"SIGKILL {worker.name}#{number}, restart")
        worker.start()

    def leave(self) -> None:
        worker = self.rng.choice(self.running())
        incarnation = worker.signal(signal.SIGTERM)
        self.terminating.append((worker, incarnation))
        self.log.leaves += 1
        self.note(f"SIGTERM {worker.name}#{incarnation.number}")

    def restart_broker(self) -> None:
        down = self.rng.uniform(*self.plan.broker_down)
        self.note(f"broker SIGKILL, down {down:.1f}s")
        self.broker.kill()
        started = time.monotonic()
        self.sleep(down)
        self.broker.revive()
        self.log.broker_downtime = time.monotonic() - started
        self.note(f"broker back after {self.log.broker_downtime:.1f}s")

    def step(self) -> None:
        running = len(self.running())
        kills = 6 if self.log.kills < self.plan.min_kills else 4  # meet the minimum early
        choices = ["kill"] * kills + ["leave"] * 3 + ["join"] * 3
        action = self.rng.choice(choices)
        if action == "join" and running + len(self.terminating) >= self.plan.max_workers:
            action = "leave"
        if action == "leave" and running <= self.plan.min_workers:
            action = "join" if running + len(self.terminating) < self.plan.max_workers else "kill"
        if action == "kill" and running == 0:
            action = "join"
        {"kill": self.kill, "leave": self.leave, "join": self.join}[action]()
        if len(self.running()) < self.plan.min_workers:
            self.join()

    # -- the loop ----------------------------------------------------------------------
    def start_workers(self, count: int) -> None:
        for _ in range(count):
            self.join()
        for worker in self.slots:
            worker.wait_ready(self.plan.ready_deadline)

    def run(self, keep_going: Callable[[], bool], broker_restart_after: float) -> None:
        """Chaos until ``keep_going()`` is false and at least ``min_kills`` SIGKILLs were sent;
        the broker is restarted once, ``broker_restart_after`` seconds in."""
        restarted = False
        while keep_going() or self.log.kills < self.plan.min_kills:
            self.sleep(self.rng.uniform(*self.plan.pause))
            if not restarted and time.monotonic() - self.started >= broker_restart_after:
                self.restart_broker()
                restarted = True
                continue
            self.step()
        if not restarted:
            self.restart_broker()
        self.ended_at = time.monotonic()

    def settle(self, workers: int) -> None:
        """Chaos over: wait for every SIGTERMed worker, keep ``workers`` running and ready."""
        while self.terminating:  # reap() kills one that outlives term_deadline
            self.sleep(0.2)
        while len(self.running()) < workers:
            self.join()
        for worker in self.running():
            worker.wait_ready(self.plan.ready_deadline)
        self.reap()

    def stop_all(self) -> list[int | None]:
        """SIGTERM every running worker; returns their exit codes (each must be 0)."""
        for worker in self.running():
            incarnation = worker.signal(signal.SIGTERM)
            self.terminating.append((worker, incarnation))
            self.note(f"final SIGTERM {worker.name}#{incarnation.number}")
        before = len(self.log.sigterms)
        while self.terminating:
            self.sleep(0.2)
        return [code for _, code in self.log.sigterms[before:]]

    def close(self) -> None:
        for worker in self.slots:
            worker.close()


# -- figures from the workers' JSON logs ---------------------------------------------------


@dataclass
class LogFigures:
    assigned: int
    revoked: int
    lost: int
    incarnations: int
    non_json_stdout: list[str]
    stderr_lines: int
    errors: Counter[str]


def log_figures(workers: list[CliWorker]) -> LogFigures:
    """Rebalances (non-empty assignments, revocations, losses) and log hygiene, per worker."""
    assigned = revoked = lost = incarnations = stderr_lines = 0
    non_json: list[str] = []
    errors: Counter[str] = Counter()
    for worker in workers:
        for incarnation in worker.incarnations:
            incarnations += 1
            lines, other = log_lines(incarnation.stdout)
            non_json += [f"{worker.name}#{incarnation.number}: {text[:200]}" for text in other]
            with contextlib.suppress(OSError):
                stderr_lines += len(incarnation.stderr.read_text(errors="replace").splitlines())
            for line in lines:
                event = line.get("event")
                if event == "partitions assigned" and line.get("partitions"):
                    assigned += 1
                elif event == "partitions revoked" and line.get("partitions"):
                    revoked += 1
                elif event == "partitions lost":
                    lost += 1
                if line.get("level") in ("error", "critical"):
                    errors[_event_kind(str(event))] += 1
    return LogFigures(assigned, revoked, lost, incarnations, non_json, stderr_lines, errors)


# -- a broker of the test's own ---------------------------------------------------------------


@contextlib.contextmanager
def own_broker() -> Iterator[PrivateBroker]:
    """A private broker that may be killed and revived (the session broker is shared)."""
    broker = PrivateBroker()
    try:
        broker.start()
    except ScriptError as error:
        broker.stop()
        unavailable(f"private broker: {error}")
    try:
        yield broker
    finally:
        broker.stop()


def _event_kind(event: str) -> str:
    """An error event without its variable parts (librdkafka thread names, ports, times)."""
    return re.sub(r"\s+", " ", re.sub(r"\[[^\]]*\]|\d+", "", event)).strip()[:40]
