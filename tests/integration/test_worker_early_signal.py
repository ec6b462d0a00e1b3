"""A SIGTERM that arrives while `headrace run` is still starting exits 0, never -15.

Before the fix the handlers were installed only once the worker's event loop ran, seconds
after the process started on a loaded machine: an early SIGTERM killed it with no log line.
What is left is the interpreter's own start (about 60 ms here), before any Python code of
ours runs.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.test_worker_cli import NODES, headrace_command, passthrough_config


@pytest.mark.parametrize("delay", [0.1, 0.4, 1.0])
def test_sigterm_during_start_up_exits_0(tmp_path: Path, delay: float) -> None:
    (tmp_path / "hr_worker_nodes.py").write_text(NODES)
    config = passthrough_config(tmp_path, "slow")
    proc = subprocess.Popen(
        [*headrace_command(), "run", str(config)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.05 + delay)  # the interpreter itself needs a few ms before main() runs
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{out}\nstderr:\n{err}"
    assert "worker stopped" in out, out


def test_a_second_early_signal_exits_at_once_non_zero(tmp_path: Path) -> None:
    (tmp_path / "hr_worker_nodes.py").write_text(NODES)
    config = passthrough_config(tmp_path, "slow")
    proc = subprocess.Popen(
        [*headrace_command(), "run", str(config)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode in (0, 128 + signal.SIGTERM), proc.returncode
