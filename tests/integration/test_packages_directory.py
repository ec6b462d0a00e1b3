"""Directory mode through the CLI: ``headrace run worker.toml --packages DIR`` in a
subprocess with JSON logs follows DIR: a dropped-in package loads, a new version upgrades,
a removed one unloads (the guard keeps a still-bound publisher, logged, no crash), a
broken one is ``failed`` while the worker runs on, and SIGTERM exits 0."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from headrace.engine.packages.archive import pack
from headrace.testing.worker import HeadraceWorker
from tests.unit.engine.packages.helpers import EXAMPLES

TOKEN = "directory-test-token"

WORKER = """\
[worker]
group_id = "packages-directory"

[worker.http]
port = "${HEADRACE_HTTP_PORT:-0}"
token = "${HEADRACE_TOKEN}"

[worker.packages]
poll_interval = "200ms"
workdir = "${PACKAGES_WORKDIR}"
"""


def packages(worker: HeadraceWorker) -> dict[str, dict[str, Any]]:
    """This worker's packages by name, from ``GET /v1/health``."""
    return {p["name"]: p for p in worker.health("/v1/health")["packages"]["packages"]}


def wait_until(
    worker: HeadraceWorker, done: Callable[[dict[str, dict[str, Any]]], bool], timeout: float = 60
) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        seen = packages(worker)
        if done(seen):
            return seen
        assert time.monotonic() < deadline, (seen, worker.output())
        time.sleep(0.1)


def drop_in(source: Path, directory: Path, name: str) -> Path:
    """Copy ``source`` next to ``directory`` and rename it in: the watcher never sees half a
    package."""
    staging = directory.parent / f".staging-{name}"
    if source.is_dir():
        shutil.copytree(source, staging)
    else:
        shutil.copy(source, staging)
    target = directory / name
    staging.rename(target)
    return target


def signals(worker: HeadraceWorker) -> list[float]:
    return [
        r["outputs"]["publish"]["signal"]
        for r in worker.events("graph result")
        if r.get("graph") == "price_consumer"
    ]


def fire(worker: HeadraceWorker, raw: float, normalized: float, expected: float) -> None:
    """Push one value into each feed; wait for the subscriber's graph to publish
    ``expected`` (when_any: the first push fires too, with the previous normalized price)."""
    before = len(signals(worker))
    assert worker.push("raw_prices", {"price": raw}).status_code == 202
    assert worker.push("normalized_prices", {"price": normalized}).status_code == 202
    deadline = time.monotonic() + 30
    while expected not in signals(worker)[before:]:
        assert time.monotonic() < deadline, (signals(worker), worker.output())
        time.sleep(0.1)


def test_directory_mode_through_the_cli(headrace_worker: Any, tmp_path: Path) -> None:
    watched = tmp_path / "packages"
    watched.mkdir()
    config = tmp_path / "worker.toml"
    config.write_text(WORKER)
    worker: HeadraceWorker = headrace_worker(
        config,
        env={"PACKAGES_WORKDIR": str(tmp_path / "extracted"), "HEADRACE_TOKEN": TOKEN},
        cwd=tmp_path,
        token=TOKEN,
        kafka=False,
        args=["--packages", str(watched)],
    )
    worker.ready(timeout=120)
    health = worker.health("/v1/health")["packages"]
    assert (health["waiting_for_uploads"], health["packages"]) == (True, [])

    # a package directory dropped in loads; an archive binding to it loads too
    drop_in(EXAMPLES / "pricing-publisher", watched, "publisher")
    wait_until(worker, lambda p: p.get("pricing-publisher", {}).get("status") == "loaded")
    v1 = pack(EXAMPLES / "pricing-subscriber", "pricing-subscriber", "0.1.0", tmp_path)
    drop_in(v1, watched, v1.name)
    wait_until(worker, lambda p: p.get("pricing-subscriber", {}).get("status") == "loaded")
    assert worker.health("/v1/health")["packages"]["waiting_for_uploads"] is False
    fire(worker, 100.0, 101.0, 1.01)

    # a new version upgrades: its archive replaces the old one (GitOps style)
    v2_source = tmp_path / "subscriber-v2"
    shutil.copytree(EXAMPLES / "pricing-subscriber", v2_source)
    manifest = v2_source / "package.toml"
    manifest.write_text(manifest.read_text().replace('version = "0.1.0"', 'version = "0.2.0"'))
    nodes = v2_source / "nodes.py"
    nodes.write_text(nodes.read_text() + "\n\nVERSION = 2\n")
    v2 = pack(v2_source, "pricing-subscriber", "0.2.0", tmp_path)
    drop_in(v2, watched, v2.name)
    (watched / v1.name).unlink()
    upgraded = wait_until(
        worker,
        lambda p: p.get("pricing-subscriber", {}).get("loaded_version") == "0.2.0",
    )
    assert upgraded["pricing-subscriber"]["status"] == "loaded"
    time.sleep(1)  # a few more passes: the removed 0.1.0 archive must not unload 0.2.0
    assert packages(worker)["pricing-subscriber"]["loaded_version"] == "0.2.0"
    fire(worker, 200.0, 230.0, 1.15)

    # removing the publisher while the subscriber binds to it: refused, logged, kept
    shutil.rmtree(watched / "publisher")
    refused = worker.wait_for_log("package removed from directory stays loaded", timeout=30)
    assert "price_consumer" in refused["reason"], refused
    assert packages(worker)["pricing-publisher"]["status"] == "loaded"
    assert worker.get("/v1/health/ready").status_code == 200

    # a broken package fails alone
    broken = tmp_path / "broken-src"
    broken.mkdir()
    (broken / "package.toml").write_text(
        'modules = ["nodes"]\n\n[package]\nname = "broken"\nversion = "1.0"\n'
        'description = "fails at import"\n'
    )
    (broken / "nodes.py").write_text('raise RuntimeError("broken on purpose")\n')
    drop_in(broken, watched, "broken")
    failed = wait_until(worker, lambda p: p.get("broken", {}).get("status") == "failed")
    assert "RuntimeError: broken on purpose" in failed["broken"]["error"], failed
    fire(worker, 10.0, 13.0, 1.3)  # the others run on

    # the subscriber goes, then the publisher is retried and goes too
    (watched / v2.name).unlink()
    remaining = wait_until(worker, lambda p: set(p) == {"broken"})
    assert remaining["broken"]["status"] == "failed"
    assert worker.push("raw_prices", {"price": 1.0}).status_code == 404
    assert worker.returncode is None
    assert worker.stop() == 0
