"""Headrace against its peers on one pipeline, one broker, one topic (``make bench-peers``).

    python -m tests.bench.peers [--messages N] [--runs K] [--systems a,b,...]

One pre-produced topic of N JSON order books on 4 partitions. Each system runs the same
pipeline (decode, validate bid/ask floats and symbol str, mid and spread, JSON out to its own
output topic, input offsets committed) in its own process, one after another; the peers in
their own venvs (.venv-bench/<peer>, pins in tests/bench/requirements-peers.txt):

- raw:       confluent-kafka consume(500) + orjson decode, nothing produced (the ceiling)
- raw-pipe:  confluent-kafka consume -> produce, flush then commit every second
- headrace:  ``headrace run`` on a generated TOML (stream accumulator -> sequential reactor
             -> one-node graph -> Kafka sink), the worker's defaults otherwise
- quix:      Quix Streams Application, filter + apply + to_topic
- bytewax:   ``python -m bytewax.run``, Kafka input -> filter_map -> Kafka output, offsets in
             its recovery store (it has no consumer-group commits)
- faust:     faust-streaming agent, ``await topic.send`` per message

The timed window of a system with an output topic opens when --warmup (5%) of N outputs
are on the broker and closes when the N-th is (the output topic's high watermarks, polled
every 20 ms), so start-up, group join and the first fetches are left out alike; CPU is
the process tree's user+sys (all threads) over that window, from /proc via psutil; peak
RSS is VmHWM. ``raw`` has no output and times itself the same way over its consumed
messages.
Each run is verified: exactly N outputs, each id once, every mid/spread/symbol/t right, and
the input offsets committed to the end. A system that cannot be installed or fails is
reported with the reason; the others still run. Figures: the median over --runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psutil
from confluent_kafka import Consumer, KafkaException, TopicPartition

from tests.bench.kafka_throughput import WINDOW_FROM, broker, fill, order_book
from tests.bench.peer_venvs import (
    REPO,
    REQUIREMENTS,
    PeerEnv,
    PeerUnavailable,
    ensure,
    parse_requirements,
)
from tests.fixtures.kafka_broker import committed_offsets, create_topic

APPS = Path(__file__).resolve().parent / "peer_apps"
SYSTEMS = ("raw", "raw-pipe", "headrace", "quix", "bytewax", "faust")
PEERS = {"quix", "bytewax", "faust"}
POLL = 0.02
COMMIT_INTERVAL = 1.0
Check = Callable[[], bool]


class RunFailed(RuntimeError):
    """One system's run did not produce a measurement; the message says why."""


@dataclass
class Result:
    system: str
    rate: float = 0.0  # msg/s over the timed window
    cpu_per_msg: float = 0.0  # seconds
    peak_rss: int = 0  # bytes
    first_output: float = 0.0  # seconds from start to the first output
    outputs: int = 0
    duplicates: int = 0
    missing: int = 0
    wrong: int = 0
    committed: str = ""
    exit_code: int | None = None
    error: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def correct(self) -> bool:
        return not self.error and self.wrong == 0 and self.missing == 0 and self.duplicates == 0


# -- what each output must be ----------------------------------------------------------------
def expected_signal(i: int) -> dict[str, Any]:
    book = orjson.loads(order_book(i))
    return {
        "symbol": book["symbol"],
        "i": i,
        "mid": (book["b"] + book["a"]) / 2,
        "spread": book["a"] - book["b"],
        "t": book["t"],
    }


def unwrap(doc: Any) -> Any:
    """Headrace's sink writes ``{terminal node: output}``; the peers write the output."""
    if isinstance(doc, dict) and "i" not in doc and len(doc) == 1:
        return next(iter(doc.values()))
    return doc


@dataclass
class Verdict:
    outputs: int
    duplicates: int
    missing: int
    wrong: int
    example: str = ""


def verify(values: list[bytes], count: int) -> Verdict:
    """Exactly ``count`` outputs, ids 0..count-1 each once, every field as computed."""
    seen: set[int] = set()
    duplicates = wrong = 0
    example = ""
    for value in values:
        try:
            doc = unwrap(orjson.loads(value))
            i = doc["i"]
            good = type(i) is int and 0 <= i < count and doc == expected_signal(i)
        except (orjson.JSONDecodeError, KeyError, TypeError):
            good, i = False, None
        if not good:
            wrong += 1
            example = example or value[:200].decode(errors="replace")
            continue
        if i in seen:
            duplicates += 1
        seen.add(i)
    return Verdict(len(values), duplicates, count - len(seen), wrong, example)


