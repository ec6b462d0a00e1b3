"""Peak RSS of a ``headrace run`` worker under a poison flood, a stuck head and big batches.

One worker (JSON logs) on a broker of the test's own reads two topics:

- ``books`` (stream, model ``Book``): a flood of 50 KB poison messages (not JSON) mixed
  with good books. Dead letters go only to the state store (SQLite), which the test keeps
  locked most of the time: a slow dead-letter destination. Each partition's head is a
  poison message whose letter is stuck, so the good messages behind it finish and wait
  in the offset tracker;
- ``bulk`` (batch, 1,000 events a batch): 300,000 small books for a graph that is stuck
  until the test opens a gate, so full batches queue up; the gate stays shut a while after
  the dead letters flow again, so the batches alone fill up to their bound.

The worker's resident memory (psutil, sampled every 0.1 s) must stay within
``RSS_ALLOWANCE`` of its idle size while the destinations are stuck and while it catches
up. Then everything must come through: every poison message in the state store's dead
letters, every good book an output, both topics committed to the end, SIGTERM exit 0.
"""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import psutil
import pytest

from tests.fixtures.kafka_broker import create_topic, unique_topic
from tests.integration.chaos import (
    CliWorker,
    SignalReader,
    own_broker,
    wait_committed_to_end,
    wait_until,
)
from tests.integration.kafka_harness import book, produce_raw

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.timeout(600)]

POISON = 8_000
POISON_BYTES = 50_000
GOOD_PER_POISON = 4  # good books behind every poison message on the books topic
BULK = 300_000
BATCH = 1_000
MB = 1 << 20
RSS_ALLOWANCE = 256 * MB
"""The bound: peak RSS at most this much above the worker's idle RSS (about 75 MB). The
flood alone is 8,000 x 50 KB = 381 MB of payload and the batches 300,000 validated models;
bounded backpressure keeps a fraction of that: librdkafka's prefetch queue (64 MB by
default, ``queued.max.messages.kbytes``) plus a fetch in flight, a channel of 1,024 events,
a capped number of letters and in-flight offsets. On main the worker takes +433 MB with
6,000 poison messages, and grows with the flood."""

NODES = '''
"""Nodes of the memory test: an echo for books, a batch graph stuck while GATE exists."""
import asyncio
import os

from pydantic import BaseModel


class Book(BaseModel):
    id: int
    symbol: str
    bid: float
    ask: float


def signal(books: Book) -> dict:
    return {"id": books.id}


async def absorb(bulk: list) -> dict:
    while os.path.exists(os.environ["MEM_GATE"]):
        await asyncio.sleep(0.2)
    return {"n": len(bulk)}
'''

CONFIG = """
modules = [{ name = "mem_nodes", path = "." }]

[worker]
bootstrap_servers = "${KAFKA_BOOTSTRAP_SERVERS}"
group_id = "${MEM_GROUP}"
commit_interval = "200ms"
drain_timeout = "30s"

[worker.http]
port = 0

[worker.state_store]
url = "sqlite:///${MEM_DB}"

[worker.dead_letters]
kafka = false
state_store = true

[accumulators.books]
kind = "stream"
topic = "${MEM_BOOKS}"
model = "mem_nodes:Book"

[accumulators.bulk]
kind = "batch"
topic = "${MEM_BULK}"
model = "mem_nodes:Book"
max_buffer_size = 1000
flush_interval = "100ms"

[reactors.books_rx]
accumulators = ["books"]
strategy = "sequential"

[reactors.bulk_rx]
accumulators = ["bulk"]
strategy = "sequential"

[graphs.echo]
module = "mem_nodes"
reactor = "books_rx"
sinks = ["out"]
topology = { signal = { inputs = ["books"] } }

[graphs.absorb]
module = "mem_nodes"
reactor = "bulk_rx"
topology = { absorb = { inputs = ["bulk"] } }

[sinks.out]
type = "kafka"
topic = "${MEM_OUT}"
key = "signal.id"
"""


