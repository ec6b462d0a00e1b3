"""PostgreSQL ``LISTEN/NOTIFY`` for fleets: an upload or delete on one worker wakes every
worker sharing the state store at once, not at its next poll.

``packages_table.notify`` runs inside the transaction that changes ``headrace_packages``,
so the notification goes out only if the change commits. ``PackageListener`` keeps a psycopg
connection of its own LISTENing and calls ``wake`` on every notification and after every
(re)connect (what was sent while it was away is lost, so it catches up once). A dropped
connection is noticed within ``check_interval`` (a ``select 1`` between waits, itself
bounded by ``check_interval``) and reopened with backoff (doubling while the server
refuses; the shortest wait after a drop). Polling stays the fallback, and the only way on
SQLite.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import psycopg
import sqlalchemy as sa
import structlog

from headrace.engine.store.packages_table import CHANNEL

log = structlog.get_logger("headrace.packages")


class PackageListener:
    """LISTENs on ``CHANNEL`` over its own connection; ``run`` reconnects forever."""

    def __init__(
        self,
        engine: sa.Engine,
        wake: Callable[[], None],
        *,
        application_name: str = "headrace-packages",
        check_interval: float = 5.0,
        backoff: tuple[float, float] = (0.5, 30.0),
    ) -> None:
        self.engine = engine
        self.wake = wake
        self.application_name = application_name[:63]
        self.check_interval = check_interval
        self.backoff = backoff
        self.connected = False
        self.notifications = 0
        self.reconnects = 0
        self.sleep = asyncio.sleep
        """Waits between connection attempts (a test replaces it)."""

    async def _connect(self) -> psycopg.AsyncConnection[tuple[object, ...]]:
        args, options = self.engine.dialect.create_connect_args(self.engine.url)
        options.pop("context", None)  # SQLAlchemy's adapters: not needed to listen
        options.setdefault("application_name", self.application_name)
        options.setdefault("connect_timeout", max(1, round(self.check_interval * 2)))
        conn = await psycopg.AsyncConnection.connect(*args, autocommit=True, **options)
        try:
            await conn.execute(f"LISTEN {CHANNEL}")
        except BaseException:
            await conn.close()
            raise
        return conn

    async def run(self) -> None:
        delay = self.backoff[0]
        while True:
            try:
                conn = await self._connect()
            except psycopg.Error as error:
                log.warning(
                    "package notifications: cannot connect to the state store; retrying",
                    error=str(error).strip(),
                    retry_in=delay,
                )
                await self.sleep(delay)
                delay = min(delay * 2, self.backoff[1])
                continue
            delay = self.backoff[0]
            self.connected = True
            log.info("listening for package changes", channel=CHANNEL)
            self.wake()  # changes made while nobody listened
            try:
                async with conn:
                    while True:
                        async for _ in conn.notifies(timeout=self.check_interval):
                            self.notifications += 1
                            self.wake()
                        # a dead connection raises here; a silent one times out
                        await asyncio.wait_for(conn.execute("select 1"), self.check_interval)
            except (psycopg.Error, TimeoutError) as error:
                self.reconnects += 1
                log.warning(
                    "package notifications: connection lost; reconnecting",
                    error=str(error).strip(),
                    retry_in=self.backoff[0],
                )
            finally:
                self.connected = False
            await self.sleep(self.backoff[0])  # a server that drops every connection at once
