"""The SQLite state store: history, dead letters, last values, retention, restart restore."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from pydantic import BaseModel

from headrace.accumulators import passthrough_accumulator, polling_accumulator, stream_accumulator
from headrace.accumulators.limits import ValueLimits
from headrace.connectors import DeadLetter, MemorySink, StoreSink
from headrace.engine import Runtime
from headrace.engine.observers import ExecutionBatch, ExecutionRecord
from headrace.engine.store.state_store import StateStore
from tests.unit.support import (
    declare_reactor,
    one_node_graph,
    passthroughs,
    pipeline,
    wait_until,
)


class Quote(BaseModel):
    symbol: str
    price: float


def record(graph: str = "g", fire: int = 1, status: str = "ok", **extra: object) -> ExecutionRecord:
    return ExecutionRecord(
        graph=graph,
        reactor="rx",
        fire=fire,
        started_at=time.time(),
        duration=0.01,
        status=status,
        attempts=1,
        **extra,  # type: ignore[arg-type]
    )


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'state' / 'headrace.db'}"


@pytest.fixture
def store(url: str):
    with StateStore(url, worker_id="w1", flush_interval=3600) as opened:
        yield opened


# -- schema and lifecycle --------------------------------------------------------------


def test_open_creates_schema_and_parent_directory_and_is_idempotent(url: str) -> None:
    first = StateStore(url).open()
    assert first.open() is first
    second = StateStore(url).open()  # same file, schema already there
    try:
        assert Path(url.removeprefix("sqlite:///")).exists()
        assert first.executions() == [] and second.dead_letters() == []
    finally:
        first.close()
        second.close()
        first.close()  # closing twice is harmless


def test_unsupported_url_and_unopened_store_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match=r"only sqlite"):
        StateStore("mysql://user:secret@db/headrace")
    with pytest.raises(RuntimeError, match=r"not open"):
        StateStore(url).executions()
    with pytest.raises(ValueError, match=r"retention_executions"):
        StateStore(url, retention_executions=0)


def test_display_url_hides_the_password_and_postgres_uses_psycopg() -> None:
    store = StateStore("postgresql://headrace:s3cret@db:5432/headrace")
    assert store.display_url == "postgresql+psycopg://headrace:***@db:5432/headrace"
    assert "s3cret" not in str(store.health())


def test_a_failed_open_leaves_the_store_closed() -> None:
    store = StateStore("postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=2")
    with pytest.raises(sa.exc.OperationalError):
        store.open()
    assert store.health()["open"] is False
    store.close()


def test_in_memory_sqlite_works_across_threads() -> None:
    with StateStore("sqlite://", flush_interval=0.01) as memory:
        memory.on_execution(record())
        memory.flush()
        assert len(memory.executions()) == 1


# -- execution history -------------------------------------------------------------------


def test_executions_are_queued_then_written_in_a_batch(store: StateStore) -> None:
    store.on_execution(record("g", 1))
    store.on_execution(record("g", 2, status="failed", error="boom", node="n1"))
    store.on_execution(record("other", 1))
    assert store.executions() == []  # the observer hook only enqueued
    assert store.health()["queued"] == 3

    store.flush()

    rows = store.executions()
    assert [(r["graph"], r["fire"]) for r in rows] == [("other", 1), ("g", 2), ("g", 1)]
    failed = store.executions(graph="g", limit=1)[0]
    assert failed["status"] == "failed"
    assert failed["error"] == "boom"
    assert failed["node"] == "n1"
    assert failed["worker"] == "w1"
    assert store.health()["written_executions"] == 3


def test_a_flush_writes_every_failure_and_the_newest_successes_of_each_graph(url: str) -> None:
    with StateStore(url, flush_interval=3600, successes_per_flush=3) as sampled:
        for fire in range(1, 11):
            sampled.on_execution(record("g", fire, status="failed" if fire in (2, 9) else "ok"))
        sampled.on_execution(record("other", 1))
        sampled.flush()
        rows = sampled.executions(limit=100)
        assert [(r["graph"], r["fire"], r["status"]) for r in rows] == [
            ("other", 1, "ok"),
            ("g", 10, "ok"),
            ("g", 9, "failed"),
            ("g", 8, "ok"),
            ("g", 7, "ok"),
            ("g", 2, "failed"),
        ]
        health = sampled.health()
        assert health["unsampled_executions"] == 5
        assert health["written_executions"] == 6
        assert health["status"] == "ok"  # sampling is not a loss: metrics count every one


def test_a_batch_of_successes_queues_only_its_newest_sample(url: str) -> None:
    with StateStore(url, flush_interval=3600, successes_per_flush=2) as sampled:
        sampled.on_executions(
            ExecutionBatch("g", "rx", [4, 5, 6, 7], time.time(), [0.1, 0.2, 0.3, 0.4])
        )
        assert sampled.health()["queued"] == 2
        sampled.flush()
        rows = sampled.executions()
        assert [(r["fire"], r["duration"], r["status"], r["attempts"]) for r in rows] == [
            (7, 0.4, "ok", 1),
            (6, 0.3, "ok", 1),
        ]
        assert sampled.health()["unsampled_executions"] == 2


def test_batches_keep_only_each_graphs_newest_successes_until_the_flush(url: str) -> None:
    """Batches are kept whole, not as records, until a flush: the oldest ones go once the
    newer ones hold the sample; the flush writes the newest ``successes_per_flush`` per
    graph and counts every other success as unsampled."""
    now = time.time()
    with StateStore(url, flush_interval=3600, successes_per_flush=3) as sampled:
        sampled.on_executions(ExecutionBatch("g", "rx", [1, 2], now, [0.1, 0.2]))
        sampled.on_executions(ExecutionBatch("g", "rx", [3, 4, 5, 6], now, [0.3] * 4))
        assert sampled.health()["unsampled_executions"] == 2  # batch [1, 2] is not needed
        sampled.on_executions(ExecutionBatch("g", "rx", [7], now, [0.7]))
        sampled.on_executions(ExecutionBatch("h", "ry", [1], now, [0.5]))
        assert sampled.health()["queued"] == 3 + 1
        sampled.on_execution(record("g", 8, status="failed"))
        sampled.flush()
        rows = sampled.executions(limit=100)
        assert sorted((r["graph"], r["fire"], r["status"]) for r in rows) == [
            ("g", 5, "ok"),
            ("g", 6, "ok"),
            ("g", 7, "ok"),
            ("g", 8, "failed"),
            ("h", 1, "ok"),
        ]
        health = sampled.health()
        assert health["unsampled_executions"] == 4  # fires 1-4 of g
        assert health["written_executions"] == 5 and health["queued"] == 0


def test_background_writer_flushes_on_its_interval(url: str) -> None:
    with StateStore(url, flush_interval=0.01) as fast:
        fast.on_execution(record())
        deadline = time.monotonic() + 5
        while not fast.executions() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(fast.executions()) == 1


def test_full_queue_drops_oldest_execution_records_and_counts_them(url: str) -> None:
    with StateStore(url, queue_size=3, flush_interval=3600) as small:
        for fire in range(1, 6):
            small.on_execution(record(fire=fire))
        assert small.dropped_executions == 2
        small.flush()
        assert [r["fire"] for r in small.executions()] == [5, 4, 3]
        assert small.health()["dropped_executions"] == 2


def test_close_writes_what_is_still_queued(url: str) -> None:
    store = StateStore(url, flush_interval=3600).open()
    store.on_execution(record(fire=7))
    store.on_delivered("never_declared", 1)  # unknown accumulator: not kept
    store.close()
    with StateStore(url) as reopened:
        assert [r["fire"] for r in reopened.executions()] == [7]
        assert reopened.load_last_values() == {}


# -- dead letters --------------------------------------------------------------------------


async def test_dead_letters_are_durable_when_send_returns(store: StateStore) -> None:
    await store.send(
        DeadLetter(
            kind="message",
            reason="not JSON",
            payload=b"\x00\xffraw",
            accumulator="book",
            topic="price.orderbook",
            partition=2,
            offset=41,
        )
    )
    await store.send(
        DeadLetter(
            kind="execution",
            reason="boom",
            payload={"quote": Quote(symbol="X", price=1.5), "n": float("nan")},
            graph="g",
            node="evaluate",
        )
    )
    # No flush: dead letters bypass the queue.
    execution, message = store.dead_letters()
    assert message["payload_encoding"] == "base64"
    assert base64.b64decode(message["payload"]) == b"\x00\xffraw"
    assert (message["topic"], message["partition"], message["offset"]) == ("price.orderbook", 2, 41)
    assert message["accumulator"] == "book" and message["worker"] == "w1"
    assert execution["payload"] == {"quote": {"symbol": "X", "price": 1.5}, "n": None}
    assert execution["payload_encoding"] == "json"
    assert (execution["graph"], execution["node"], execution["reason"]) == ("g", "evaluate", "boom")
    assert store.dead_letters(limit=1) == [execution]


async def test_runtime_writes_failed_executions_and_dead_letters_to_the_store(
    store: StateStore,
) -> None:
    def explode(a):
        raise RuntimeError("node blew up")

    builder = pipeline(["a"], explode)
    runtime = Runtime(graphs=[builder], dead_letters=store)
    store.attach(runtime)
    async with runtime:
        await runtime.push("a", {"x": 1})
        await runtime.wait_idle()
    store.flush()
    (row,) = store.executions()
    assert (row["graph"], row["status"], row["node"]) == ("g", "failed", "run")
    assert "node blew up" in row["error"]
    (letter,) = store.dead_letters()
    assert letter["kind"] == "execution" and letter["payload"] == {"a": {"x": 1}}


# -- graph results -----------------------------------------------------------------------------


async def test_results_are_durable_when_write_result_returns(url: str) -> None:
    with StateStore(url, worker_id="w1", flush_interval=3600) as store:
        before = time.time()
        await store.write_result("g", {"emit": {"quote": Quote(symbol="X", price=1.5), "n": 2}})
        await store.write_result("h", {"alert": [1, 2.5, None, float("nan")], "raw": b"\x00\x01"})
        await store.write_result("g", {"emit": {"text": "4.0"}})
        # No flush: results bypass the queue.
        rows = store.results()
        assert [r["graph"] for r in rows] == ["g", "h", "g"]
        assert rows[0]["outputs"] == {"emit": {"text": "4.0"}}  # a string stays a string
        assert rows[1]["outputs"] == {"alert": [1, 2.5, None, None], "raw": "AAE="}
        assert rows[2]["outputs"] == {"emit": {"quote": {"symbol": "X", "price": 1.5}, "n": 2}}
        assert all(r["worker"] == "w1" and before <= r["at"] <= time.time() for r in rows)
        assert [r["outputs"] for r in store.results(graph="g", limit=1)] == [
            {"emit": {"text": "4.0"}}
        ]
        assert store.results(graph="nope") == []
        assert store.health()["written_results"] == 3
    with StateStore(url) as reopened:  # on disk, not only in this process
        assert len(reopened.results()) == 3


async def test_store_sink_writes_each_graph_result(store: StateStore) -> None:
    sink = StoreSink(store)
    runtime = Runtime(graphs=[pipeline(["a"], lambda a: {"doubled": a["x"] * 2})], sinks=[sink])
    async with runtime:
        for x in (1, 2, 3):
            await runtime.push("a", {"x": x})
            await runtime.wait_idle()
    assert [r["outputs"] for r in store.results(graph="g")] == [
        {"run": {"doubled": 6}},
        {"run": {"doubled": 4}},
        {"run": {"doubled": 2}},
    ]
    assert store.health()["open"] is True, "the sink leaves the store's lifecycle to its owner"


# -- retention -----------------------------------------------------------------------------


async def test_prune_keeps_the_newest_rows(url: str) -> None:
    with StateStore(url, retention_executions=3, retention_dead_letters=2) as small:
        for fire in range(10):
            small.on_execution(record(fire=fire))
        small.flush()
        for n in range(5):
            await small.send(DeadLetter(kind="message", reason=f"r{n}", payload=n))
        deleted = small.prune()
        assert deleted == {
            "headrace_executions": 7,
            "headrace_dead_letters": 3,
            "headrace_results": 0,
        }
        assert [r["fire"] for r in small.executions()] == [9, 8, 7]
        assert [d["reason"] for d in small.dead_letters()] == ["r4", "r3"]
        assert small.prune() == {
            "headrace_executions": 0,
            "headrace_dead_letters": 0,
            "headrace_results": 0,
        }


async def test_prune_keeps_the_newest_results(url: str) -> None:
    with StateStore(url, retention_results=2, flush_interval=3600) as small:
        for n in range(5):
            await small.write_result("g" if n % 2 else "h", {"out": n})
        assert small.prune()["headrace_results"] == 3
        assert [r["outputs"] for r in small.results()] == [{"out": 4}, {"out": 3}]
        assert small.prune()["headrace_results"] == 0
    with pytest.raises(ValueError, match=r"retention_results"):
        StateStore(url, retention_results=0)


# -- last values ------------------------------------------------------------------------------


async def test_only_polling_and_passthrough_values_are_kept(store: StateStore) -> None:
    passthroughs("ref")
    stream_accumulator(topic="book.topic", name="book")(lambda event: event)
    polling_accumulator(interval="1h", name="poll")(lambda: {"polled": True})
    declare_reactor("rx", ["ref", "book", "poll"])
    builder = one_node_graph("g", "rx", ["ref", "book", "poll"], lambda **kw: kw)
    runtime = Runtime(graphs=[builder])
    store.attach(runtime)
    assert runtime.observers.observers == [store]
    store.attach(runtime)  # attaching twice registers once
    assert runtime.observers.observers == [store]
    async with runtime:
        # the stream accumulator's runner gets no per-message hook; the others keep theirs
        hooks = {name: runner.on_delivered for name, runner in runtime.accumulators.items()}
        assert hooks["book"] is None
        assert hooks["ref"] is not None and hooks["poll"] is not None
        await runtime.push("ref", {"v": 1})
        await runtime.push("ref", {"v": 2})
        await runtime.push("book", {"bid": 1})
        await wait_until(lambda: runtime.accumulators["poll"].delivered == 1)
        await runtime.wait_idle()
    store.flush()
    assert store.load_last_values() == {"ref": {"v": 2}, "poll": {"polled": True}}


def test_explicit_accumulator_names_choose_what_is_kept(url: str) -> None:
    with StateStore(url, accumulators=["x"], flush_interval=3600) as chosen:
        chosen.on_delivered("x", [1, 2])
        chosen.on_delivered("y", 3)
        chosen.flush()
        chosen.on_delivered("x", {"newer": b"\x01"})  # upsert replaces
        chosen.flush()
        assert chosen.load_last_values() == {"x": {"newer": "AQ=="}}


# -- restart -----------------------------------------------------------------------------------


def _book_and_reference() -> object:
    """when_all over a Kafka-style stream (not stored) and a passthrough (stored)."""
    stream_accumulator(topic="price.orderbook", name="book")(lambda event: event)
    passthroughs("ref")
    declare_reactor("signal_rx", ["book", "ref"], mode="when_all")
    return one_node_graph("signal", "signal_rx", ["book", "ref"], lambda book, ref: [book, ref])


async def test_restart_keeps_when_all_state_from_a_passthrough_value(url: str) -> None:
    """A restored value counts as delivered since the last fire.

    Before the restart ``ref`` got a new value after the last fire; ``book`` did not. After
    the restart, ``restore_into`` re-delivers ``ref``: nothing fires yet (``book`` is not
    dirty), and the first ``book`` message fires with the restored ``ref``. Without the
    restore the same ``book`` message would not fire at all.
    """
    graph = _book_and_reference()
    sink = MemorySink()
    with StateStore(url, flush_interval=3600) as store:
        runtime = Runtime(graphs=[graph], sinks=[sink])
        store.attach(runtime)
        async with runtime:
            await runtime.push("ref", "r1")
            await runtime.push("book", "b1")
            await sink.wait_for(1)
            await runtime.push("ref", "r2")  # pending: book has not delivered since
            await runtime.wait_idle()
        assert sink.outputs() == [{"run": ["b1", "r1"]}]

    sink = MemorySink()
    with StateStore(url) as store:
        runtime = Runtime(graphs=[graph], sinks=[sink])
        store.attach(runtime)
        async with runtime:
            assert await store.restore_into(runtime) == ["ref"]
            await runtime.wait_idle()
            assert sink.outputs() == []  # restoring ref alone does not fire when_all
            await runtime.push("book", "b2")
            await sink.wait_for(1)
            await runtime.wait_idle()
            assert runtime.reactors["signal_rx"].fire_count == 1
        assert sink.outputs() == [{"run": ["b2", "r2"]}]

    sink = MemorySink()
    runtime = Runtime(graphs=[graph], sinks=[sink])
    async with runtime:  # control: no restore, the same message does not fire
        await runtime.push("book", "b2")
        await runtime.wait_idle()
    assert sink.outputs() == []


async def test_restart_with_every_when_all_input_stored_fires_once_on_restore(url: str) -> None:
    """When all of a when_all reactor's accumulators were restored, they are all dirty.

    The reactor fires once right after ``restore_into`` on the restored values (this may
    repeat the last fire before the restart: at-least-once). After that, when_all again
    needs a fresh value from every accumulator.
    """
    graph = pipeline(["a", "b"], mode="when_all")
    with StateStore(url) as store:
        runtime = Runtime(graphs=[graph])
        store.attach(runtime)
        async with runtime:
            await runtime.push("a", 1)
            await runtime.push("b", 2)
            await runtime.push("a", 3)
            await runtime.wait_idle()
            assert runtime.reactors["rx"].fire_count == 1

    sink = MemorySink()
    with StateStore(url) as store:
        runtime = Runtime(graphs=[graph], sinks=[sink])
        store.attach(runtime)
        async with runtime:
            assert await store.restore_into(runtime) == ["a", "b"]
            await sink.wait_for(1)
            await runtime.push("a", 5)
            await runtime.wait_idle()
            assert sink.outputs() == [{"run": {"a": 3, "b": 2}}]
            await runtime.push("b", 6)
            await sink.wait_for(2)
        assert sink.outputs()[1] == {"run": {"a": 5, "b": 6}}
        store.flush()
        assert store.load_last_values() == {"a": 5, "b": 6}


async def test_restore_revives_models_and_skips_fresh_or_missing_accumulators(url: str) -> None:
    @passthrough_accumulator(name="quote")
    def quote(event: Quote) -> Quote:
        return event

    polls = iter([{"p": 1}])
    polling_accumulator(interval="1h", name="poll")(lambda: next(polls, None))
    declare_reactor("rx", ["quote", "poll"])
    graph = one_node_graph("g", "rx", ["quote", "poll"], lambda **kw: kw)
    with StateStore(url) as store:
        runtime = Runtime(graphs=[graph])
        store.attach(runtime)
        async with runtime:
            await runtime.push("quote", {"symbol": "X", "price": 2.0})
            await runtime.wait_idle()
        store.flush()
        assert store.load_last_values() == {
            "quote": {"symbol": "X", "price": 2.0},
            "poll": {"p": 1},
        }
        store.on_delivered("gone", 1)  # an accumulator the next runtime does not run
        store._values["gone"] = (1, time.time())
        store.flush()

    polls = iter([{"p": 2}])  # the restarted poller delivers a fresh value first
    sink = MemorySink()
    with StateStore(url) as store:
        runtime = Runtime(graphs=[graph], sinks=[sink])
        store.attach(runtime)
        async with runtime:
            await wait_until(lambda: runtime.accumulators["poll"].delivered == 1)
            assert await store.restore_into(runtime) == ["quote"]
            await runtime.wait_idle()
        cache = runtime.reactors["rx"].policy.cache
        assert cache["quote"] == Quote(symbol="X", price=2.0)
        assert cache["poll"] == {"p": 2}
        store.flush()  # restoring does not rewrite the stored values
        assert store.load_last_values()["poll"] == {"p": 2}


# -- values that cannot be stored never poison the writer --------------------------------------


def nested(levels: int) -> object:
    value: object = {"leaf": 1}
    for _ in range(levels):
        value = [value]
    return value


def test_a_value_too_deep_to_store_is_dead_lettered_and_the_rest_is_written(url: str) -> None:
    with StateStore(url, accumulators=["deep", "ok"], flush_interval=3600) as store:
        store.on_delivered("deep", nested(300))  # the JSON writers stop at 254 levels
        store.on_delivered("ok", {"n": 1})
        for fire in (1, 2, 3, 4):
            store.on_execution(record(fire=fire))
        store.flush()  # raised "Maximum serialization depth exceeded" before the fix
        assert [e["fire"] for e in store.executions()] == [4, 3, 2, 1]
        assert store.load_last_values() == {"ok": {"n": 1}}
        (letter,) = store.dead_letters()
        assert letter["kind"] == "value" and letter["accumulator"] == "deep"
        assert "nested more than 80 levels" in letter["reason"]
        assert "worker.limits.max_depth" in letter["reason"]
        health = store.health()
        assert health["status"] == "degraded" and health["rejected_values"] == 1
        assert health["dropped_executions"] == 0 and health["write_errors"] == 0
        store.on_execution(record(fire=5))
        store.on_delivered("deep", {"fine": True})  # a later good value is stored again
        store.flush()
        assert len(store.executions()) == 5
        assert store.load_last_values()["deep"] == {"fine": True}


def test_values_over_the_size_limit_or_circular_are_refused(url: str) -> None:
    limits = ValueLimits(max_depth=8, max_bytes=100)
    with StateStore(url, accumulators=["a", "b", "c"], limits=limits, flush_interval=3600) as s:
        circular: list[object] = []
        circular.append(circular)
        s.on_delivered("a", "x" * 200)
        s.on_delivered("b", circular)
        s.on_delivered("c", nested(8 + 16 - 1))  # 24 levels with its leaf dict: just fits
        s.flush()
        assert set(s.load_last_values()) == {"c"}
        reasons = sorted(d["reason"] for d in s.dead_letters())
        assert "over the limit of 100 (worker.limits.max_bytes)" in reasons[0]
        assert "nested more than 24 levels" in reasons[1]


async def test_unstorable_results_and_dead_letter_payloads_are_refused_clearly(url: str) -> None:
    with StateStore(url, flush_interval=3600) as store:
        with pytest.raises(ValueError, match=r"graph 'g': result not stored: value is nested"):
            await store.write_result("g", {"out": nested(200)})
        await store.send(DeadLetter(kind="execution", reason="boom", payload=nested(200)))
        (letter,) = store.dead_letters()
        assert letter["payload"] is None
        assert letter["reason"].startswith("boom (payload not stored: value is nested")


def test_a_failed_batch_keeps_its_records_and_close_never_raises(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = StateStore(url, flush_interval=3600).open()
    store.on_execution(record(fire=1))
    real_write = store._write

    def database_gone(*_args: object) -> None:
        raise sa.exc.OperationalError("INSERT", {}, Exception("database is gone"))

    monkeypatch.setattr(store, "_write", database_gone)
    with pytest.raises(sa.exc.OperationalError):
        store.flush()
    assert store.health()["queued"] == 1, "a failed batch is kept for the next flush"
    monkeypatch.setattr(store, "_write", real_write)
    store.flush()
    assert [e["fire"] for e in store.executions()] == [1]

    store.on_execution(record(fire=2))
    monkeypatch.setattr(store, "_write", database_gone)
    store.close()  # raised before: the worker's SIGTERM then exited 1
    assert store.health()["open"] is False
    assert store.health()["status"] == "degraded" and store.dropped_executions == 1