class RssSampler(threading.Thread):
    """Samples a process's resident set size every ``interval`` seconds; keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.process = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                rss = self.process.memory_info().rss
            except psutil.Error:
                return
            self.peak = max(self.peak, rss)
            self.samples += 1
            self._halt.wait(self.interval)

    def stop(self) -> int:
        self._halt.set()
        self.join(5)
        return self.peak


@contextlib.contextmanager
def slow_store(db: Path, hold: float = 8.0, gap: float = 0.25) -> Iterator[threading.Event]:
    """Keep the SQLite state store write-locked ``hold`` s at a time with ``gap`` s between
    (shorter than its 30 s busy timeout, so writes are slow, not failing); set the yielded
    event to stop locking."""
    done = threading.Event()
    errors: list[BaseException] = []

    def lock() -> None:
        conn = sqlite3.connect(db, isolation_level=None, timeout=60)
        try:
            while not done.is_set():
                conn.execute("BEGIN EXCLUSIVE")
                done.wait(hold)
                conn.execute("COMMIT")
                time.sleep(gap)
        except BaseException as error:
            errors.append(error)
        finally:
            conn.close()

    thread = threading.Thread(target=lock, name="slow-store", daemon=True)
    thread.start()
    try:
        yield done
    finally:
        done.set()
        thread.join(30)
    assert not errors, f"could not hold the state store lock: {errors[0]!r}"


def accumulator_figures(worker: CliWorker) -> str:
    """What the accumulators hold, from the worker's HTTP health (for the report)."""
    base = worker.events("worker ready")[-1]["http"]
    try:
        health = httpx.get(f"{base}/v1/health/accumulators", timeout=10).json()
    except httpx.HTTPError as error:
        return f"(no health: {error!r})"
    keys = ("events_in", "buffered", "channel_depth", "channel_capacity", "lag")
    return "; ".join(
        f"{name}: " + ", ".join(f"{k}={h[k]}" for k in keys if h.get(k) is not None)
        for name, h in sorted(health.items())
    )


def wait_for_plateau(worker: CliWorker, accumulator: str, seconds: float) -> int:
    """Wait until ``accumulator`` has taken no new events for 5 s, or ``seconds`` at most;
    returns its events_in."""
    base = worker.events("worker ready")[-1]["http"]
    deadline = time.monotonic() + seconds
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        events_in = httpx.get(f"{base}/v1/health/accumulators", timeout=10).json()[accumulator][
            "events_in"
        ]
        if events_in != last:
            last, since = events_in, time.monotonic()
        elif time.monotonic() - since >= 5:
            break
        time.sleep(0.5)
    return last


def dead_letters_in(db: Path, topic: str) -> set[tuple[int, int]]:
    with contextlib.closing(sqlite3.connect(db, timeout=60)) as conn:
        rows = conn.execute(
            'select "partition", "offset" from headrace_dead_letters where kind = ? and topic = ?',
            ("message", topic),
        ).fetchall()
    return {(int(p), int(o)) for p, o in rows}