# -- the broker side -------------------------------------------------------------------------
class Topics:
    """Watermarks and contents of the topics of one benchmark."""

    def __init__(self, bootstrap: str, partitions: int) -> None:
        self.bootstrap = bootstrap
        self.partitions = partitions
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"bench-peers-probe-{uuid.uuid4().hex[:6]}",
            }
        )

    def ends(self, topic: str) -> dict[int, int]:
        return {
            p: self.consumer.get_watermark_offsets(TopicPartition(topic, p), 5, cached=False)[1]
            for p in range(self.partitions)
        }

    def total(self, topic: str) -> int | None:
        """Messages on ``topic``; None while a partition has no leader known here yet."""
        try:
            return sum(self.ends(topic).values())
        except KafkaException:
            return None

    def read_all(self, topic: str, timeout: float = 120.0) -> list[bytes]:
        ends = self.ends(topic)
        reader = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": f"bench-peers-verify-{uuid.uuid4().hex[:6]}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
            }
        )
        values: list[bytes] = []
        remaining = {p for p, end in ends.items() if end > 0}
        reader.assign([TopicPartition(topic, p, 0) for p in remaining])
        deadline = time.monotonic() + timeout
        try:
            while remaining and time.monotonic() < deadline:
                for msg in reader.consume(1000, 0.5):
                    if msg.error() is not None:
                        continue
                    values.append(msg.value() or b"")
                    if msg.offset() + 1 >= ends[msg.partition()]:
                        remaining.discard(msg.partition())
        finally:
            reader.close()
        if remaining:
            raise RunFailed(f"could not read {topic} back to its end in {timeout:.0f}s")
        return values

    def close(self) -> None:
        self.consumer.close()


# -- processes -------------------------------------------------------------------------------
def tree(process: psutil.Process) -> list[psutil.Process]:
    with contextlib.suppress(psutil.Error):
        return [process, *process.children(recursive=True)]
    return []


def cpu_seconds(process: psutil.Process) -> float:
    """user+sys of the process and its children, all threads."""
    total = 0.0
    for member in tree(process):
        with contextlib.suppress(psutil.Error):
            times = member.cpu_times()
            total += times.user + times.system
    return total


def peak_rss(process: psutil.Process) -> int:
    """VmHWM (the kernel's peak resident set) summed over the process tree."""
    total = 0
    for member in tree(process):
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{member.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) * 1024
    return total


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def log_tail(path: Path, lines: int = 15) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    return ""


@dataclass
class Launch:
    """How to start one system and how to tell that it committed."""

    command: list[str]
    env: dict[str, str]
    stop_signal: int = signal.SIGTERM
    committed: Callable[[], tuple[bool, str]] | None = None  # None: the consumer group


def headrace_toml(
    bootstrap: str,
    topic: str,
    output: str,
    group: str,
    state: Path,
    consumer_config: dict[str, Any],
) -> str:
    consumer = "".join(f"{json.dumps(k)} = {json.dumps(v)}\n" for k, v in consumer_config.items())
    return textwrap.dedent(
        f"""\
        modules = ["tests.bench.peer_apps.headrace_app"]

        [worker]
        bootstrap_servers = "{bootstrap}"
        group_id = "{group}"
        commit_interval = "{COMMIT_INTERVAL}s"

        [worker.http]
        port = {free_port()}

        [worker.state_store]
        url = "sqlite:///{state / "headrace-state.db"}"

        [worker.log]
        level = "info"
        format = "json"

        [accumulators.books]
        topic = "{topic}"

        [graphs.bench_signal]
        on_error = "dead_letter"
        sinks = ["out"]

        [sinks.out]
        type = "kafka"
        topic = "{output}"
        """
    ) + (f"\n[worker.consumer]\n{consumer}" if consumer else "")


