"""The state store on a real PostgreSQL server, including several workers sharing it."""

from __future__ import annotations

import asyncio
import base64
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
import sqlalchemy as sa

from headrace.connectors import DeadLetter, MemorySink
from headrace.engine import Runtime
from headrace.engine.observers import ExecutionRecord
from headrace.engine.store.state_store import StateStore
from tests.fixtures.postgres_server import libpq_url
from tests.unit.support import pipeline

pytestmark = pytest.mark.postgres


def record(graph: str, fire: int) -> ExecutionRecord:
    return ExecutionRecord(graph, "rx", fire, time.time(), 0.002, "ok", 1)


@pytest.fixture
def schema_url(postgres_url: str) -> Iterator[str]:
    """A URL whose connections use a fresh schema of their own, dropped afterwards."""
    schema = f"headrace_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(libpq_url(postgres_url), autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    url = sa.make_url(postgres_url).update_query_dict({"options": f"-csearch_path={schema}"})
    yield url.render_as_string(hide_password=False)
    with psycopg.connect(libpq_url(postgres_url), autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def test_round_trip_on_postgres(schema_url: str) -> None:
    with StateStore(schema_url, worker_id="pg-1", retention_executions=2) as store:
        for fire in range(4):
            store.on_execution(record("g", fire))
        asyncio.run(
            store.send(
                DeadLetter(kind="message", reason="bad", payload=b"\x00\x01", topic="t", offset=3)
            )
        )
        asyncio.run(
            store.send(
                DeadLetter(kind="execution", reason="boom", payload={"s": "nul\x00", "n": 1.5})
            )
        )
        store.flush()
        asyncio.run(store.write_result("g", {"emit": {"s": "nul\x00", "n": float("nan")}}))
        asyncio.run(store.write_result("h", {"emit": {"text": "4.0"}}))
        assert store.prune() == {
            "headrace_executions": 2,
            "headrace_dead_letters": 0,
            "headrace_results": 0,
        }
        assert [(r["fire"], r["worker"]) for r in store.executions()] == [(3, "pg-1"), (2, "pg-1")]
        execution, message = store.dead_letters()
        assert execution["payload"] == {"s": "nul\x00", "n": 1.5}
        assert base64.b64decode(message["payload"]) == b"\x00\x01"
        assert (message["topic"], message["offset"]) == ("t", 3)
        assert [(r["graph"], r["outputs"], r["worker"]) for r in store.results()] == [
            ("h", {"emit": {"text": "4.0"}}, "pg-1"),
            ("g", {"emit": {"s": "nul\x00", "n": None}}, "pg-1"),
        ]
        assert len(store.results(graph="g")) == 1

    with psycopg.connect(libpq_url(schema_url)) as conn:  # tables live in the test's schema
        schema = sa.make_url(schema_url).query["options"].split("=", 1)[1]
        tables = conn.execute(
            "select table_name from information_schema.tables where table_schema = %s",
            (schema,),
        ).fetchall()
    assert sorted(t for (t,) in tables) == [
        "headrace_accumulator_values",
        "headrace_dead_letters",
        "headrace_executions",
        "headrace_package_heartbeats",
        "headrace_package_workers",
        "headrace_packages",
        "headrace_results",
    ]


def test_two_workers_share_one_store_concurrently(schema_url: str) -> None:
    """Schema creation races, interleaved writes and upserts of one accumulator's value."""
    workers = 4
    barrier = threading.Barrier(workers)

    def open_store(index: int) -> StateStore:
        store = StateStore(
            schema_url, worker_id=f"w{index}", accumulators=["shared"], flush_interval=0.01
        )
        barrier.wait()
        return store.open()

    with ThreadPoolExecutor(workers) as pool:
        stores = list(pool.map(open_store, range(workers)))
    try:

        def work(index: int) -> None:
            store = stores[index]
            for n in range(50):
                store.on_execution(record(f"g{index}", n))
                store.on_delivered("shared", {"worker": index, "n": n})
                if n % 10 == 0:
                    asyncio.run(
                        store.send(DeadLetter(kind="message", reason=f"w{index}", payload=n))
                    )
                    store.flush()
                    store.prune()

        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(work, range(workers)))
        for store in stores:
            store.flush()

        reader = stores[0]
        rows = reader.executions(limit=1000)
        assert len(rows) == workers * 50
        assert {r["worker"] for r in rows} == {f"w{i}" for i in range(workers)}
        assert len(reader.executions(graph="g3", limit=1000)) == 50
        assert len(stores[1].dead_letters(limit=1000)) == workers * 5
        (value,) = reader.load_last_values().values()
        assert value["n"] == 49  # the last write of whichever worker flushed last
    finally:
        for store in stores:
            store.close()


async def test_restart_restores_passthrough_values_from_postgres(schema_url: str) -> None:
    graph = pipeline(["a", "b"], mode="when_all")
    with StateStore(schema_url) as store:
        runtime = Runtime(graphs=[graph])
        store.attach(runtime)
        async with runtime:
            await runtime.push("a", {"x": 1})
            await runtime.wait_idle()

    sink = MemorySink()
    with StateStore(schema_url) as store:
        runtime = Runtime(graphs=[graph], sinks=[sink])
        store.attach(runtime)
        async with runtime:
            assert await store.restore_into(runtime) == ["a"]
            await runtime.push("b", {"y": 2})
            await sink.wait_for(1)
    assert sink.outputs() == [{"run": {"a": {"x": 1}, "b": {"y": 2}}}]


def test_an_unstorable_value_is_dead_lettered_and_nothing_else_is_lost_on_postgres(
    schema_url: str,
) -> None:
    deep: object = {"leaf": 1}
    for _ in range(300):  # past what the JSON encoders write
        deep = [deep]
    with StateStore(schema_url, accumulators=["deep", "ok"], flush_interval=3600) as store:
        store.on_delivered("deep", deep)
        store.on_delivered("ok", {"n": 1})
        for fire in range(1, 5):
            store.on_execution(record("g", fire))
        store.flush()
        assert [e["fire"] for e in store.executions()] == [4, 3, 2, 1]
        assert store.load_last_values() == {"ok": {"n": 1}}
        (letter,) = store.dead_letters()
        assert (letter["kind"], letter["accumulator"]) == ("value", "deep")
        assert store.health()["status"] == "degraded"
    assert store.health()["open"] is False  # closed cleanly
