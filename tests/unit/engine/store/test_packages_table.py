"""The fleet view in the package tables (SQLite): every worker that reported is listed,
with or without packages, with its heartbeat; a silent one turns stale; one that stopped
leaves."""

from __future__ import annotations

from pathlib import Path

from headrace.engine.store.packages_table import PackageTable
from headrace.engine.store.state_store import StateStore


def test_workers_beat_go_stale_and_leave(tmp_path: Path) -> None:
    with StateStore(f"sqlite:///{tmp_path / 'state.db'}", flush_interval=3600) as store:
        table = PackageTable(store)
        table.report("idle", [], waiting_for_uploads=True, poll_interval=2.0)
        table.report(
            "busy",
            [{"name": "p", "version": "1.0", "status": "failed", "error": "boom"}],
            poll_interval=60.0,
        )
        fleet = table.workers()
        assert {w: (v["waiting_for_uploads"], v["stale"]) for w, v in fleet.items()} == {
            "idle": (True, False),
            "busy": (False, False),
        }
        assert fleet["idle"]["packages"] == {}
        busy = fleet["busy"]["packages"]["p"]
        assert (busy["version"], busy["status"], busy["error"]) == ("1.0", "failed", "boom")
        # 40 s without a beat: stale at a 2 s poll interval (past 3 polls and 30 s), not at
        # 60 s (3 polls are 180 s)
        assert not any(
            w["stale"] for w in table.workers(now=fleet["idle"]["heartbeat"] + 10).values()
        )
        later = fleet["idle"]["heartbeat"] + 40
        assert {w: v["stale"] for w, v in table.workers(now=later).items()} == {
            "idle": True,
            "busy": False,
        }
        table.forget("idle")
        assert sorted(table.workers()) == ["busy"]
