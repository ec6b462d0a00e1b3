"""``headrace run`` in a subprocess, driven from a test: JSON in, outputs, dead letters,
health and metrics over HTTP, SIGTERM and the exit code.

The worker logs JSON lines (``--log-format json``); they are parsed as they arrive, so a
test can wait for ``worker ready`` and read the HTTP address from it. Config files should
take the HTTP port from ``${HEADRACE_HTTP_PORT:-...}``: the worker gets
``HEADRACE_HTTP_PORT=0`` (a free port) unless ``env`` says otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from headrace.testing.kafka import KafkaRecord

KeyArg = bytes | str | Callable[[Any], bytes | str | None] | None


class WorkerError(AssertionError):
    """The worker did not do what the test waited for; the message ends with its output."""


class _WorkerClient:
    """What a test does to a running worker: Kafka in and out, HTTP, stop."""

    bootstrap: str | None
    token: str | None

    def ready(self, timeout: float = 60.0) -> str:
        raise NotImplementedError

    def output(self) -> str:
        raise NotImplementedError

    @property
    def url(self) -> str:
        return self.ready()

    # -- Kafka ---------------------------------------------------------------------------
    def _bootstrap(self) -> str:
        if self.bootstrap is None:
            raise ValueError("this worker was started without a Kafka bootstrap address")
        return self.bootstrap

    def produce_json(
        self, topic: str, values: Iterable[Any], key: KeyArg = None
    ) -> list[tuple[int, int]]:
        """Produce each value as JSON; returns (partition, offset) of each, in order."""
        from headrace.testing.kafka import produce_json

        return produce_json(self._bootstrap(), topic, values, key)

    def wait_for_outputs(self, topic: str, count: int, timeout: float = 60.0) -> list[Any]:
        """The first ``count`` JSON records of ``topic`` (read from the beginning, by
        partition and offset); ``WorkerError`` with the worker's output when fewer
        arrive in ``timeout``."""
        return [record.json() for record in self.records(topic, count, timeout)]

    def dead_letters(self, topic: str, count: int, timeout: float = 60.0) -> list[KafkaRecord]:
        """The first ``count`` dead letters: on ``<source topic>.dlq`` for bad messages
        (original bytes; headers ``error``, ``source.topic``, ``source.partition``,
        ``source.offset``, ``accumulator``), on the execution topic for failed executions
        (JSON with graph, node, reason, inputs)."""
        return self.records(topic, count, timeout)

    def records(self, topic: str, count: int, timeout: float = 60.0) -> list[KafkaRecord]:
        """The first ``count`` records of ``topic`` with key and headers (waits for the
        topic to appear)."""
        from headrace.testing.kafka import consume_messages

        try:
            return consume_messages(self._bootstrap(), topic, count, timeout)
        except AssertionError as exc:
            raise WorkerError(f"{exc}\n{self.output()}") from None

    # -- HTTP ----------------------------------------------------------------------------
    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.url + path, headers=self._headers(), timeout=10)

    def health(self, path: str = "/v1/health/graphs") -> Any:
        """A health endpoint's JSON (default: every graph's health)."""
        response = self.get(path)
        response.raise_for_status()
        return response.json()

    def metrics(self) -> str:
        """The Prometheus text of ``/metrics``."""
        response = self.get("/metrics")
        response.raise_for_status()
        return response.text

    def push(self, accumulator: str, value: Any) -> httpx.Response:
        """POST a value into a passthrough accumulator."""
        return httpx.post(
            f"{self.url}/v1/accumulators/{accumulator}",
            json=value,
            headers=self._headers(),
            timeout=10,
        )


class HeadraceWorker(_WorkerClient):
    """One ``python -m headrace run FILE.toml ...`` process.

    ``env`` is added to this process's environment (a ``None`` value removes a variable).
    ``log_format`` is passed as ``--log-format`` (``None``: the worker's default, JSON off
    a terminal). ``stdout_path``/``stderr_path`` keep a copy of each stream in a file, line
    by line as it arrives. ``args`` go after the files (``["--packages", DIR]``). With
    ``die_with_parent`` (Linux) the worker is SIGKILLed when the thread that started it
    ends, so a crashed test run leaves no worker behind.
    """

    def __init__(
        self,
        files: Sequence[str | Path],
        *,
        env: Mapping[str, str | None] | None = None,
        cwd: str | Path | None = None,
        bootstrap: str | None = None,
        token: str | None = None,
        python: str = sys.executable,
        log_format: str | None = "json",
        stdout_path: str | Path | None = None,
        stderr_path: str | Path | None = None,
        die_with_parent: bool = False,
        args: Sequence[str] = (),
    ) -> None:
        if not files:
            raise ValueError("headrace_worker needs at least one TOML config file")
        self.files = [Path(f).resolve() for f in files]
        self.cwd = Path(cwd) if cwd is not None else self.files[0].parent
        self.bootstrap = bootstrap
        self.token = token
        self.lines: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self.stderr: list[str] = []
        self._base_url: str | None = None
        self._changed = threading.Condition()
        child_env: dict[str, str | None] = {**os.environ, "HEADRACE_HTTP_PORT": "0"}
        if bootstrap is not None:
            child_env["KAFKA_BOOTSTRAP_SERVERS"] = bootstrap
        child_env.update(env or {})
        fmt = ["--log-format", log_format] if log_format else []
        self.proc = subprocess.Popen(
            [python, "-m", "headrace", "run", *map(str, self.files), *fmt, *args],
            cwd=self.cwd,
            env={k: v for k, v in child_env.items() if v is not None},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=set_parent_death_signal if die_with_parent else None,
        )
        self._readers = [
            threading.Thread(
                target=self._read, args=(self.proc.stdout, self.raw, stdout_path), daemon=True
            ),
            threading.Thread(
                target=self._read, args=(self.proc.stderr, self.stderr, stderr_path), daemon=True
            ),
        ]
        for reader in self._readers:
            reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    # -- the log -------------------------------------------------------------------------
    def _read(self, stream: IO[str] | None, into: list[str], copy: str | Path | None) -> None:
        assert stream is not None
        with contextlib.ExitStack() as stack:
            file = stack.enter_context(open(copy, "w")) if copy is not None else None
            for line in stream:
                text = line.rstrip("\n")
                if file is not None:
                    file.write(line)
                    file.flush()
                with self._changed:
                    into.append(text)
                    if into is self.raw:
                        with contextlib.suppress(ValueError):
                            parsed = json.loads(text)
                            if isinstance(parsed, dict):
                                self.lines.append(parsed)
                    self._changed.notify_all()

    def events(self, event: str) -> list[dict[str, Any]]:
        """Every JSON log line whose ``event`` is ``event``, so far."""
        with self._changed:
            return [line for line in self.lines if line.get("event") == event]

    def wait_for_log(self, event: str, timeout: float = 60.0) -> dict[str, Any]:
        """The first log line with this ``event``; ``WorkerError`` when the worker exits or
        ``timeout`` passes first."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    if line.get("event") == event:
                        return line
                if self.proc.poll() is not None and not any(r.is_alive() for r in self._readers):
                    raise WorkerError(
                        f"worker exited with {self.proc.returncode} before logging "
                        f"{event!r}:\n{self.output()}"
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise WorkerError(f"no {event!r} log line in {timeout}s:\n{self.output()}")
                self._changed.wait(min(remaining, 0.2))

    def ready(self, timeout: float = 60.0) -> str:
        """Wait for ``worker ready``; return the base URL of the HTTP API (``None``-safe:
        raises when the config has no HTTP server)."""
        line = self.wait_for_log("worker ready", timeout)
        url = line.get("http")
        if not url:
            raise WorkerError(f"the worker serves no HTTP API:\n{self.output()}")
        self._base_url = str(url)
        return self._base_url

    @property
    def url(self) -> str:
        return self._base_url or self.ready()

    def output(self) -> str:
        """The end of the worker's stdout and stderr, for failure messages."""
        with self._changed:
            tail = "\n".join(self.raw[-60:])
            errors = "\n".join(self.stderr[-30:])
        return f"--- stdout (last lines) ---\n{tail}\n--- stderr ---\n{errors}"

    # -- signals and stopping ------------------------------------------------------------
    def send(self, signum: int) -> None:
        """Send ``signum`` and return at once (``SIGKILL``: a crash, ``SIGSTOP``/``SIGCONT``:
        a frozen process); a worker that already exited is left alone."""
        if self.proc.poll() is None:
            self.proc.send_signal(signum)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        """Send ``signum`` (default SIGTERM: drain and stop); return the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
        return self.wait(timeout)

    def wait(self, timeout: float = 60.0) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise WorkerError(f"worker did not exit in {timeout}s:\n{self.output()}") from None
        for reader in self._readers:
            reader.join(5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()


class InProcessWorker(_WorkerClient):
    """The same worker (``headrace.engine.worker.Worker``) in this process, on its own
    event loop in a thread: faster to start, and a debugger or coverage sees the graph
    code. No signals: ``stop()`` asks it to drain, as SIGTERM would. Its declarations go
    into this process's registry (the ``headrace_worker`` fixture isolates them)."""

    def __init__(
        self,
        files: Sequence[str | Path],
        *,
        env: Mapping[str, str] | None = None,
        bootstrap: str | None = None,
        token: str | None = None,
    ) -> None:
        from headrace.engine.config.loader import load_config
        from headrace.engine.worker import Worker

        if not files:
            raise ValueError("headrace_worker needs at least one TOML config file")
        self.files = [Path(f).resolve() for f in files]
        self.bootstrap = bootstrap
        self.token = token
        environ = {**os.environ, "HEADRACE_HTTP_PORT": "0"}
        if bootstrap is not None:
            environ["KAFKA_BOOTSTRAP_SERVERS"] = bootstrap
        environ.update(env or {})
        before = set(sys.modules)
        self.worker = Worker(load_config(self.files, environ=environ), install_signals=False)
        self.imported = sorted(set(sys.modules) - before)
        """Modules the config's ``modules = [...]`` imported (see ``forget_modules``)."""
        self.exit_code: int | None = None
        self.error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="headrace-worker", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        async def main() -> int:
            self._loop = asyncio.get_running_loop()
            self._started.set()
            return await self.worker.run()

        try:
            self.exit_code = asyncio.run(main())
        except BaseException as error:  # reported by ready()/stop()
            self.error = error
        finally:
            self._started.set()

    def ready(self, timeout: float = 60.0) -> str:
        """Wait until the runtime has started; return the base URL of the HTTP API."""
        deadline = time.monotonic() + timeout
        while True:
            runtime, http = self.worker.runtime, self.worker.http
            if runtime is not None and runtime.started_at is not None and http is not None:
                return str(http.url)
            if not self._thread.is_alive():
                raise WorkerError(f"worker stopped with {self.exit_code} before it was ready")
            if time.monotonic() > deadline:
                raise WorkerError(f"worker not ready in {timeout}s")
            time.sleep(0.05)

    def output(self) -> str:
        return f"(in-process worker; exit code {self.exit_code}, error {self.error!r})"

    def stop(self, timeout: float = 60.0) -> int:
        """Drain and stop, as on SIGTERM; return the exit code the CLI would exit with."""
        self._started.wait(timeout)
        if self._loop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self.worker.request_stop, None, "test stop")
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise WorkerError(f"in-process worker did not stop in {timeout}s")
        if self.error is not None:
            raise WorkerError(f"in-process worker raised {self.error!r}") from self.error
        assert self.exit_code is not None
        return self.exit_code

    def kill(self) -> None:
        """Best effort at the end of a test: stop it if it still runs."""
        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                self.stop(timeout=30)

    def forget_modules(self) -> list[str]:
        """Drop from ``sys.modules`` the declaring modules this worker's config imported,
        so the next in-process worker imports them again and re-registers their
        accumulators, reactors and graphs (after the registry was restored). Returns them.
        """
        dropped = [name for name in self.imported if _declares(sys.modules.get(name))]
        for name in dropped:
            del sys.modules[name]
        return dropped


def set_parent_death_signal() -> None:  # pragma: no cover - runs in the child
    """PR_SET_PDEATHSIG(SIGKILL): the worker must not outlive the test that started it."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)


def _declares(module: Any) -> bool:
    """The module defines a Headrace accumulator, reactor or graph at its top level."""
    from headrace.engine.graph.builder import ComputationGraphBuilder

    if module is None:
        return False
    for value in list(vars(module).values()):
        try:
            if (
                isinstance(value, ComputationGraphBuilder)
                or hasattr(value, "__headrace_reactor__")
                or hasattr(value, "__headrace_accumulator__")
            ):
                return True
        except Exception:  # an object whose attribute lookup raises is not a declaration
            continue
    return False
