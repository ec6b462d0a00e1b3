"""The state store's package tables: what a worker group should run, what each worker
runs, and when each worker last reported. Defined on the state store's ``metadata``
(created with the other tables). On PostgreSQL every change of ``headrace_packages``
NOTIFYs ``CHANNEL`` (heard by ``headrace.engine.packages.notify``)."""

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

package_heartbeats_table = sa.Table(
    "headrace_package_heartbeats",
    metadata,
    sa.Column("worker", sa.String(255), primary_key=True),
    sa.Column("heartbeat", sa.Double, nullable=False),
    sa.Column("poll_interval", sa.Double, nullable=False),
    sa.Column("waiting_for_uploads", sa.Boolean, nullable=False),
    extend_existing=True,
)

CHANNEL = "headrace_packages"
"""The PostgreSQL NOTIFY channel of package changes (payload: the package name)."""

STALE_AFTER_POLLS = 3
STALE_AFTER_SECONDS = 30.0
"""A worker whose heartbeat is older than this many of its poll intervals, and than this
many seconds (a busy machine delays a short poll), is ``stale``."""


def notify(conn: sa.Connection, name: str) -> None:
    """Tell the group's listeners that package ``name`` changed (PostgreSQL only; sent when
    ``conn``'s transaction commits)."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.select(sa.func.pg_notify(CHANNEL, name)))


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
            notify(conn, name)

    def remove(self, name: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(packages_table.delete().where(packages_table.c.name == name))
            notify(conn, name)

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

    def report(
        self,
        worker: str,
        states: list[dict[str, Any]],
        *,
        waiting_for_uploads: bool = False,
        poll_interval: float = 2.0,
    ) -> None:
        """Replace ``worker``'s rows with the status of each of its packages, and beat."""
        now = time.time()
        workers, beats = package_workers_table, package_heartbeats_table
        with self.engine.begin() as conn:
            conn.execute(workers.delete().where(workers.c.worker == worker))
            conn.execute(beats.delete().where(beats.c.worker == worker))
            conn.execute(
                beats.insert().values(
                    worker=worker,
                    heartbeat=now,
                    poll_interval=poll_interval,
                    waiting_for_uploads=waiting_for_uploads,
                )
            )
            if states:
                conn.execute(
                    workers.insert(),
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

    def forget(self, worker: str) -> None:
        """``worker`` stops: it leaves the fleet view."""
        workers, beats = package_workers_table, package_heartbeats_table
        with self.engine.begin() as conn:
            conn.execute(workers.delete().where(workers.c.worker == worker))
            conn.execute(beats.delete().where(beats.c.worker == worker))

    def workers(self, now: float | None = None) -> dict[str, dict[str, Any]]:
        """worker -> {heartbeat, stale, waiting_for_uploads, packages: name -> {version,
        status, error, updated_at}}."""
        now = time.time() if now is None else now
        with self.engine.connect() as conn:
            beats = conn.execute(sa.select(package_heartbeats_table)).all()
            rows = conn.execute(sa.select(package_workers_table)).all()
        out: dict[str, dict[str, Any]] = {
            b.worker: {
                "heartbeat": b.heartbeat,
                "stale": now - b.heartbeat
                > max(STALE_AFTER_POLLS * b.poll_interval, STALE_AFTER_SECONDS),
                "waiting_for_uploads": bool(b.waiting_for_uploads),
                "packages": {},
            }
            for b in beats
        }
        for r in rows:
            entry = out.setdefault(
                r.worker,
                {"heartbeat": None, "stale": True, "waiting_for_uploads": False, "packages": {}},
            )
            entry["packages"][r.name] = {
                "version": r.version,
                "status": r.status,
                "error": r.error,
                "updated_at": r.updated_at,
            }
        return out
