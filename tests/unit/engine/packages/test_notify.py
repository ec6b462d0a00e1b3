"""The LISTEN loop without a server: connection failures back off (doubling, capped), a
connection that drops is reopened, and every (re)connect and notification wakes the
fleet sync. The real PostgreSQL path is in tests/integration/test_packages_worker.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from headrace.engine.packages.notify import PackageListener


class FakeConnection:
    """Delivers ``notes`` notifications, then fails like a terminated backend."""

    def __init__(self, notes: int) -> None:
        self.notes = notes
        self.closed = False

    async def __aenter__(self) -> FakeConnection:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.closed = True

    async def notifies(self, timeout: float | None = None) -> AsyncIterator[str]:
        for _ in range(self.notes):
            yield "pricing-publisher"
        raise psycopg.OperationalError("terminating connection due to administrator command")

    async def execute(self, query: str) -> None:
        raise AssertionError("not reached: notifies fails first")


async def test_backoff_reconnect_and_wakes(monkeypatch: pytest.MonkeyPatch) -> None:
    wakes: list[str] = []
    sleeps: list[float] = []
    outcomes: list[Any] = [
        psycopg.OperationalError("connection refused"),
        psycopg.OperationalError("connection refused"),
        psycopg.OperationalError("connection refused"),
        FakeConnection(notes=2),
        FakeConnection(notes=0),
    ]
    connections = [o for o in outcomes if isinstance(o, FakeConnection)]
    done = asyncio.Event()

    async def connect(self: PackageListener) -> FakeConnection:
        if not outcomes:
            done.set()
            await asyncio.Event().wait()  # stays "connecting" until cancelled
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome  # type: ignore[no-any-return]

    async def sleep(delay: float) -> None:
        sleeps.append(delay)

    monkeypatch.setattr(PackageListener, "_connect", connect)
    listener = PackageListener(
        sa.create_engine("postgresql+psycopg://u@localhost/db"),
        lambda: wakes.append("wake"),
        backoff=(0.5, 1.5),
    )
    listener.sleep = sleep
    task = asyncio.create_task(listener.run())
    await asyncio.wait_for(done.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # refused: doubling, capped at the maximum; dropped: the shortest wait, twice
    assert sleeps == [0.5, 1.0, 1.5, 0.5, 0.5]
    assert wakes == ["wake"] * 4  # 2 connects, 2 notifications
    assert listener.notifications == 2
    assert listener.reconnects == 2
    assert all(c.closed for c in connections) and listener.connected is False
