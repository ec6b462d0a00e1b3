"""Missing test infrastructure: skip on a developer machine, fail under ``CI=true``; and
running the helper scripts that start a broker."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import NoReturn

import pytest


def in_ci(environ: Mapping[str, str] | None = None) -> bool:
    """``CI`` is ``1``, ``true`` or ``yes`` (any case)."""
    value = (os.environ if environ is None else environ).get("CI", "")
    return value.strip().lower() in {"1", "true", "yes"}


def unavailable(reason: str) -> NoReturn:
    """Infrastructure is missing: fail under CI (never skip silently there), else skip."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: missing infrastructure is a failure)", pytrace=False)
    pytest.skip(reason)


class ScriptError(RuntimeError):
    """A helper script failed; the message holds its exit code and the end of its stderr."""


def run_script(
    script: Path, *args: str, env: Mapping[str, str] | None = None, timeout: float = 600
) -> str:
    """Run a bash helper script; return its stdout, raise ``ScriptError`` on failure."""
    try:
        proc = subprocess.run(
            ["bash", str(script), *args],
            env={**os.environ, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ScriptError(f"{script.name} {' '.join(args)} timed out after {timeout}s") from exc
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-40:])
        raise ScriptError(f"{script.name} {' '.join(args)} exited {proc.returncode}:\n{tail}")
    return proc.stdout


def env_line(stdout: str, name: str) -> str:
    """The value of a ``NAME=value`` line printed by a helper script."""
    for line in stdout.splitlines():
        if line.startswith(f"{name}="):
            return line.split("=", 1)[1].strip()
    raise ScriptError(f"no {name}= line in script output: {stdout!r}")
