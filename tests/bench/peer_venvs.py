"""One venv per benchmark peer, from the sections of tests/bench/requirements-peers.txt.

Idempotent: a venv whose stamp (base Python + its requirement lines) matches is reused as
it is; otherwise it is recreated from scratch. Never touches the project's own .venv.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
REQUIREMENTS = HERE / "requirements-peers.txt"
STAMP = ".bench-stamp.json"
KEY_PACKAGES = re.compile(
    r"^(quixstreams|bytewax|faust-streaming|confluent-kafka|aiokafka|orjson)=="
)


class PeerUnavailable(RuntimeError):
    """A peer's venv could not be made; the message says why."""


@dataclass(frozen=True)
class PeerEnv:
    python: Path
    versions: str  # the key packages as installed, "quixstreams==3.28.1 ..."


def venv_root() -> Path:
    return Path(os.environ.get("HEADRACE_BENCH_VENVS") or REPO / ".venv-bench")


def parse_requirements(text: str) -> dict[str, list[str]]:
    """``[peer]`` sections of requirement lines; comments and blank lines dropped."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        header = re.fullmatch(r"\[([A-Za-z0-9_-]+)\]", line)
        if header:
            current = sections.setdefault(header.group(1), [])
        elif current is None:
            raise ValueError(f"{REQUIREMENTS.name}:{number}: {line!r} is outside a [peer] section")
        else:
            current.append(line)
    return sections


def _stamp(requirements: list[str]) -> dict[str, object]:
    return {"python": sys.version.split()[0], "base": sys.base_prefix, "requirements": requirements}


def _tail(text: str, lines: int = 12) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _run(command: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise PeerUnavailable(f"{' '.join(command[:4])} timed out after {timeout:.0f}s") from exc


def ensure(peer: str, requirements: list[str], root: Path | None = None) -> PeerEnv:
    """The venv of ``peer`` with exactly ``requirements`` installed (created when needed)."""
    if not requirements:
        raise PeerUnavailable(f"no [{peer}] section in {REQUIREMENTS}")
    venv = (root or venv_root()) / peer
    python = venv / "bin" / "python"
    stamp_file = venv / STAMP
    wanted = _stamp(requirements)
    if python.exists() and stamp_file.exists():
        stamp = json.loads(stamp_file.read_text())
        if {k: stamp.get(k) for k in wanted} == wanted:
            return PeerEnv(python, str(stamp.get("versions", "")))
    shutil.rmtree(venv, ignore_errors=True)
    made = _run([sys.executable, "-m", "venv", str(venv)], timeout=300)
    if made.returncode != 0:
        raise PeerUnavailable(f"python -m venv {venv} failed:\n{_tail(made.stderr)}")
    pip = [str(python), "-m", "pip", "--disable-pip-version-check", "-q"]
    installed = _run([*pip, "install", *requirements], timeout=1200)
    if installed.returncode != 0:
        shutil.rmtree(venv, ignore_errors=True)
        raise PeerUnavailable(
            f"pip install {' '.join(requirements)} failed:\n{_tail(installed.stderr)}"
        )
    frozen = _run([*pip, "freeze"], timeout=120).stdout.splitlines()
    versions = " ".join(line for line in frozen if KEY_PACKAGES.match(line))
    stamp_file.write_text(json.dumps({**wanted, "versions": versions}, indent=1))
    return PeerEnv(python, versions)
