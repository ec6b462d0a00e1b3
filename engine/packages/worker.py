"""Packages in the long-running worker: the reconciler and upload service it serves, the
directory it may watch, and closing package sinks at shutdown."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from headrace.engine.packages.archive import ArchiveLimits
from headrace.engine.packages.reconciler import Reconciler, _close
from headrace.engine.packages.service import PackageService

if TYPE_CHECKING:
    from headrace.engine.worker import Worker

log = structlog.get_logger("headrace.packages")


class WorkerPackages:
    """What a worker with ``[worker.packages] enabled`` adds: reconciler, service, watcher."""

    def __init__(self, worker: Worker, directory: Path | None = None) -> None:
        assert worker.runtime is not None
        settings = worker.config.worker.packages
        self.worker = worker
        self.reconciler = Reconciler(
            worker.runtime,
            build_sink=worker.build_sink,
            worker=worker.config.worker,
            subscriptions=self.subscriptions,
        )
        workdir = Path(settings.workdir) if settings.workdir else None
        if workdir is not None:
            workdir.mkdir(parents=True, exist_ok=True)
        self.service = PackageService(
            self.reconciler,
            workdir,
            ArchiveLimits(settings.max_archive_bytes, settings.max_extracted_bytes),
        )
        self.directory = directory
        self.poll_interval = settings.poll_interval
        self.watcher: Any = None
        self.fleet: Any = None
        if worker.store is not None and directory is None:
            from headrace.engine.store.packages_table import PackageTable

            self.service.table = PackageTable(worker.store)
            self.service.worker_id = worker.store.worker_id

    async def start(self) -> None:
        if self.service.table is not None:
            from headrace.engine.packages.fleet import FleetSync

            assert self.worker.store is not None and self.worker.runtime is not None
            self.fleet = FleetSync(
                self.service, self.service.table, self.worker.store.worker_id, self.poll_interval
            )
            await self.fleet.sync()  # a restarted worker loads the stored packages first
            await self.fleet.start()
            self.worker.runtime.supervise(self.fleet.task, "packages:fleet")
            if self.fleet.listen_task is not None:
                self.worker.runtime.supervise(self.fleet.listen_task, "packages:listen")
        if self.directory is not None:
            from headrace.engine.packages.directory import DirectoryWatcher

            self.watcher = DirectoryWatcher(self.service, self.directory, self.poll_interval)
            await self.watcher.start()
            assert self.worker.runtime is not None
            self.worker.runtime.supervise(self.watcher.task, "packages:directory")
        if not self.worker.config.worker.http.token and self.directory is None:
            log.warning(
                "packages are enabled but the upload endpoints are off: they need an API "
                "token (HEADRACE_TOKEN), even on loopback"
            )

    async def subscriptions(self, added: list[str], removed: list[str]) -> None:
        """Kafka-backed accumulators of packages: feed them from (or take them out of) the
        Kafka source of their consumer group, creating that source when it is the first."""
        from headrace.accumulators import AccumulatorKind
        from headrace.engine.errors import RuntimeConfigError

        runtime = self.worker.runtime
        assert runtime is not None
        settings = self.worker.config.worker
        kinds = (AccumulatorKind.STREAM, AccumulatorKind.BATCH)
        sources = {getattr(s, "group_id", None): s for s in runtime.sources}
        for source in list(runtime.sources):
            mine = [n for n in removed if n in getattr(source, "accumulators", ())]
            if mine:
                await source.change_accumulators(runtime, remove=mine)  # type: ignore[attr-defined]
        groups: dict[str, list[str]] = {}
        for name in added:
            spec = runtime.accumulators[name].spec
            if spec.topic and spec.kind in kinds and spec.source_type == "kafka":
                if not settings.bootstrap_servers:
                    raise RuntimeConfigError(
                        f"accumulator {name!r} reads topic {spec.topic!r}, but this worker has "
                        "no worker.bootstrap_servers"
                    )
                groups.setdefault(spec.group or settings.group_id, []).append(name)
        for group, names in groups.items():
            source = sources.get(group)
            if source is None:
                source = self.worker.build_source(group, [])
                runtime.sources.append(source)
                self.worker.sources.append(source)
            await source.change_accumulators(runtime, add=names)  # type: ignore[attr-defined]

    def health(self) -> dict[str, Any]:
        return self.reconciler.health()

    async def close(self) -> None:
        """Stop reconciling; close the sinks of loaded packages (after the runtime drained)."""
        if self.watcher is not None:
            await self.watcher.stop()
        if self.fleet is not None:
            await self.fleet.stop()
        task = self.reconciler._task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for state in self.reconciler.packages.values():
            if state.loaded is not None:
                await _close(state.loaded.sinks)