def test_peak_rss_stays_bounded_under_a_poison_flood_and_stuck_batches(tmp_path: Path) -> None:
    (tmp_path / "mem_nodes.py").write_text(NODES)
    config = tmp_path / "mem.toml"
    config.write_text(textwrap.dedent(CONFIG))
    db, gate = tmp_path / "state.db", tmp_path / "gate"
    gate.touch()
    with own_broker() as broker:
        bootstrap = broker.bootstrap
        books = create_topic(bootstrap, unique_topic("mem-books"), partitions=3)
        bulk = create_topic(bootstrap, unique_topic("mem-bulk"), partitions=2)
        out = create_topic(bootstrap, unique_topic("mem-out"), partitions=3)
        group = f"mem-{uuid.uuid4().hex[:8]}"
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "MEM_GROUP": group,
            "MEM_DB": str(db),
            "MEM_BOOKS": books,
            "MEM_BULK": bulk,
            "MEM_OUT": out,
            "MEM_GATE": str(gate),
        }
        worker = CliWorker("mem", config, env, tmp_path)
        reader: SignalReader | None = None
        sampler: RssSampler | None = None
        try:
            incarnation = worker.start()
            worker.wait_ready(90)
            wait_until(lambda: worker.events("partitions assigned"), 60, "an assignment")
            time.sleep(1.0)
            idle = psutil.Process(incarnation.proc.pid).memory_info().rss
            sampler = RssSampler(incarnation.proc.pid)
            sampler.start()
            with slow_store(db) as unlock:
                started = time.monotonic()
                # every poison message heads a run of good books (the head of each partition
                # is poison); keys spread both over the partitions
                poison_at: list[int] = []
                messages: list[tuple[bytes | None, bytes | None]] = []
                good = 0
                for n in range(POISON):
                    poison_at.append(len(messages))
                    messages.append((f"p{n}".encode(), b"\xff" * POISON_BYTES))
                    for _ in range(GOOD_PER_POISON):
                        messages.append((str(good).encode(), orjson.dumps(book(good))))
                        good += 1
                placed = produce_raw(bootstrap, books, messages, timeout=240)
                poison = {placed[i] for i in poison_at}
                produce_raw(
                    bootstrap,
                    bulk,
                    ((str(i).encode(), orjson.dumps(book(i))) for i in range(BULK)),
                    timeout=240,
                )
                produced_in = time.monotonic() - started
                time.sleep(15.0)  # destinations still stuck: the worker must hold, not hoard
                stuck_peak = sampler.peak
                stuck_rss = psutil.Process(incarnation.proc.pid).memory_info().rss
                held = accumulator_figures(worker)
                unlock.set()
            # phase 2: dead letters flow again, the batch graph is still stuck; the batch
            # accumulator fills up to its bound (events, not batches) and must stop there
            released = time.monotonic()
            bulk_in = wait_for_plateau(worker, "bulk", seconds=20)
            batches_held = accumulator_figures(worker)
            gate.unlink()
            reader = SignalReader(bootstrap, out)
            reader.wait_for(set(range(good)), timeout=240)
            wait_committed_to_end(bootstrap, group, books, 240)
            wait_committed_to_end(bootstrap, group, bulk, 240)
            caught_up = time.monotonic() - released
            peak = sampler.stop()
            stored = dead_letters_in(db, books)
            code = worker.signal(signal.SIGTERM).proc.wait(60)
        finally:
            if sampler is not None:
                sampler.stop()
            worker.close()
            if reader is not None:
                reader.close()

    print(
        f"\nMEMORY: idle RSS {idle / MB:.0f} MB; peak {peak / MB:.0f} MB "
        f"(+{(peak - idle) / MB:.0f} MB, bound +{RSS_ALLOWANCE / MB:.0f} MB); while stuck peak "
        f"{stuck_peak / MB:.0f} MB, at the end of it {stuck_rss / MB:.0f} MB; flood "
        f"{POISON} x {POISON_BYTES // 1000} KB poison + {good} good books + {BULK} batch events "
        f"produced in {produced_in:.0f}s; caught up {caught_up:.0f}s after the destinations "
        f"recovered; {len(poison & stored)}/{len(poison)} poison messages dead-lettered; "
        f"{sampler.samples} samples; SIGTERM exit {code}\nheld while stuck: {held}\n"
        f"batch graph stuck alone: bulk took {bulk_in} of {BULK} events; {batches_held}"
    )
    assert peak - idle <= RSS_ALLOWANCE, (
        f"peak RSS {peak / MB:.0f} MB is {(peak - idle) / MB:.0f} MB above idle "
        f"({idle / MB:.0f} MB): more than the bound of {RSS_ALLOWANCE / MB:.0f} MB"
    )
    assert poison <= stored, f"{len(poison - stored)} poison messages not in the dead letters"
    assert code == 0, worker.tail()
