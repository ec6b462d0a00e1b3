"""Fleets: packages kept in the state store, so every worker sharing it runs them.

An upload or delete on one worker writes the ``headrace_packages`` table; every worker
polls it (``[worker.packages] poll_interval``) and loads, upgrades or unloads to match, then
reports what it runs in ``headrace_package_workers`` (shown by ``GET /v1/packages``).
A restarted worker loads the stored packages again.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog

from headrace.engine.packages.reconciler import PackageInUse
from headrace.engine.packages.service import PackageExists, PackageRejected, PackageService
from headrace.engine.store.packages_table import PackageTable

log = structlog.get_logger("headrace.packages")


class FleetSync:
    def __init__(
        self, service: PackageService, table: PackageTable, worker: str, interval: float
    ) -> None:
        self.service = service
        self.table = table
        self.worker = worker
        self.interval = interval
        self.tried: dict[str, str] = {}
        """Package -> digest already tried here (a failed version is not retried every poll)."""
        self.task: asyncio.Task[None] | None = None

    async def sync(self) -> None:
        """One pass: load what the store wants, unload what it dropped, report."""
        reconciler = self.service.reconciler
        wanted = await asyncio.to_thread(self.table.wanted)
        for name, stored in sorted(wanted.items()):
            if (
                reconciler.has_version(name, stored.version)
                or self.tried.get(name) == stored.sha256
            ):
                continue
            self.tried[name] = stored.sha256
            data = await asyncio.to_thread(self.table.archive, name, stored.sha256)
            if data is None:
                continue  # replaced between the two reads: the next pass takes the new one
            try:
                await self.service.upload(data, record=False)
                log.info("package from the state store", package=name, version=stored.version)
            except (PackageRejected, PackageExists) as error:
                log.error("stored package refused", package=name, reason=str(error))
        for name in sorted(set(reconciler.packages) - set(wanted)):
            if self.tried.pop(name, None) is None and name not in self.service.recorded:
                continue  # not from the store (directory mode)
            try:
                await self.service.delete(name, record=False)
            except PackageInUse as error:
                log.warning("package deleted in the store stays loaded here", reason=str(error))
        await reconciler.settle()
        await asyncio.to_thread(self.table.report, self.worker, self.service.list())

    async def _run(self) -> None:
        while True:
            try:
                await self.sync()
            except Exception:
                log.exception("package sync with the state store failed")
            await asyncio.sleep(self.interval)

    async def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name="packages:fleet")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def fleet(self) -> dict[str, Any]:
        return await asyncio.to_thread(self.table.workers)
