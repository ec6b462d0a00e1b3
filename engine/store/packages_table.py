"""The state store's package tables: what a worker group should run, and what each worker
runs. Defined on the state store's ``metadata`` (created with the other tables)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from headrace.engine.store.state_store import metadata

packages_table = sa.Table(
    "headrace_packages",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("version", sa.String(64), nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("archive", sa.LargeBinary, nullable=False),
    sa.Column("uploaded_at", sa.Double, nullable=False),
    extend_existing=True,  # the module may be imported again (tests forget modules)
)

package_workers_table = sa.Table(
    "headrace_package_workers",
    metadata,
    sa.Column("worker", sa.String(255), primary_key=True),
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("version", sa.String(64), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("error", sa.Text),
    sa.Column("updated_at", sa.Double, nullable=False),
    extend_existing=True,
)


@dataclass(frozen=True)
class StoredPackage:
    name: str
    version: str
    sha256: str


class PackageTable:
    """Reads and writes the package tables through an open state store's engine."""

    def __init__(self, store: Any) -> None:
        self.store = store

    @property
    def engine(self) -> sa.Engine:
        return self.store._require_engine()  # type: ignore[no-any-return]

    def put(self, name: str, version: str, sha256: str, archive: bytes) -> None:
        """Make ``name`` at ``version`` what the group should run (replaces an older one)."""
        with self.engine.begin() as conn:
            conn.execute(packages_table.delete().where(packages_table.c.name == name))
            conn.execute(
                packages_table.insert().values(
                    name=name,
                    version=version,
                    sha256=sha256,
                    archive=archive,
                    uploaded_at=time.time(),
                )
            )

    def remove(self, name: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(packages_table.delete().where(packages_table.c.name == name))

    def wanted(self) -> dict[str, StoredPackage]:
        t = packages_table.c
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(t.name, t.version, t.sha256)).all()
        return {r.name: StoredPackage(r.name, r.version, r.sha256) for r in rows}

    def archive(self, name: str, sha256: str) -> bytes | None:
        t = packages_table.c
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(t.archive).where(t.name == name, t.sha256 == sha256)
            ).first()
        return bytes(row.archive) if row is not None else None

    def report(self, worker: str, states: list[dict[str, Any]]) -> None:
        """Replace ``worker``'s rows with the status of each of its packages."""
        now = time.time()
        with self.engine.begin() as conn:
            conn.execute(
                package_workers_table.delete().where(package_workers_table.c.worker == worker)
            )
            if states:
                conn.execute(
                    package_workers_table.insert(),
                    [
                        {
                            "worker": worker,
                            "name": s["name"],
                            "version": s["version"],
                            "status": s["status"],
                            "error": s.get("error"),
                            "updated_at": now,
                        }
                        for s in states
                    ],
                )

    def workers(self) -> dict[str, dict[str, dict[str, Any]]]:
        """worker -> package -> {version, status, error, updated_at}."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(package_workers_table)).all()
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for r in rows:
            out.setdefault(r.worker, {})[r.name] = {
                "version": r.version,
                "status": r.status,
                "error": r.error,
                "updated_at": r.updated_at,
            }
        return out
