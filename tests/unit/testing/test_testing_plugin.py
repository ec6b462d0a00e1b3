"""The ``headrace`` pytest plugin, loaded through its ``pytest11`` entry point in a separate
pytest run: registry isolation, and a missing broker skipped locally but failed under CI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SUITE = """
from headrace import passthrough_accumulator


def test_declares(headrace_registry):
    passthrough_accumulator(name="leaky")(lambda event: event)
    assert headrace_registry.find_accumulator("leaky") is not None


def test_sees_nothing_of_the_previous_test(headrace_registry):
    assert headrace_registry.find_accumulator("leaky") is None


def test_needs_a_broker(kafka_bootstrap):
    raise AssertionError("must not run without a broker")
"""


def _run_suite(tmp_path: Path, ci: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_suite.py").write_text(SUITE)
    env = {k: v for k, v in os.environ.items() if k not in {"PYTEST_ADDOPTS", "PYTEST_PLUGINS"}}
    env |= {"CI": ci, "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}  # nothing listens there
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-rA", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.slow
def test_plugin_isolates_registries_and_skips_without_a_broker(tmp_path: Path) -> None:
    out = _run_suite(tmp_path, ci="")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "2 passed, 1 skipped" in out.stdout
    assert "KAFKA_BOOTSTRAP_SERVERS is set but no metadata from 127.0.0.1:1" in out.stdout


@pytest.mark.slow
def test_plugin_fails_without_a_broker_under_ci(tmp_path: Path) -> None:
    out = _run_suite(tmp_path, ci="true")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "2 passed, 1 error" in out.stdout
    assert "KAFKA_BOOTSTRAP_SERVERS is set but no metadata from 127.0.0.1:1" in out.stdout
    assert "CI=true: missing infrastructure is a failure" in out.stdout