class Bench:
    def __init__(self, args: argparse.Namespace, bootstrap: str, topic: str) -> None:
        self.args = args
        self.bootstrap = bootstrap
        self.topic = topic
        self.count = args.messages
        self.warmup = int(args.messages * args.warmup)
        self.topics = Topics(bootstrap, args.partitions)
        self.input_ends = self.topics.ends(topic)
        self.envs: dict[str, PeerEnv | str] = {}  # a PeerEnv, or why there is none

    # -- setup ---------------------------------------------------------------------------
    def prepare_peers(self, systems: list[str]) -> None:
        sections = parse_requirements(REQUIREMENTS.read_text())
        for peer in systems:
            if peer not in PEERS:
                continue
            started = time.monotonic()
            try:
                self.envs[peer] = ensure(peer, sections.get(peer, []))
                env = self.envs[peer]
                assert isinstance(env, PeerEnv)
                took = time.monotonic() - started
                print(f"venv {peer}: {env.python.parent.parent} ({env.versions}; {took:.0f}s)")
            except PeerUnavailable as exc:
                self.envs[peer] = str(exc)
                print(f"venv {peer}: NOT AVAILABLE: {exc}")

    def launch(self, system: str, output: str, group: str, state: Path) -> Launch:
        env = {
            "BENCH_BOOTSTRAP": self.bootstrap,
            "BENCH_INPUT": self.topic,
            "BENCH_OUTPUT": output,
            "BENCH_GROUP": group,
            "BENCH_COUNT": str(self.count),
            "BENCH_STATE": str(state),
            "BENCH_COMMIT_INTERVAL": str(COMMIT_INTERVAL),
            "BENCH_WARMUP": str(self.warmup),
            "BENCH_CONSUMER_CONFIG": json.dumps(self.args.consumer_config),
        }
        python = sys.executable
        if system in PEERS:
            peer_env = self.envs.get(system)
            if not isinstance(peer_env, PeerEnv):
                raise RunFailed(f"not installed: {peer_env}")
            python = str(peer_env.python)
        if system == "raw":
            return Launch([python, str(APPS / "raw_ceiling.py")], env)
        if system == "raw-pipe":
            return Launch([python, str(APPS / "raw_pipe.py")], env)
        if system == "headrace":
            config = state / "bench.toml"
            config.write_text(
                headrace_toml(
                    self.bootstrap, self.topic, output, group, state, self.args.consumer_config
                )
            )
            headrace = Path(sys.executable).with_name("headrace")
            command = [str(headrace)] if headrace.exists() else [python, "-m", "headrace"]
            return Launch([*command, "run", str(config)], {**env, "PYTHONPATH": str(REPO)})
        if system == "quix":
            return Launch([python, str(APPS / "quix_app.py")], env)
        if system == "bytewax":
            store = state / "recovery"
            store.mkdir()
            init = subprocess.run(
                [python, "-m", "bytewax.recovery", str(store), "1"],
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            if init.returncode != 0:
                raise RunFailed(f"bytewax.recovery init failed: {init.stderr.strip()[-500:]}")
            command = [python, "-m", "bytewax.run", "bytewax_app:flow", "-w", "1"]
            command += ["-r", str(store), "-s", f"{COMMIT_INTERVAL:g}", "-b", "0"]
            return Launch(
                command,
                {**env, "PYTHONPATH": str(APPS)},
                stop_signal=signal.SIGINT,
                committed=lambda: bytewax_committed(store, self.input_ends),  # no group
            )
        if system == "faust":
            command = [python, str(APPS / "faust_app.py"), "worker", "-l", "warn"]
            return Launch(command, env)
        raise RunFailed(f"unknown system {system!r}")

    # -- one run of one system -----------------------------------------------------------
    def run(self, system: str, index: int) -> Result:
        result = Result(system)
        suffix = f"{system}-{index}-{uuid.uuid4().hex[:6]}"
        group = f"bench-peers-{suffix}"
        with tempfile.TemporaryDirectory(prefix=f"bench-peers-{system}.") as tmp:
            state = Path(tmp)
            output = ""
            try:
                if system != "raw":
                    output = create_topic(
                        self.bootstrap, f"bench-peers-out-{suffix}", self.args.partitions
                    )
                launch = self.launch(system, output, group, state)
                self._measure(result, launch, output, group, state)
            except RunFailed as exc:
                result.error = str(exc)
            except Exception as exc:  # a broken system must not stop the others
                result.error = f"{type(exc).__name__}: {exc}"
        return result

    def _measure(
        self, result: Result, launch: Launch, output: str, group: str, state: Path
    ) -> None:
        log = state / "output.log"
        started = time.monotonic()
        with log.open("wb") as sink:
            proc = subprocess.Popen(
                launch.command,
                cwd=state,
                env={**os.environ, **launch.env},
                stdin=subprocess.DEVNULL,
                stdout=sink if output else subprocess.PIPE,
                stderr=sink,
                start_new_session=True,
            )
        process = psutil.Process(proc.pid)
        try:
            if not output:
                self._measure_raw(result, proc, process, log)
                return
            window = self._watch(proc, process, output, log, started)
            result.first_output = window.first_output - started
            done, cpu = window.count - window.first, window.cpu_end - window.cpu_start
            result.rate = done / (window.closed - window.opened)
            result.cpu_per_msg = cpu / done
            result.peak_rss = peak_rss(process)
            result.committed = self._wait_committed(
                launch.committed or (lambda: self._group_committed(group))
            )
        finally:
            result.exit_code = stop(proc, launch.stop_signal)
        verdict = verify(self.topics.read_all(output), self.count)
        result.outputs, result.duplicates = verdict.outputs, verdict.duplicates
        result.missing, result.wrong = verdict.missing, verdict.wrong
        if verdict.example:
            result.notes.append(f"first wrong output: {verdict.example}")

    def _measure_raw(
        self, result: Result, proc: subprocess.Popen[bytes], process: psutil.Process, log: Path
    ) -> None:
        try:
            out, _ = proc.communicate(timeout=self.args.timeout)
        except subprocess.TimeoutExpired as exc:
            raise RunFailed(f"no end after {self.args.timeout:.0f}s: {log_tail(log)}") from exc
        if proc.returncode != 0:
            raise RunFailed(f"exited {proc.returncode}: {log_tail(log)}")
        report = json.loads(out.decode().strip().splitlines()[-1])
        timed = report.get("timed", report["count"])
        result.rate = timed / report["wall"]
        result.cpu_per_msg = report["cpu"] / timed
        result.peak_rss = report["peak_rss"]
        result.outputs = report["count"]
        result.missing = self.count - report["count"]
        result.wrong = 0 if report["ids_ok"] else 1
        result.committed = "n/a (reads only)"

    @dataclass
    class Window:
        opened: float = 0.0
        closed: float = 0.0
        first: int = 0
        count: int = 0
        cpu_start: float = 0.0
        cpu_end: float = 0.0
        first_output: float = 0.0

    def _watch(
        self,
        proc: subprocess.Popen[bytes],
        process: psutil.Process,
        output: str,
        log: Path,
        started: float,
    ) -> Bench.Window:
        """Poll the output topic until N outputs; the window is the warm-up-th to the N-th."""
        window = Bench.Window()
        started_output = 0.0
        deadline = started + self.args.timeout
        last_total, last_change = 0, time.monotonic()
        while True:
            if proc.poll() is not None:
                raise RunFailed(f"exited {proc.returncode} before the end: {log_tail(log)}")
            now = time.monotonic()
            total = self.topics.total(output)
            if total is None:
                time.sleep(POLL)
                continue
            if not started_output and total:
                started_output = now
            if total > self.warmup and not window.first:
                window.opened, window.first, window.cpu_start = now, total, cpu_seconds(process)
            if total >= self.count:
                window.closed, window.count, window.cpu_end = now, total, cpu_seconds(process)
                window.first_output = started_output
                return window
            if total != last_total:
                last_total, last_change = total, now
            if now > deadline or (total and now - last_change > self.args.stall):
                raise RunFailed(
                    f"{total} of {self.count} outputs after {now - started:.0f}s "
                    f"(stalled {now - last_change:.0f}s): {log_tail(log)}"
                )
            time.sleep(POLL)

    def _group_committed(self, group: str) -> tuple[bool, str]:
        wanted = {p: end for p, end in self.input_ends.items() if end > 0}
        committed = committed_offsets(self.bootstrap, group, self.topic)
        if all(committed.get(p, -1) >= end for p, end in wanted.items()):
            return True, "yes (consumer group, to the end)"
        behind = sum(end - committed.get(p, 0) for p, end in wanted.items())
        return False, f"NO: the consumer group is {behind} messages behind"

    @staticmethod
    def _wait_committed(check: Callable[[], tuple[bool, str]]) -> str:
        """Poll ``check`` while the system runs (it commits on its own interval)."""
        wait = 10 * COMMIT_INTERVAL + 10
        deadline = time.monotonic() + wait
        while True:
            try:
                done, what = check()
            except Exception as exc:  # a locked SQLite file, a broker hiccup: look again
                done, what = False, f"NO: {type(exc).__name__}: {exc}"
            if done or time.monotonic() > deadline:
                return what if done else f"{what} after waiting {wait:.0f}s"
            time.sleep(0.5)


def bytewax_committed(store: Path, ends: dict[int, int]) -> tuple[bool, str]:
    """Bytewax's input offsets as snapshotted in its recovery store (SQLite)."""
    import pickle
    import sqlite3

    offsets: dict[int, int] = {}
    for db in store.glob("*.sqlite3"):
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
            if "snaps" not in tables:
                continue
            rows = conn.execute(
                "SELECT state_key, ser_change FROM snaps WHERE step_id LIKE '%books%' "
                "ORDER BY snap_epoch"
            )
            for key, blob in rows:
                if blob is None:
                    continue
                with contextlib.suppress(Exception):
                    offsets[int(str(key).split("-", 1)[0])] = pickle.loads(blob)  # "0-topic"
    wanted = {p: end for p, end in ends.items() if end > 0}
    if offsets and all(offsets.get(p, -1) >= end for p, end in wanted.items()):
        return True, "yes (recovery store, to the end)"
    return False, f"NO: recovery store offsets {offsets or 'not found'}, input ends {wanted}"


def stop(proc: subprocess.Popen[bytes], signum: int, timeout: float = 60) -> int | None:
    """Ask the system to stop, then kill its session if it does not."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signum)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # stray children of the session
    return proc.returncode


# -- the report ------------------------------------------------------------------------------
def median(results: list[Result], value: Callable[[Result], float]) -> float | None:
    good = [value(r) for r in results if not r.error]
    return statistics.median(good) if good else None


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a and b else "n/a"


def run_by_run(results: dict[str, list[Result]], system: str, peer: str) -> list[float]:
    """``system``'s msg/s over ``peer``'s in each run that both finished. The systems take
    turns within a run, so a slow stretch of the VM weighs on both sides of a ratio."""
    pairs = zip(results.get(system, []), results.get(peer, []), strict=False)  # a peer not run: []
    return [a.rate / b.rate for a, b in pairs if not a.error and not b.error and b.rate]


def run_by_run_line(results: dict[str, list[Result]], peers: list[str]) -> str:
    """Headrace's ``run_by_run`` ratios against each of ``peers`` (empty: none finished)."""
    parts = []
    for peer in peers:
        ratios = run_by_run(results, "headrace", peer)
        if ratios:
            each = " ".join(f"{r:.2f}" for r in ratios)
            parts.append(f"Headrace/{peer} {each} (median {statistics.median(ratios):.2f})")
    return "run by run: " + "; ".join(parts) if parts else ""


def report(results: dict[str, list[Result]], runs: int) -> list[str]:
    lines = [
        f"{'system':<10} {'msg/s':>9} {'CPU µs/msg':>10} {'peak RSS':>9} "
        f"{'1st out':>7}  {'correct':<8} offsets committed",
    ]
    rates: dict[str, float | None] = {}
    cpus: dict[str, float | None] = {}
    for system, rows in results.items():
        rate = rates[system] = median(rows, lambda r: r.rate)
        cpu = cpus[system] = median(rows, lambda r: r.cpu_per_msg)
        rss = median(rows, lambda r: r.peak_rss)
        first = median(rows, lambda r: r.first_output)
        if rate is None:
            lines.append(f"{system:<10} FAILED: {rows[-1].error.splitlines()[0][:300]}")
            for row in rows:
                lines.extend("    " + line for line in row.error.splitlines()[1:12])
            continue
        correct = "yes" if all(r.correct for r in rows if not r.error) else "NO"
        lines.append(
            f"{system:<10} {rate:>9,.0f} {cpu * 1e6:>10.1f} {rss / 2**20:>7.0f}MB "  # type: ignore[operator]
            f"{first:>6.1f}s  {correct:<8} {rows[-1].committed}"
        )
        for row in rows:
            if row.error:
                lines.append(f"    a run failed: {row.error.splitlines()[0][:300]}")
            elif not row.correct:
                lines.append(
                    f"    outputs {row.outputs}, duplicates {row.duplicates}, missing "
                    f"{row.missing}, wrong {row.wrong} {' '.join(row.notes)[:300]}"
                )
            elif row.duplicates:
                lines.append(f"    duplicates: {row.duplicates}")
    exits = {
        system: sorted({r.exit_code for r in rows if r.exit_code is not None})
        for system, rows in results.items()
    }
    lines.append(
        "exit codes after the stop signal (SIGTERM; SIGINT for bytewax): "
        + ", ".join(f"{s} {'/'.join(map(str, codes)) or '-'}" for s, codes in exits.items())
    )
    head = rates.get("headrace")
    lines += [
        f"Headrace/Quix msg/s: {ratio(head, rates.get('quix'))}   "
        f"Headrace/Bytewax msg/s: {ratio(head, rates.get('bytewax'))}   "
        f"Headrace/faust msg/s: {ratio(head, rates.get('faust'))}",
        f"engine/raw msg/s: {ratio(head, rates.get('raw'))} (ceiling), "
        f"{ratio(head, rates.get('raw-pipe'))} (raw consume->produce)",
        f"CPU per message, Headrace/raw: {ratio(cpus.get('headrace'), cpus.get('raw'))} "
        f"(ceiling), {ratio(cpus.get('headrace'), cpus.get('raw-pipe'))} (consume->produce)",
        f"(medians of {runs} run{'s' if runs > 1 else ''} per system)",
    ]
    if runs > 1:
        line = run_by_run_line(results, ["quix", "bytewax"])
        lines += [line] if line else []
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--runs", type=int, default=1, help="runs per system; medians reported")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated subset")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per system run")
    parser.add_argument("--stall", type=float, default=60, help="no new output for this long")
    parser.add_argument(
        "--warmup",
        type=float,
        default=WINDOW_FROM,
        help="the timed window opens once this fraction of N is out (start-up excluded)",
    )
    parser.add_argument(
        "--consumer-config",
        type=json.loads,
        default={},
        help="JSON librdkafka settings for every librdkafka consumer (not faust's aiokafka), "
        "e.g. '{\"fetch.queue.backoff.ms\": 20}'; default: each system's own defaults",
    )
    args = parser.parse_args(argv)
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = set(args.systems) - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown systems {sorted(unknown)}; known: {', '.join(SYSTEMS)}")
    return args


