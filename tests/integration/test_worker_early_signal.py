"""A SIGTERM that arrives while `headrace run` is still starting exits 0, never -15.

Before the fix the handlers were installed only once the worker's event loop ran, seconds
after the process started on a loaded machine: an early SIGTERM killed it with no log line.
What is left is the interpreter's own start (about 60 ms here, more on a loaded machine),
before any Python code of ours runs: the tests wait until the process catches SIGTERM (its
``SigCgt`` mask in /proc) and then signal it at points of the start-up after that.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.test_worker_cli import NODES, headrace_command, passthrough_config

SIGTERM_BIT = 1 << (signal.SIGTERM - 1)


def catches_sigterm(pid: int) -> bool:
    """Whether the process has installed a SIGTERM handler (bit 15 of /proc's SigCgt)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & SIGTERM_BIT)
    return False


def wait_until_it_catches_sigterm(proc: subprocess.Popen[str], timeout: float = 30.0) -> None:
    """Waits (with a deadline) for the worker's first Python code to install its handlers."""
    deadline = time.monotonic() + timeout
    while not catches_sigterm(proc.pid):
        assert proc.poll() is None, f"the worker exited {proc.returncode} before starting"
        assert time.monotonic() < deadline, "the worker never installed a SIGTERM handler"
        time.sleep(0.002)


def start_worker(directory: Path) -> subprocess.Popen[str]:
    """`headrace run` on a passthrough config, returned once it catches SIGTERM."""
    (directory / "hr_worker_nodes.py").write_text(NODES)
    config = passthrough_config(directory, "slow")
    proc = subprocess.Popen(
        [*headrace_command(), "run", str(config)],
        cwd=directory,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_until_it_catches_sigterm(proc)
    return proc


@pytest.mark.parametrize("delay", [0.0, 0.1, 0.4, 1.0])
def test_sigterm_during_start_up_exits_0(tmp_path: Path, delay: float) -> None:
    proc = start_worker(tmp_path)
    time.sleep(delay)  # still loading its imports and config: "worker started" comes later
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{out}\nstderr:\n{err}"
    assert "worker stopped" in out, out


def test_a_second_early_signal_exits_at_once_non_zero(tmp_path: Path) -> None:
    proc = start_worker(tmp_path)
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode in (0, 128 + signal.SIGTERM), proc.returncode
