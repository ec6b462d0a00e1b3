"""Where one message's CPU goes in a ``headrace run`` worker, per layer (tests/bench/PROFILE.md).

    python -m tests.bench.profile [--messages N] [--rate HZ] [--callgrind M] [--out DIR]

The worker of ``make bench-peers`` (same TOML, same pipeline) runs over N pre-produced
order books. Over the window from its first output to its N-th:

- per-thread CPU from /proc/<pid>/task/*/stat (exact; librdkafka's own threads are named
  ``rdk:*``, every Python thread carries the process name);
- py-spy ``record --threads --native --idle``-less samples of the Python threads, each
  sample charged to the layer of its innermost Headrace frame (``LAYERS``), and the Python
  threads' CPU split over the layers in proportion to their samples;
- with ``--callgrind M``: a second worker under ``valgrind --tool=callgrind`` with
  instrumentation switched on (``callgrind_control -i on``) only after its first output
  and off after M more outputs: instructions per message, which hold on a loaded machine,
  plus the native functions that cost the most (inclusive).

Writes stacks, tables and callgrind output into --out (default /tmp/headrace-profile).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from tests.bench.kafka_throughput import broker, fill
from tests.bench.peer_venvs import REQUIREMENTS, PeerUnavailable, ensure, parse_requirements
from tests.bench.peers import Bench, Topics, log_tail, parse_args, stop
from tests.fixtures.kafka_broker import create_topic

TICKS = os.sysconf("SC_CLK_TCK")

# (path fragment, function regex or "", layer): the first match of a sample's innermost
# Headrace frame names its layer. Function names as of the profiled commit; an unmatched
# Headrace frame shows as "other: <file>" so a rename is visible, not silently misfiled.
LAYERS: list[tuple[str, str, str]] = [
    ("connectors/kafka/source.py", r"^_fetch$|^_call$|^_fetch_loop$", "fetch (consumer hand-off)"),
    ("connectors/kafka/source.py", r"^_wait_for_room$|paus|resum|_on_space", "backpressure"),
    ("connectors/kafka/source.py", r"commit|_update_lag", "commit"),
    ("connectors/kafka/source.py", r"^_handle$|^_offer_many$", "source: decode + route"),
    ("connectors/kafka/source.py", "", "source: other"),
    ("connectors/kafka/offsets.py", "", "offset tracker"),
    ("accumulators/channel.py", r"settle|SharedAck|__call__", "ack"),
    ("accumulators/channel.py", "", "channel"),
    ("accumulators/runners.py", r"transform", "accumulator: transform/validate"),
    ("accumulators/", "", "accumulator"),
    ("reactors/policy.py", "", "policy"),
    ("reactors/", "", "reactor: fire"),
    ("engine/runtime.py", "", "reactor: fire"),
    ("engine/graph/executor.py", "", "executor"),
    ("engine/graph_runner.py", "", "graph runner"),
    ("connectors/kafka/sink.py", "", "sink encode"),
    ("connectors/sinks.py", "", "sink encode"),
    ("connectors/kafka/producer.py", r"produce", "produce"),
    ("connectors/kafka/producer.py", "", "delivery report"),
    ("engine/observers.py", "", "observers"),
    ("engine/ops/metrics.py", "", "metrics"),
    ("engine/store/", "", "state store"),
    ("engine/ops/logging.py", "", "logging"),
    ("engine/ops/http.py", "", "http"),
    ("tests/bench/peer_apps/", "", "user code (validate, mid/spread)"),
]
FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>[^:()]+)(?::(?P<line>\d+))?\)$")


@dataclass
class ThreadCpu:
    name: str
    seconds: float


def threads_cpu(pid: int) -> dict[int, ThreadCpu]:
    """utime+stime of every thread of ``pid``, by thread id."""
    out: dict[int, ThreadCpu] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            stat = (task / "stat").read_text()
            name = stat[stat.index("(") + 1 : stat.rindex(")")]
            fields = stat[stat.rindex(")") + 2 :].split()
            out[int(task.name)] = ThreadCpu(name, (int(fields[11]) + int(fields[12])) / TICKS)
    return out


REPO_PREFIX = str(Path(__file__).resolve().parents[2]) + "/"
PROJECT = ("engine/", "connectors/", "accumulators/", "reactors/", "headrace/", "tests/")


def project_path(path: str) -> str | None:
    """The repository-relative path of a Headrace (or benchmark) frame, else None.

    py-spy prints paths relative to the sys.path entry they were found under, so
    ``sqlalchemy/engine/default.py`` is a library and ``engine/worker.py`` is ours.
    """
    path = path.removeprefix(REPO_PREFIX)
    return path if path.startswith(PROJECT) else None


def layer_of(frames: list[str]) -> str:
    """The layer of one sample (frames outermost first, as py-spy's raw format writes):
    that of its innermost Headrace frame; library frames below it count to that layer."""
    for frame in reversed(frames):
        match = FRAME.match(frame)
        if match is None:
            continue
        path = project_path(match["file"])
        if path is None:
            continue
        function = re.sub(r"\.<locals>.*$", "", match["function"]).rsplit(".", 1)[-1]
        for fragment, function_re, layer in LAYERS:
            if path.startswith(fragment) and (not function_re or re.search(function_re, function)):
                return layer
        if path.startswith(("engine/cli.py", "engine/worker.py")):
            break  # only the worker's main(): the event loop itself
        return f"other: {path}"
    if any("asyncio/" in frame or "selectors.py" in frame for frame in frames):
        return "event loop (asyncio scheduling, selector, no Headrace frame)"
    return "other (no Headrace frame)"


WAITS = re.compile(
    r"pthread_cond_(timed)?wait|cnd_(timed)?wait|sem_(clock|timed)?wait|select_epoll_poll_impl"
    r"|_queue_SimpleQueue_get_impl|Condition\.wait|take_gil|acquire_timed|epoll_wait|__poll"
    r"|PyThread_acquire_lock|lock_PyThread_acquire_lock|time_sleep|pysleep"
    # Python-level waits (py-spy without --native): the selector's epoll, a thread pool
    # worker's queue.get, Event/Condition waits
    r"|^EpollSelector\.select$|^_worker$|^Event\.wait$|^Condition\.wait$|Queue\.get$"
)
THREAD = re.compile(r"^thread \((?P<tid>\d+)\): ?(?P<name>.*)$")


def waiting(frames: list[str]) -> bool:
    """A sample whose innermost named frame is a wait: py-spy --native counts it as active."""
    for frame in reversed(frames):
        if frame.startswith("0x"):  # an unnamed libc address
            continue
        return bool(WAITS.search(frame.split(" (", 1)[0].strip()))
    return False


Samples = collections.Counter[tuple[int, str, str]]  # (tid, thread name, layer) -> samples


def read_samples(path: Path) -> tuple[Samples, int]:
    """py-spy ``--format raw --threads`` lines (``thread (tid): name;frame;... count``):
    active samples per thread and layer, and how many samples were waits (dropped)."""
    samples: Samples = collections.Counter()
    waits = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        thread = THREAD.match(frames[0])
        if thread is None:
            continue
        if waiting(frames):
            waits += int(count)
            continue
        key = (int(thread["tid"]), thread["name"], layer_of(frames))
        samples[key] += int(count)
    return samples, waits


def hot_lines(path: Path, top: int = 25) -> list[tuple[str, int]]:
    """The innermost Headrace (or user) file:line of each sample, most sampled first."""
    lines: collections.Counter[str] = collections.Counter()
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if not count.isdigit() or waiting(frames):
            continue
        for frame in reversed(frames):
            match = FRAME.match(frame)
            if match and match["line"] and project_path(match["file"]):
                where = project_path(match["file"])
                lines[f"{where}:{match['line']} {match['function']}"] += int(count)
                break
    return lines.most_common(top)


def wait_outputs(
    topics: Topics,
    output: str,
    count: int,
    proc: subprocess.Popen[bytes],
    log: Path,
    timeout: float,
) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited {proc.returncode}: {log_tail(log)}")
        total = topics.total(output)
        if total is not None and total >= count:
            return total
        time.sleep(0.02)
    raise RuntimeError(f"fewer than {count} outputs on {output} after {timeout:.0f}s")


def start_worker(
    bench: Bench, state: Path, *, wrapper: list[str] | None = None
) -> tuple[subprocess.Popen[bytes], str, Path]:
    suffix = uuid.uuid4().hex[:6]
    output = create_topic(bench.bootstrap, f"bench-profile-out-{suffix}", bench.args.partitions)
    launch = bench.launch("headrace", output, f"bench-profile-{suffix}", state)
    command = launch.command
    if wrapper:  # valgrind runs the interpreter, not the console script's shebang
        command = [*wrapper, sys.executable, "-m", "headrace", *command[1:]]
    log = state / "worker.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            command,
            cwd=state,
            env={**os.environ, **launch.env},
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=sink,
            start_new_session=True,
        )
    return proc, output, log


def sample(bench: Bench, out: Path, rate: int, py_spy: Path, native: bool, perf: bool) -> list[str]:
    """py-spy + /proc over one worker's window: the per-layer and per-thread tables."""
    with tempfile.TemporaryDirectory(prefix="bench-profile.") as tmp:
        state = Path(tmp)
        proc, output, log = start_worker(bench, state)
        spy = None
        try:
            first = wait_outputs(bench.topics, output, 1, proc, log, bench.args.timeout)
            before, t0 = threads_cpu(proc.pid), time.monotonic()
            stacks = out / "py-spy.raw.txt"
            spy = (
                None
                if not rate
                else subprocess.Popen(
                    [
                        *(str(py_spy), "record", "--pid", str(proc.pid), "--threads"),
                        *(("--native",) if native else ("--nonblocking",)),
                        *("--rate", str(rate), "--format", "raw", "--output", str(stacks)),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=(out / "py-spy.log").open("wb"),
                )
            )
            perf_data = out / "perf.data"
            recorder = None
            if perf:  # cpu-clock: a software event, so it works where the PMU is virtualised away
                recorder = subprocess.Popen(
                    [
                        *("perf", "record", "-e", "cpu-clock", "-F", "499"),
                        *("-p", str(proc.pid), "-o", str(perf_data)),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=(out / "perf.log").open("wb"),
                )
            last = wait_outputs(bench.topics, output, bench.count, proc, log, bench.args.timeout)
            after, wall = threads_cpu(proc.pid), time.monotonic() - t0
            if recorder is not None:
                recorder.send_signal(signal.SIGINT)
                recorder.wait(60)
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(60)
        finally:
            if spy is not None and spy.poll() is None:
                spy.kill()
            stop(proc, signal.SIGTERM)
            shutil.copy(log, out / "worker.log")
    messages = last - first
    samples, waits = read_samples(stacks) if rate else (collections.Counter(), 0)
    cpu = {
        tid: after[tid].seconds - (before[tid].seconds if tid in before else 0.0) for tid in after
    }
    total = sum(cpu.values())
    per_thread: dict[int, int] = collections.Counter()
    for (tid, _, _), count in samples.items():
        per_thread[tid] += count
    layers: dict[str, float] = collections.defaultdict(float)  # layer -> CPU seconds
    layer_samples: collections.Counter[str] = collections.Counter()
    for (tid, _, layer), count in samples.items():
        layers[layer] += cpu.get(tid, 0.0) * count / per_thread[tid]
        layer_samples[layer] += count
    for tid, seconds in cpu.items():  # threads py-spy does not see (librdkafka's own)
        if tid not in per_thread and seconds > 0:
            layers[f"thread {after[tid].name} (native, unsampled)"] += seconds
    lines = [
        f"window: {messages:,} messages in {wall:.2f}s ({messages / wall:,.0f} msg/s while "
        f"sampled at {rate} Hz), CPU {total:.2f}s = {total / messages * 1e6:.1f} µs/msg; "
        f"{sum(samples.values()):,} active samples, {waits:,} waiting samples dropped",
        "",
        "| thread | tid | CPU µs/msg | share | active samples |",
        "|---|---:|---:|---:|---:|",
    ]
    names = {tid: name for tid, name, _ in samples}
    for tid, seconds in sorted(cpu.items(), key=lambda kv: -kv[1]):
        if seconds <= 0:
            continue
        name = names.get(tid, after[tid].name)
        lines.append(
            f"| {name} | {tid} | {seconds / messages * 1e6:.2f} | {seconds / total:.1%} "
            f"| {per_thread.get(tid, 0)} |"
        )
    if rate:
        lines += [
            "",
            "Each thread's CPU split over layers in proportion to its active samples:",
            "",
            "| layer | samples | CPU µs/msg | share of CPU |",
            "|---|---:|---:|---:|",
        ]
    for layer, seconds in sorted(layers.items(), key=lambda kv: -kv[1]) if rate else []:
        lines.append(
            f"| {layer} | {layer_samples.get(layer, 0)} | {seconds / messages * 1e6:.2f} "
            f"| {seconds / total:.1%} |"
        )
    active = sum(samples.values())
    if perf:
        lines += ["", *native_threads(perf_data, cpu, messages, names)]
    if not rate:  # no samples: the thread and native tables are all there is
        return lines
    lines += ["", "| innermost Headrace/user line | samples | share |", "|---|---:|---:|"]
    for where, count in hot_lines(stacks):
        lines.append(f"| {where} | {count} | {count / active:.1%} |")
    return lines


PERF_LINE = re.compile(r"^\s*([\d.]+)%\s+(\d+):(\S+)\s+(\S+)\s+\[(.)\]\s+(.*)$")


GC_SYMBOLS = re.compile(
    r"^(gc_collect_main|visit_decref|visit_reachable|move_unreachable|update_refs|"
    r"subtract_refs|deduce_unreachable|gc_collect_with_callback|_PyObject_GC_Link)"
)


def native_threads(
    data: Path,
    cpu: dict[int, float],
    messages: int,
    thread_names: dict[int, str] | None = None,
    top: int = 5,
) -> list[str]:
    """perf's cpu-clock samples per thread: the native symbols each one spends on (the only
    view into librdkafka's own threads; for Python threads it shows GC and allocator)."""
    report = subprocess.run(
        [
            *("perf", "report", "-i", str(data), "--stdio"),
            *("--sort", "pid,dso,sym", "--percent-limit", "0.05"),  # "pid" is per thread
        ],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    (data.parent / "perf.report.txt").write_text(report)
    per_thread: dict[int, list[tuple[float, str]]] = collections.defaultdict(list)
    names: dict[int, str] = {}
    for line in report.splitlines():
        match = PERF_LINE.match(line)
        if match:
            tid = int(match[2])
            names[tid] = match[3]
            kind = "kernel" if match[5] == "k" else Path(match[4]).name.split("-")[0]
            per_thread[tid].append((float(match[1]), f"{match[6].strip()} ({kind})"))
    lines = [
        "Native view per thread (perf record -e cpu-clock -F 499 over the same window):",
        "",
        "| thread | tid | CPU µs/msg | role | cyclic GC | kernel | top symbols (share of all "
        "samples) |",
        "|---|---:|---:|---|---:|---:|---|",
    ]
    for tid, rows in sorted(per_thread.items(), key=lambda kv: -cpu.get(kv[0], 0.0)):
        symbols = " ".join(sym for _, sym in rows)
        role = (
            "python"
            if not names[tid].startswith("rdk:")
            else "producer (sink)"
            if re.search(r"msgset_writer|producer_serve|produce", symbols)
            else "consumer"
            if re.search(r"msgset_reader|fetch", symbols)
            else "librdkafka"
        )
        tops = "; ".join(f"{sym} {share:.1f}%" for share, sym in rows[:top])
        lines.append(
            f"| {names[tid]} | {tid} | {cpu.get(tid, 0.0) / messages * 1e6:.2f} | {role} | {tops} |"
        )
    return lines


def callgrind(bench: Bench, out: Path, messages: int) -> list[str]:
    """Instructions per message over ``messages`` outputs, instrumented only in that window."""
    cg_out = out / "callgrind.out"
    wrapper = [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={cg_out}",
        "--dump-instr=no",
        "--separate-threads=yes",
    ]
    with tempfile.TemporaryDirectory(prefix="bench-profile-cg.") as tmp:
        state = Path(tmp)
        proc, output, log = start_worker(bench, state, wrapper=wrapper)
        try:
            timeout = bench.args.timeout * 10
            first = wait_outputs(bench.topics, output, 1, proc, log, timeout)
            subprocess.run(["callgrind_control", "-i", "on", str(proc.pid)], check=True)
            started = bench.topics.total(output) or first
            last = wait_outputs(bench.topics, output, started + messages, proc, log, timeout)
            subprocess.run(["callgrind_control", "-i", "off", str(proc.pid)], check=True)
            subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True)
        finally:
            stop(proc, signal.SIGTERM, timeout=120)
            shutil.copy(log, out / "worker-callgrind.log")
    done = last - started
    # --separate-threads: one file per thread of each dump, callgrind.out.<dump>-<thread>
    threads = sorted(p for p in out.glob("callgrind.out.*-*") if _total_ir(p))
    if not threads:
        return ["callgrind: no dump with instructions"]
    dump_number = max(p.name.rsplit("-", 1)[0] for p in threads)
    threads = [p for p in threads if p.name.rsplit("-", 1)[0] == dump_number]
    total = sum(_total_ir(p) for p in threads)
    annotated = ""
    per_thread: list[tuple[str, int, str]] = []
    inclusive: collections.Counter[str] = collections.Counter()
    for path in threads:
        text = subprocess.run(
            ["callgrind_annotate", "--inclusive=yes", "--threshold=100", str(path)],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        annotated += text
        rows = _top_inclusive(text, INCLUSIVE, 100)
        for ir, function in rows:
            inclusive[function] += ir
        per_thread.append((path.name.rsplit("-", 1)[1], _total_ir(path), _role(rows)))
    (out / "callgrind.inclusive.txt").write_text(annotated)
    (out / "callgrind.window.txt").write_text(f"{dump_number} {done} {total}\n")
    objects: collections.Counter[str] = collections.Counter()
    functions: collections.Counter[tuple[str, str]] = collections.Counter()
    for path in threads:
        thread_objects, thread_functions = self_costs(path)
        objects.update(thread_objects)
        functions.update(thread_functions)
    lines = [
        f"callgrind: {total:,} instructions over {done:,} messages = "
        f"{total / done:,.0f} instructions/msg (all threads; collection switched on after "
        "the first output and off after the window, by callgrind_control)",
        "",
        "| callgrind thread | instructions/msg | share | what runs there (by its calls) |",
        "|---:|---:|---:|---|",
        *(
            f"| {number} | {ir / done:,.0f} | {ir / total:.1%} | {role} |"
            for number, ir, role in sorted(per_thread, key=lambda t: -t[1])
            if ir / total >= 0.001
        ),
        "",
        "| shared object (self instructions) | instructions/msg | share |",
        "|---|---:|---:|",
    ]
    for name, ir in objects.most_common(12):
        lines.append(f"| {name} | {ir / done:,.0f} | {ir / total:.1%} |")
    lines += ["", "| function (self instructions) | instructions/msg | share |", "|---|---:|---:|"]
    for (obj, fn), ir in functions.most_common(25):
        lines.append(f"| `{fn[:80]}` ({obj}) | {ir / done:,.0f} | {ir / total:.1%} |")
    lines += [
        "",
        "| named native call (inclusive, summed over threads) | instructions/msg | share |",
        "|---|---:|---:|",
    ]
    for function, ir in inclusive.most_common(15):
        lines.append(f"| `{function[:90]}` | {ir / done:,.0f} | {ir / total:.1%} |")
    return lines


INCLUSIVE = re.compile(
    r"orjson|rd_kafka_(producev|produce|consume_batch|poll|q_serve|broker_serve|msg_new)\b"
    r"|sqlite3_step|sqlite3VdbeExec|validate_python|gc_collect_main|_PyObject_Malloc|"
    r"PyObject_Free|take_gil|drop_gil|task_step_impl|_PyObject_GC_Link"
    r"|rd_kafka_msgset_reader_run|rd_kafka_msgset_create_ProduceRequest"
)


def self_costs(dump: Path) -> tuple[collections.Counter[str], collections.Counter[tuple[str, str]]]:
    """Self (exclusive) instructions per shared object and per function, from the dump.

    A cost line right after ``calls=`` is the inclusive cost of that call, not self cost.
    """
    spaces: dict[str, dict[str, str]] = {"ob": {}, "fl": {}, "fn": {}}  # name compression
    space_of = {"ob": "ob", "cob": "ob", "fn": "fn", "cfn": "fn"}

    def name(key: str, value: str) -> str:
        names = spaces[space_of.get(key, "fl")]
        match = re.match(r"\((\d+)\)(?: (.*))?", value)
        if not match:
            return value
        if match[2] is not None:
            names[match[1]] = match[2]
        return names.get(match[1], value)

    objects: collections.Counter[str] = collections.Counter()
    functions: collections.Counter[tuple[str, str]] = collections.Counter()
    ob = fn = "?"
    after_call = False
    for line in dump.read_text(errors="replace").splitlines():
        key, _, value = line.partition("=")
        if key == "ob":
            ob = Path(name(key, value)).name
        elif key == "fn":
            fn = name(key, value)
        elif key in ("cob", "cfi", "cfl", "cfn", "fl", "fi", "fe"):
            name(key, value)
        elif key == "calls":
            after_call = True
        elif line[:1].isdigit() or line[:1] in "+-*":
            if after_call:
                after_call = False
                continue
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                objects[ob] += int(parts[1])
                functions[(ob, fn)] += int(parts[1])
    return objects, functions


ROLES = [  # the first named call a thread makes much of tells what the thread is
    ("task_step_impl", "event loop (asyncio tasks: source, reactor, graph, sink)"),
    ("sqlite3_step", "state store writer (SQLAlchemy + sqlite3)"),
    ("rd_kafka_msgset_create_ProduceRequest", "librdkafka broker thread, producer (sink)"),
    ("rd_kafka_msgset_reader_run", "librdkafka broker thread, consumer (fetch)"),
    ("rd_kafka_broker_serve", "librdkafka broker thread"),
    ("rd_kafka_poll", "sink producer's poll thread (delivery reports)"),
    ("rd_kafka_consume", "consumer thread (consume batches)"),
]


def _role(rows: list[tuple[int, str]]) -> str:
    for marker, role in ROLES:
        if any(marker in function for _, function in rows):
            return role
    return "?"


def _total_ir(dump: Path) -> int:
    """The dump's instruction total (``totals:``; ``summary:`` stays 0 when collection was
    switched on by callgrind_control)."""
    found = [0]
    with contextlib.suppress(OSError, ValueError):
        for line in dump.read_text(errors="replace").splitlines():
            if line.startswith(("summary:", "totals:")):
                found.append(int(line.split()[1]))
    return max(found)


def _top_inclusive(annotated: str, wanted: re.Pattern[str], top: int = 15) -> list[tuple[int, str]]:
    rows: list[tuple[int, str]] = []
    for line in annotated.splitlines():
        match = re.match(r"^\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+(.*)$", line)
        if match and "'" not in match[2].split(" [")[0] and wanted.search(match[2]):
            rows.append((int(match[1].replace(",", "")), match[2].split(" [")[0].strip()))
    return rows[:top]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument(
        "--rate", type=int, default=100, help="py-spy samples per second; 0: threads' CPU only"
    )
    parser.add_argument(
        "--native",
        action="store_true",
        help="py-spy --native (C frames too; pauses the worker per sample) instead of "
        "--nonblocking (Python frames only, barely perturbs it)",
    )
    parser.add_argument(
        "--perf", action="store_true", help="perf record -e cpu-clock the librdkafka threads"
    )
    parser.add_argument("--callgrind", type=int, default=0, help="messages under callgrind")
    parser.add_argument("--out", type=Path, default=Path("/tmp/headrace-profile"))
    own = parser.parse_args(argv)
    own.out.mkdir(parents=True, exist_ok=True)
    sections = parse_requirements(REQUIREMENTS.read_text())
    try:
        py_spy = ensure("profile", sections.get("profile", [])).python.with_name("py-spy")
    except PeerUnavailable as exc:
        print(f"py-spy not available: {exc}")
        return 1
    args = parse_args(["--messages", str(own.messages), "--systems", "headrace"])
    report: list[str] = []
    with broker() as bootstrap:
        topic = create_topic(bootstrap, f"bench-profile-in-{uuid.uuid4().hex[:8]}", 4)
        fill(bootstrap, topic, own.messages, 4)
        bench = Bench(args, bootstrap, topic)
        report += sample(bench, own.out, own.rate, py_spy, own.native, own.perf)
        if own.callgrind:
            report += ["", *callgrind(bench, own.out, own.callgrind)]
        bench.topics.close()
    text = "\n".join(report)
    (own.out / "profile.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