@contextlib.contextmanager
def pre_produced(bootstrap: str, args: argparse.Namespace) -> Iterator[str]:
    topic = create_topic(bootstrap, f"bench-peers-in-{uuid.uuid4().hex[:8]}", args.partitions)
    rate = fill(bootstrap, topic, args.messages, args.partitions)
    print(
        f"input: {topic}, {args.partitions} partitions, {args.messages:,} order books of "
        f"{len(order_book(0))} B (produced at {rate:,.0f} msg/s)"
    )
    yield topic


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(
        f"machine: {os.cpu_count()} cpus, load average {os.getloadavg()[0]:.2f}, "
        f"Python {sys.version.split()[0]}"
    )
    same = json.dumps(args.consumer_config) if args.consumer_config else "none (own defaults)"
    print(f"consumer settings given to every librdkafka-based system: {same}")
    with broker() as bootstrap, pre_produced(bootstrap, args) as topic:
        print(f"broker: {bootstrap}")
        bench = Bench(args, bootstrap, topic)
        bench.prepare_peers(args.systems)
        results: dict[str, list[Result]] = {s: [] for s in args.systems}
        for index in range(args.runs):
            for system in args.systems:
                row = bench.run(system, index)
                results[system].append(row)
                what = (
                    f"FAILED: {row.error.splitlines()[0][:200]}"
                    if row.error
                    else f"{row.rate:,.0f} msg/s, {row.cpu_per_msg * 1e6:.1f} µs CPU/msg, "
                    f"correct {row.correct}, committed {row.committed}"
                )
                print(f"run {index + 1} {system}: {what}", flush=True)
        bench.topics.close()
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    print("\n".join(report(results, args.runs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
