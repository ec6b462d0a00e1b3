"""A package's module imports run in a worker thread: an import that sleeps does not stall
the event loop (a loop-side ticker keeps advancing while it runs)."""

from __future__ import annotations

import asyncio
import sys
import threading
import types
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from headrace.connectors.sinks import LogSink
from headrace.engine.packages.reconciler import Reconciler
from headrace.engine.packages.service import PackageService
from headrace.engine.runtime import Runtime
from tests.unit.engine.packages.helpers import write_package

GATE = "headrace_test_import_gate"

SLOW_NODES = f"""
import sys
import time

gate = sys.modules["{GATE}"]
start = gate.ticks
gate.started.set()
deadline = time.monotonic() + 5.0  # "sleeps" at import: until the loop ticked 5 times
while gate.ticks < start + 5 and time.monotonic() < deadline:
    time.sleep(0.01)
gate.during = gate.ticks - start


def passthrough(value):
    return value
"""


@pytest.fixture
async def service() -> AsyncIterator[PackageService]:
    runtime = Runtime(graphs=[])
    await runtime.start()
    gate = types.ModuleType(GATE)
    gate.ticks = 0  # type: ignore[attr-defined]
    gate.started = threading.Event()  # type: ignore[attr-defined]
    gate.during = None  # type: ignore[attr-defined]
    sys.modules[GATE] = gate
    try:
        yield PackageService(Reconciler(runtime, build_sink=lambda n, c: LogSink()))
    finally:
        await runtime.stop()
        del sys.modules[GATE]
        for name in [n for n in sys.modules if n.startswith("headrace_packages.")]:
            del sys.modules[name]


async def test_a_slow_import_does_not_stall_the_event_loop(
    service: PackageService, tmp_path: Path
) -> None:
    gate = sys.modules[GATE]
    package = write_package(
        tmp_path,
        "slow",
        "1.0",
        'modules = ["nodes"]\n##\n[accumulators.feed]\nkind = "passthrough"\n'
        'function = "nodes:passthrough"\n',
        **{"nodes.py": SLOW_NODES},
    )

    async def tick() -> None:
        while True:
            gate.ticks += 1
            await asyncio.sleep(0.01)

    ticker = asyncio.create_task(tick())
    try:
        service.add_directory(package)
        await asyncio.wait_for(service.reconciler.settle(), 30)
    finally:
        ticker.cancel()
    assert gate.started.is_set()
    assert service.get("slow")["status"] == "loaded", service.get("slow")
    print(f"event-loop ticks during the package's import: {gate.during}")
    assert gate.during is not None and gate.during >= 5, gate.during
    assert sorted(service.reconciler.runtime.accumulators) == ["feed"]
