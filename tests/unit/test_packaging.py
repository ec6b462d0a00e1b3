"""The distribution installs exactly one top-level package, ``headrace``, with every subpackage."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MAPPED = {"headrace": "headrace"} | {
    f"headrace.{top}": top for top in ("accumulators", "connectors", "engine", "reactors")
}


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _packages_on_disk() -> set[str]:
    found = set()
    for name, folder in MAPPED.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((name, *rel)))
    return found


def test_every_package_on_disk_is_listed_for_setuptools() -> None:
    setuptools = _pyproject()["tool"]["setuptools"]
    assert set(setuptools["packages"]) == _packages_on_disk()
    assert setuptools["package-dir"] == MAPPED


@pytest.mark.slow
def test_wheel_holds_only_the_headrace_package(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
         "-w", str(tmp_path), str(ROOT)],
        check=True,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("headrace-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/", 1)[0] for name in names}
    assert {top for top in tops if not top.endswith(".dist-info")} == {"headrace"}
    assert "headrace/py.typed" in names
    assert "headrace/engine/graph/builder.py" in names
    assert "headrace/connectors/kafka/source.py" in names
    assert "headrace/testing/__init__.py" in names
