"""The installed package works for a user, not just inside this checkout.

Builds the wheel, creates a fresh venv outside the repository, installs the wheel (with
its ``testing`` extra) and examples/user_project into it, copies the user project out of
the checkout and runs its test suite there against the session's real broker, under
``CI=true`` (so nothing may skip).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import venv
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures import REPO_ROOT

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.timeout(600)]

USER_PROJECT = REPO_ROOT / "examples" / "user_project"


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float) -> str:
    proc = subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _clean_env() -> dict[str, str]:
    """This process's environment without anything pointing into the checkout or its venv."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"PYTHONPATH", "VIRTUAL_ENV", "PYTEST_ADDOPTS", "PYTEST_PLUGINS"}
    }
    repo_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != repo_bin)
    return env


@dataclass(frozen=True)
class Installed:
    """The fresh venv (outside the repository) holding the wheel and the user project."""

    python: str
    project: Path
    env: dict[str, str]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    outside = tmp_path_factory.mktemp("user-project-run")
    assert REPO_ROOT not in outside.parents
    env = _clean_env()

    # -- the wheel: exactly one top-level package, with the local broker as package data
    wheels = outside / "wheels"
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels)]
    _run([*build, str(REPO_ROOT)], outside, env, 300)
    (wheel,) = wheels.glob("headrace-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/", 1)[0] for name in names}
    assert tops == {"headrace", "headrace-0.1.0.dist-info"}, sorted(tops)
    for shipped in ("kafka-local.sh", "pom.xml", "log4j2.xml", "server.properties.template"):
        assert f"headrace/testing/local-kafka/{shipped}" in names
    entry_points = zipfile.ZipFile(wheel).read("headrace-0.1.0.dist-info/entry_points.txt")
    assert b"[pytest11]\nheadrace = headrace.testing.plugin" in entry_points

    # -- a fresh venv outside the repository: the wheel, the user project, pytest
    env_dir = outside / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    python = str(env_dir / "bin" / "python")
    project = outside / "price_alerts_project"
    shutil.copytree(
        USER_PROJECT,
        project,
        ignore=shutil.ignore_patterns("__pycache__", "*.db", "build", "*.egg-info"),
    )
    _run(
        [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-compile",
         f"{wheel}[testing]", f"{project}[test]"],
        outside,
        env,
        420,
    )  # fmt: skip
    where = _run(
        [python, "-c", "import headrace, headrace.testing; print(headrace.__file__)"],
        outside,
        env,
        60,
    )
    assert where.strip().startswith(str(env_dir)), where
    return Installed(python, project, env)


def test_user_project_passes_against_the_installed_wheel(
    kafka_bootstrap: str, installed: Installed
) -> None:
    """The user's suite, from outside the checkout, against the session broker."""
    env = installed.env | {"CI": "true", "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap}
    proc = subprocess.run(
        [installed.python, "-m", "pytest", "-p", "no:cacheprovider", "-rA", "tests"],
        cwd=installed.project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    report = proc.stdout + proc.stderr
    print(report[-3000:])  # the summary shows in this test's output (-rP / on failure)
    assert proc.returncode == 0, report
    assert re.search(r"plugins: .*headrace-0\.1\.0", report), report
    assert re.search(r"\b3 passed\b", report) and "skipped" not in report, report
    assert str(REPO_ROOT) not in report.split("rootdir:", 1)[1].splitlines()[0]


def test_the_installed_wheel_starts_its_packaged_local_broker(installed: Installed) -> None:
    """No KAFKA_BOOTSTRAP_SERVERS, no Docker: the plugin's fallback, the local broker whose
    script, pom.xml and config come from the installed package, answers and stops."""
    code = (
        "from headrace.testing.kafka import LOCAL_KAFKA_SCRIPT, broker_answers, "
        "start_local_broker\n"
        "broker = start_local_broker()\n"
        "print('script=' + str(LOCAL_KAFKA_SCRIPT))\n"
        "print('answers=' + str(broker_answers(broker.bootstrap)))\n"
        "broker.stop()\n"
        "print('gone=' + str(broker_answers(broker.bootstrap, timeout=3) is not None))\n"
    )
    env = {k: v for k, v in installed.env.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    out = _run([installed.python, "-c", code], installed.project, env, 420)
    lines = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    assert lines["script"].startswith(str(Path(installed.python).parents[1])), out
    assert lines["answers"] == "None", out
    assert lines["gone"] == "True", out
