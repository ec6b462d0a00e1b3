"""Directory mode: ``headrace run --packages DIR`` keeps the worker's packages in step with
DIR, whose entries are package directories (with ``package.toml``) and ``*.tar.gz``
archives. Polled every ``poll_interval``: a new or changed entry is loaded (a new version
upgrades), a removed one is unloaded (retried while the guard refuses), unless another
entry now holds the same package (a ``NAME-2.0.tar.gz`` that replaced ``NAME-1.0.tar.gz``).
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import structlog

from headrace.engine.packages.reconciler import PackageInUse
from headrace.engine.packages.service import PackageExists, PackageRejected, PackageService

log = structlog.get_logger("headrace.packages")


def _fingerprint(path: Path) -> tuple[tuple[str, int, int], ...]:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return tuple(
        (str(p.relative_to(path.parent)), p.stat().st_size, p.stat().st_mtime_ns)
        for p in files
        if "__pycache__" not in p.parts
    )


class DirectoryWatcher:
    def __init__(self, service: PackageService, directory: Path, interval: float) -> None:
        self.service = service
        self.directory = directory
        self.interval = interval
        self.seen: dict[Path, tuple[tuple[str, int, int], ...]] = {}
        self.names: dict[Path, str] = {}
        self.refused: set[Path] = set()
        """Removed entries the guard keeps loaded (logged once each)."""
        self.task: asyncio.Task[None] | None = None

    def entries(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        return sorted(
            p
            for p in self.directory.iterdir()
            if (p.is_dir() and (p / "package.toml").exists())
            or (p.is_file() and p.name.endswith(".tar.gz"))
        )

    async def scan(self) -> None:
        """One pass: load new or changed entries, unload removed ones."""
        current = self.entries()
        for path in current:
            fingerprint = await asyncio.to_thread(_fingerprint, path)
            if self.seen.get(path) == fingerprint:
                continue
            self.seen[path] = fingerprint
            try:
                if path.is_file():
                    data = await asyncio.to_thread(path.read_bytes)
                    created = await self.service.upload(data, record=False)
                else:
                    created = self.service.add_directory(path)
                self.names[path] = created["name"]
                log.info("package found in directory", path=str(path), **created)
            except PackageExists:
                log.info("package already loaded; change its version to upgrade", path=str(path))
            except PackageRejected as error:
                log.error("package in directory refused", path=str(path), reasons=error.reasons)
        for path in [p for p in self.seen if p not in current]:
            name = self.names.get(path)
            replaced = any(self.names.get(p) == name for p in current)  # p-1.tar.gz -> p-2
            if name is not None and not replaced and name in self.service.reconciler.packages:
                try:
                    await self.service.delete(name, record=False)
                except PackageInUse as error:
                    if path not in self.refused:  # once, not on every pass
                        log.warning(
                            "package removed from directory stays loaded",
                            path=str(path),
                            package=name,
                            reason=str(error),
                            bound_graphs=error.bound_graphs,
                        )
                        self.refused.add(path)
                    continue  # retried on the next pass
            self.seen.pop(path, None)
            self.names.pop(path, None)
            self.refused.discard(path)

    async def _run(self) -> None:
        while True:
            try:
                await self.scan()
            except Exception:
                log.exception("scanning the packages directory failed", path=str(self.directory))
            await asyncio.sleep(self.interval)

    async def start(self) -> None:
        await self.scan()
        self.task = asyncio.create_task(self._run(), name="packages:directory")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
