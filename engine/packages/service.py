"""Accepting packages: an uploaded archive (or a directory) is checked, extracted and
handed to the reconciler. Every refusal lists its reasons (``PackageRejected``)."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import structlog

from headrace.engine.config.files import Issues
from headrace.engine.packages.archive import ArchiveError, ArchiveLimits, extract
from headrace.engine.packages.manifest import Manifest, check_requirements, read_manifest
from headrace.engine.packages.reconciler import Reconciler

log = structlog.get_logger("headrace.packages")


class PackageRejected(ValueError):
    """The archive or its manifest is refused (HTTP 400); ``reasons`` says why."""

    def __init__(self, reasons: list[str]) -> None:
        super().__init__("; ".join(reasons))
        self.reasons = reasons


class PackageExists(ValueError):
    """This version of the package is already loaded or loading (HTTP 409)."""


def read_package(directory: Path, label: str | None = None) -> Manifest:
    """The checked manifest of the package in ``directory``; ``PackageRejected`` otherwise.

    ``label`` names files in reasons (``NAME-VERSION/package.toml`` for archives)."""
    issues = Issues()
    prefix = f"{label}/" if label else f"{directory}/"
    manifest = read_manifest(directory, issues, file=f"{prefix}package.toml")
    check_requirements(directory, issues, file=f"{prefix}requirements.txt")
    if issues or manifest is None:
        raise PackageRejected([str(i) for i in issues.items])
    return manifest


class PackageService:
    """Upload, list, show and delete packages of one worker."""

    def __init__(
        self,
        reconciler: Reconciler,
        workdir: Path | None = None,
        limits: ArchiveLimits | None = None,
    ) -> None:
        self.reconciler = reconciler
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="headrace-packages-"))
        self.limits = limits or ArchiveLimits()
        self.table: Any = None
        """A ``PackageTable`` (fleets): uploads and deletes are recorded there."""
        self.recorded: set[str] = set()
        self.worker_id: str | None = None
        """This worker in the fleet view (the state store's worker id)."""

    def prepare(self, data: bytes) -> tuple[Manifest, str]:
        """Check and extract an archive, read its manifest (blocking: run in a thread)."""
        target = self.workdir / uuid.uuid4().hex
        try:
            directory = extract(data, target, self.limits)
        except ArchiveError as error:
            shutil.rmtree(target, ignore_errors=True)
            raise PackageRejected(error.reasons) from None
        try:
            manifest = read_package(directory, directory.name)
            if directory.name != manifest.label:
                raise PackageRejected(
                    [
                        f"{directory.name}/: the top folder must be {manifest.label}/ "
                        "(NAME-VERSION of its package.toml)"
                    ]
                )
        except PackageRejected:
            shutil.rmtree(target, ignore_errors=True)
            raise
        return manifest, hashlib.sha256(data).hexdigest()

    async def upload(self, data: bytes, *, record: bool = True) -> dict[str, Any]:
        """Check and queue an archive: ``{name, version, status: "pending"}``; with a
        package table (and ``record``), store it so every worker of the group loads it."""
        manifest, digest = await asyncio.to_thread(self.prepare, data)
        if self.reconciler.has_version(manifest.name, manifest.version):
            shutil.rmtree(manifest.directory.parent, ignore_errors=True)
            raise PackageExists(f"package {manifest.label} already exists")
        if self.table is not None and record:
            await asyncio.to_thread(self.table.put, manifest.name, manifest.version, digest, data)
        if self.table is not None:
            self.recorded.add(manifest.name)
        self.reconciler.add(manifest, digest)
        log.info("package uploaded", package=manifest.label, sha256=digest, bytes=len(data))
        return {"name": manifest.name, "version": manifest.version, "status": "pending"}

    def add_directory(self, directory: Path) -> dict[str, Any]:
        manifest = read_package(directory)
        if self.reconciler.has_version(manifest.name, manifest.version):
            raise PackageExists(f"package {manifest.label} already exists")
        self.reconciler.add(manifest)
        return {"name": manifest.name, "version": manifest.version, "status": "pending"}

    def list(self) -> list[dict[str, Any]]:
        return [s.view() for _, s in sorted(self.reconciler.packages.items())]

    async def health(self) -> dict[str, Any]:
        """What this worker runs (per package: name, version, status, error) and whether it
        waits for uploads; with a package table, every worker of the fleet (``workers``)."""
        body: dict[str, Any] = {"worker": self.worker_id, **self.reconciler.health()}
        if self.table is not None:
            try:
                body["workers"] = await asyncio.to_thread(self.table.workers)
            except Exception as error:  # the store is away: this worker's part still answers
                body["workers"] = None
                body["workers_error"] = f"{type(error).__name__}: {error}"
        return body

    def get(self, name: str) -> dict[str, Any]:
        return self.reconciler.get(name).view()

    async def delete(self, name: str, *, record: bool = True) -> dict[str, Any]:
        deleted = await self.reconciler.delete(name)
        if self.table is not None and record:
            await asyncio.to_thread(self.table.remove, name)
        self.recorded.discard(name)
        return deleted
