"""The broker dies and comes back mid-stream: the worker keeps retrying and loses nothing.

Restarting the session broker would disturb the other tests, so this test runs its own
broker from docker/local-kafka/kafka-local.sh (whatever KAFKA_BOOTSTRAP_SERVERS says) and
restarts it on the same port and data directory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from headrace.testing.worker import set_parent_death_signal
from tests.fixtures import ScriptError, env_line, run_script, unavailable
from tests.fixtures.kafka_broker import (
    KAFKA_LOCAL,
    broker_answers,
    create_topic,
    unique_topic,
)
from tests.integration.kafka_harness import (
    OutputReader,
    PacedProducer,
    Worker,
    assert_committed_to_end,
)

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(240)]


class PrivateBroker:
    """A broker of our own that can be killed and started again with the same data."""

    def __init__(self) -> None:
        self.state = Path(tempfile.mkdtemp(prefix="headrace-kafka-private."))
        self.env = {"HEADRACE_KAFKA_STATE": str(self.state)}
        self.bootstrap = ""
        self.cmdline: list[str] = []
        self.restarted: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        return int((self.state / "pid").read_text().strip())

    def start(self) -> None:
        run_script(KAFKA_LOCAL, "fetch", timeout=900)
        out = run_script(
            KAFKA_LOCAL, "start", "--owner-pid", str(os.getpid()), env=self.env, timeout=300
        )
        self.bootstrap = env_line(out, "KAFKA_BOOTSTRAP_SERVERS")
        raw = Path(f"/proc/{self.pid}/cmdline").read_bytes()
        self.cmdline = [part.decode() for part in raw.split(b"\0") if part]

    def kill(self) -> None:
        """SIGKILL the broker: a crash, no controlled shutdown."""
        pid = self.pid
        os.kill(pid, signal.SIGKILL)
        if self.restarted is not None and self.restarted.pid == pid:
            self.restarted.wait(30)
        else:
            deadline = time.monotonic() + 30
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                with contextlib.suppress(OSError):
                    if Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] == "Z":
                        break
                time.sleep(0.05)

    def revive(self, timeout: float = 120.0) -> None:
        """Start the same broker again: same ports, same data directory."""
        data = Path((self.state / "data_dir").read_text().strip())
        with open(data / "restart.log", "ab") as log:
            self.restarted = subprocess.Popen(
                self.cmdline,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=set_parent_death_signal,
            )
        (self.state / "pid").write_text(f"{self.restarted.pid}\n")
        deadline = time.monotonic() + timeout
        while broker_answers(self.bootstrap, timeout=2) is not None:
            if self.restarted.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"restarted broker did not come back: see {data}")
            time.sleep(0.2)

    def stop(self) -> None:
        try:
            run_script(KAFKA_LOCAL, "stop", env=self.env, timeout=120)
        finally:
            if self.restarted is not None and self.restarted.poll() is None:
                self.restarted.kill()
                self.restarted.wait(30)
            shutil.rmtree(self.state, ignore_errors=True)


@pytest.fixture
def private_broker() -> Iterator[PrivateBroker]:
    broker = PrivateBroker()
    try:
        broker.start()
    except ScriptError as error:
        broker.stop()
        unavailable(f"private broker for the restart test: {error}")
    try:
        yield broker
    finally:
        broker.stop()


def test_broker_restart_mid_stream_loses_nothing(
    private_broker: PrivateBroker, tmp_path: Path
) -> None:
    total = 10_000
    bootstrap = private_broker.bootstrap
    input_topic = create_topic(bootstrap, unique_topic("restart-in"), partitions=3)
    output_topic = create_topic(bootstrap, unique_topic("restart-out"), partitions=3)
    group = f"restart-{uuid.uuid4().hex[:8]}"
    worker = Worker(bootstrap, input_topic, output_topic, group, tmp_path, commit_interval=0.2)
    feed = PacedProducer(bootstrap, input_topic, range(total), rate=1_000)
    reader: OutputReader | None = None
    try:
        worker.start().wait_assigned(60)
        feed.start()
        before = worker.wait_for(lambda h: h["source"]["messages"] >= 2_000, 60, "progress")
        private_broker.kill()
        down_at = time.monotonic()
        time.sleep(3.0)
        assert worker.alive(), worker.tail()
        private_broker.revive()
        downtime = time.monotonic() - down_at
        feed.finish(timeout=180)
        reader = OutputReader(bootstrap, output_topic)
        reader.wait_for(set(range(total)), timeout=120)
        final = worker.wait_for(lambda h: h["source"]["in_flight"] == 0, 60, "idle")
        assert worker.terminate() == 0, worker.tail()
        reader.poll(0.5)
    finally:
        feed.stop()
        worker.close()
        if reader is not None:
            reader.close()
    print(
        f"\nbroker restart: down {downtime:.1f}s after {before['source']['messages']} inputs; "
        f"{reader.records} outputs for {total} inputs, {reader.duplicates()} duplicates, "
        f"client errors reported {final['source']['client_errors']}"
    )
    assert set(reader.ids) == set(range(total))
    assert_committed_to_end(bootstrap, group, input_topic)
