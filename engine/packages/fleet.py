"""Fleets: packages kept in the state store, so every worker sharing it runs them.

An upload or delete on one worker writes the ``headrace_packages`` table; every worker
reconciles from it: at once when PostgreSQL NOTIFYs it (``notify.PackageListener``), and
every ``[worker.packages] poll_interval`` in any case (the fallback, and the only way on
SQLite). It loads, upgrades or unloads to match, then reports what it runs and beats in
``headrace_package_workers`` / ``headrace_package_heartbeats`` (the fleet view of
``GET /v1/packages`` and ``GET /v1/health``). A restarted worker loads the stored packages
again; a worker that stops leaves the view.
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
        self,
        service: PackageService,
        table: PackageTable,
        worker: str,
        interval: float,
        *,
        listen: bool | None = None,
    ) -> None:
        self.service = service
        self.table = table
        self.worker = worker
        self.interval = interval
        self.tried: dict[str, str] = {}
        """Package -> digest already tried here (a failed version is not retried every poll)."""
        self.wakeup = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.listener: Any = None
        self.listen_task: asyncio.Task[None] | None = None
        if listen is None:
            listen = table.engine.dialect.name == "postgresql"
        if listen:
            from headrace.engine.packages.notify import PackageListener

            self.listener = PackageListener(
                table.engine, self.wake, application_name=f"headrace-packages {worker}"
            )

    def wake(self) -> None:
        """Reconcile now (a NOTIFY arrived, or the listener reconnected)."""
        self.wakeup.set()

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
        await self.report()

    async def report(self) -> None:
        await asyncio.to_thread(
            self.table.report,
            self.worker,
            self.service.list(),
            waiting_for_uploads=self.service.reconciler.waiting_for_uploads(),
            poll_interval=self.interval,
        )

    async def _run(self) -> None:
        while True:
            self.wakeup.clear()  # a NOTIFY during the pass brings another pass
            try:
                await self.sync()
            except Exception:
                log.exception("package sync with the state store failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wakeup.wait(), self.interval)

    async def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name="packages:fleet")
        if self.listener is not None:
            self.listen_task = asyncio.create_task(self.listener.run(), name="packages:listen")

    async def stop(self) -> None:
        for task in (self.listen_task, self.task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        try:  # a worker that stops leaves the fleet view
            await asyncio.to_thread(self.table.forget, self.worker)
        except Exception as error:
            log.warning("could not remove this worker from the fleet view", error=str(error))

    async def fleet(self) -> dict[str, Any]:
        return await asyncio.to_thread(self.table.workers)
