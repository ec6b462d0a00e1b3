"""Directory mode: the watched directory's package directories and archives are loaded,
upgraded and unloaded as it changes; the guard keeps a still-bound publisher loaded."""

from __future__ import annotations

import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from headrace.connectors.sinks import LogSink
from headrace.engine.packages.archive import pack
from headrace.engine.packages.directory import DirectoryWatcher
from headrace.engine.packages.reconciler import Reconciler
from headrace.engine.packages.service import PackageService
from headrace.engine.runtime import Runtime
from tests.unit.engine.packages.helpers import EXAMPLES


@pytest.fixture
async def watcher(tmp_path: Path) -> AsyncIterator[DirectoryWatcher]:
    runtime = Runtime(graphs=[])
    await runtime.start()
    service = PackageService(Reconciler(runtime, build_sink=lambda n, c: LogSink()))
    (tmp_path / "watched").mkdir()
    try:
        yield DirectoryWatcher(service, tmp_path / "watched", interval=0.05)
    finally:
        await runtime.stop()
        for name in [n for n in sys.modules if n.startswith("headrace_packages.")]:
            del sys.modules[name]


async def scan(watcher: DirectoryWatcher) -> dict[str, str]:
    await watcher.scan()
    await watcher.service.reconciler.settle()
    return {p["name"]: p["status"] for p in watcher.service.list()}


async def test_directory_mode_follows_the_directory(
    watcher: DirectoryWatcher, tmp_path: Path
) -> None:
    watched = watcher.directory
    shutil.copytree(EXAMPLES / "pricing-publisher", watched / "publisher")
    assert await scan(watcher) == {"pricing-publisher": "loaded"}
    pack(EXAMPLES / "pricing-subscriber", "pricing-subscriber", "0.1.0", watched)
    assert await scan(watcher) == {"pricing-publisher": "loaded", "pricing-subscriber": "loaded"}
    assert await scan(watcher) == {"pricing-publisher": "loaded", "pricing-subscriber": "loaded"}
    runtime = watcher.service.reconciler.runtime
    shutil.rmtree(watched / "publisher")  # removed first: the guard keeps it while bound
    assert await scan(watcher) == {"pricing-publisher": "loaded", "pricing-subscriber": "loaded"}
    (watched / "pricing-subscriber-0.1.0.tar.gz").unlink()
    await scan(watcher)  # subscriber unloads; the publisher is retried on the next pass
    assert await scan(watcher) == {}
    assert (runtime.reactors, runtime.accumulators) == ({}, {})


async def test_a_new_version_in_the_directory_upgrades(watcher: DirectoryWatcher) -> None:
    watched = watcher.directory
    shutil.copytree(EXAMPLES / "pricing-publisher", watched / "publisher")
    await scan(watcher)
    manifest = watched / "publisher" / "package.toml"
    manifest.write_text(manifest.read_text().replace('version = "0.1.0"', 'version = "0.2.0"'))
    assert await scan(watcher) == {"pricing-publisher": "loaded"}
    assert watcher.service.reconciler.versions() == {"pricing-publisher": "0.2.0"}


async def test_an_archive_replaced_by_a_newer_one_upgrades_and_stays(
    watcher: DirectoryWatcher, tmp_path: Path
) -> None:
    """GitOps: NAME-0.2.0.tar.gz comes in, NAME-0.1.0.tar.gz goes: the package runs 0.2.0
    (removing the old archive must not unload the package its successor upgraded)."""
    watched = watcher.directory
    old = pack(EXAMPLES / "pricing-publisher", "pricing-publisher", "0.1.0", watched)
    assert await scan(watcher) == {"pricing-publisher": "loaded"}
    source = tmp_path / "v2"
    shutil.copytree(EXAMPLES / "pricing-publisher", source)
    manifest = source / "package.toml"
    manifest.write_text(manifest.read_text().replace('version = "0.1.0"', 'version = "0.2.0"'))
    pack(source, "pricing-publisher", "0.2.0", watched)
    old.unlink()
    assert await scan(watcher) == {"pricing-publisher": "loaded"}
    assert await scan(watcher) == {"pricing-publisher": "loaded"}
    assert watcher.service.reconciler.versions() == {"pricing-publisher": "0.2.0"}
    assert sorted(watcher.service.reconciler.runtime.accumulators) == [
        "normalized_prices",
        "raw_prices",
    ]
