"""Helpers for the Kafka integration tests: order books, worker subprocesses, output readers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Producer

from headrace.testing.kafka import TopicReader, end_offsets, produce
from headrace.testing.worker import set_parent_death_signal
from tests.fixtures import REPO_ROOT
from tests.fixtures.kafka_broker import committed_offsets, create_topic, unique_topic

SYMBOLS = ("BTC-USD", "ETH-USD", "SOL-USD", "ADA-USD")


def book(i: int) -> dict[str, Any]:
    """A valid ~100-byte order book with id ``i``."""
    bid = 100.0 + (i % 97) * 0.5
    return {
        "id": i,
        "symbol": SYMBOLS[i % len(SYMBOLS)],
        "bid": bid,
        "ask": bid + 0.25 + (i % 3) * 0.25,
        "bid_size": 1.0 + i % 5,
        "ask_size": 1.5 + i % 4,
    }


def producer(bootstrap: str, **config: Any) -> Producer:
    return Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "linger.ms": 5,
            "log_level": 2,  # the broker restart test makes connection errors expected
            **config,
        }
    )


def produce_raw(
    bootstrap: str,
    topic: str,
    values: Iterable[tuple[bytes | None, bytes | None]],
    timeout: float = 60.0,
) -> list[tuple[int, int]]:
    """Produce ``(key, value)`` pairs (value may be None); returns (partition, offset) each."""
    config = {"message.max.bytes": 4_000_000, "log_level": 2}
    return produce(bootstrap, topic, values, config=config, timeout=timeout)


def produce_books(bootstrap: str, topic: str, ids: Iterable[int]) -> list[tuple[int, int]]:
    return produce_raw(bootstrap, topic, ((str(i).encode(), orjson.dumps(book(i))) for i in ids))


class PacedProducer(threading.Thread):
    """Produces order books ``ids`` at about ``rate`` per second in the background."""

    def __init__(self, bootstrap: str, topic: str, ids: range, rate: float) -> None:
        super().__init__(name="paced-producer", daemon=True)
        self.bootstrap, self.topic, self.ids, self.rate = bootstrap, topic, ids, rate
        self.sent = 0
        self.error: BaseException | None = None
        self._halt = threading.Event()

    def run(self) -> None:
        try:
            prod = producer(self.bootstrap)
            started = time.monotonic()
            for i in self.ids:
                if self._halt.is_set():
                    break
                ahead = started + self.sent / self.rate - time.monotonic()
                if ahead > 0.002:
                    time.sleep(ahead)
                while True:
                    try:
                        prod.produce(self.topic, orjson.dumps(book(i)), str(i).encode())
                        break
                    except BufferError:
                        prod.poll(0.05)
                self.sent += 1
                prod.poll(0)
            if prod.flush(120):
                raise TimeoutError("paced producer could not flush")
        except BaseException as error:
            self.error = error

    def finish(self, timeout: float = 180.0) -> None:
        self.join(timeout)
        assert not self.is_alive(), "paced producer did not finish"
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        self._halt.set()
        self.join(30)


class Worker:
    """``tests.integration.worker_app`` in a subprocess."""

    def __init__(
        self,
        bootstrap: str,
        input_topic: str,
        output_topic: str,
        group: str,
        workdir: Path,
        **settings: Any,
    ) -> None:
        self.args = [bootstrap, input_topic, output_topic, group]
        self.workdir = workdir
        self.name = f"worker-{uuid.uuid4().hex[:6]}"
        self.health_file = workdir / f"{self.name}.health.json"
        self.log_file = workdir / f"{self.name}.log"
        self.env = {**os.environ, "HEADRACE_TEST_HEALTH": str(self.health_file)}
        for key, value in settings.items():
            text = orjson.dumps(value).decode() if isinstance(value, dict) else str(value)
            self.env[f"HEADRACE_TEST_{key.upper()}"] = text
        self.env.setdefault("PYTHONPATH", str(REPO_ROOT))
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> Worker:
        assert self.proc is None or self.proc.poll() is not None
        self.health_file.unlink(missing_ok=True)
        log = open(self.log_file, "ab")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.worker_app", *self.args],
            cwd=REPO_ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=set_parent_death_signal,
        )
        log.close()
        self.starts += 1
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def health(self) -> dict[str, Any] | None:
        try:
            data = orjson.loads(self.health_file.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return None
        return data if data.get("pid") == (self.proc.pid if self.proc else None) else None

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float, what: str
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            health = self.health()
            if health is not None and predicate(health):
                return health
            if not self.alive():
                raise AssertionError(f"{self.name} exited while waiting for {what}:\n{self.tail()}")
            time.sleep(0.05)
        raise AssertionError(f"{self.name}: no {what} within {timeout}s; health={self.health()}")

    def wait_assigned(self, timeout: float = 60.0) -> dict[str, Any]:
        return self.wait_for(lambda h: bool(h["source"]["assigned"]), timeout, "assignment")

    def kill(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def terminate(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30)
            message = f"{self.name} ignored SIGTERM for {timeout}s:\n{self.tail()}"
            raise AssertionError(message) from None

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def close(self) -> None:
        self.kill()


class SignalReader(TopicReader):
    """An output topic of order-book signals: ``ids`` counts outputs per input id."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(bootstrap, topic)
        self.ids: Counter[int] = Counter()

    def handle(self, msg: Any) -> None:
        self.ids[orjson.loads(msg.value())["signal"]["id"]] += 1

    def wait_for(self, expected: set[int], timeout: float) -> None:
        """Read until every id in ``expected`` has an output (AssertionError naming the gap)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.poll(0.3)
            if expected <= self.ids.keys():
                return
        missing = sorted(expected - self.ids.keys())
        raise AssertionError(
            f"{self.topic}: {len(missing)} inputs without an output after {timeout:.0f}s, "
            f"e.g. ids {missing[:20]}"
        )

    def duplicates(self) -> int:
        return sum(count - 1 for count in self.ids.values())


OutputReader = SignalReader


def topics_and_group(bootstrap: str, prefix: str, partitions: int = 3) -> tuple[str, str, str]:
    """A new input and output topic and a new consumer group name, all named after ``prefix``."""
    input_topic = create_topic(bootstrap, unique_topic(f"{prefix}-in"), partitions=partitions)
    output_topic = create_topic(bootstrap, unique_topic(f"{prefix}-out"), partitions=partitions)
    return input_topic, output_topic, f"{prefix}-{uuid.uuid4().hex[:8]}"


def finish_run(
    worker: Worker, feed: PacedProducer, reader: OutputReader, total: int, timeout: float
) -> None:
    """Start ``worker`` once more, let ``feed`` finish, read a signal for each of the ``total``
    ids within ``timeout`` seconds, stop the worker with SIGTERM (exit 0) and read what is left.
    """
    worker.start().wait_assigned(60)
    feed.finish()
    reader.wait_for(set(range(total)), timeout=timeout)
    assert worker.terminate() == 0, worker.tail()
    reader.poll(1.0)


def assert_committed_to_end(bootstrap: str, group: str, topic: str) -> None:
    """Every partition's committed offset is its end; an empty partition needs no commit."""
    ends = end_offsets(bootstrap, topic)
    committed = committed_offsets(bootstrap, group, topic)
    assert {p: committed.get(p, 0) for p in ends} == ends, (committed, ends)
