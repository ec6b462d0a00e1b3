"""A ``sequential`` reactor's fires run as batches: one wake-up, one loop, one report."""

from __future__ import annotations

from headrace.connectors import MemoryDeadLetters, MemorySink
from headrace.engine import RetryPolicy, Runtime
from headrace.engine.observers import ExecutionBatch, ExecutionRecord
from tests.unit.support import pipeline


class BatchRecorder:
    def __init__(self) -> None:
        self.batches: list[ExecutionBatch] = []
        self.records: list[ExecutionRecord] = []

    def on_executions(self, batch: ExecutionBatch) -> None:
        self.batches.append(batch)

    def on_execution(self, record: ExecutionRecord) -> None:
        self.records.append(record)


class RecordRecorder:
    def __init__(self) -> None:
        self.records: list[ExecutionRecord] = []

    def on_execution(self, record: ExecutionRecord) -> None:
        self.records.append(record)


async def test_queued_values_fire_as_one_batch_and_a_failure_keeps_its_retries() -> None:
    calls: list[int] = []

    def fn(a: int) -> int:
        calls.append(a)
        if a == 3:
            raise ValueError("three is bad")
        return a

    pipeline(["a"], fn, strategy="sequential", retry=RetryPolicy(attempts=3, backoff=0.001))
    sink, letters = MemorySink(), MemoryDeadLetters()
    batched, per_record = BatchRecorder(), RecordRecorder()
    async with Runtime(
        graphs=["g"],
        sinks=[sink],
        dead_letters=letters,
        observers=[batched, per_record],
        channel_size=16,
    ) as runtime:
        runtime.pause("g")
        settled: list[int] = []
        for value in range(6):
            await runtime.accumulator("a").offer(value, acks=(lambda v=value: settled.append(v),))
        runtime.resume("g")
        await runtime.wait_idle()
        health = runtime.health()["graphs"]["g"]
    # the failing value ran exactly `attempts` times: its first attempt in the batch counts
    assert calls == [0, 1, 2, 3, 3, 3, 4, 5]
    assert [out["run"] for out in sink.outputs()] == [0, 1, 2, 4, 5]
    assert sorted(settled) == [0, 1, 2, 3, 4, 5]
    (letter,) = letters.letters
    assert letter.payload == {"a": 3}
    # successes reach a batch-aware observer as one batch, failures as their own record
    (batch,) = batched.batches
    assert (batch.graph, batch.reactor, batch.fires) == ("g", "rx", [1, 2, 3, 5, 6])
    assert len(batch.durations) == 5 and all(d >= 0 for d in batch.durations)
    (failed,) = batched.records
    assert (failed.fire, failed.status, failed.attempts) == (4, "failed", 3)
    # an observer with only on_execution sees every execution as a record
    assert sorted((r.fire, r.status) for r in per_record.records) == [
        (1, "ok"),
        (2, "ok"),
        (3, "ok"),
        (4, "failed"),
        (5, "ok"),
        (6, "ok"),
    ]
    assert (health["executions"], health["failures"]) == (6, 1)


async def test_a_pause_in_the_middle_of_a_batch_leaves_the_rest_queued_in_order() -> None:
    fired: list[int] = []
    runtime: Runtime | None = None

    def fn(a: int) -> int:
        fired.append(a)
        if a == 2:
            assert runtime is not None
            runtime.pause("g")
        return a

    pipeline(["a"], fn, strategy="sequential")
    sink = MemorySink()
    async with Runtime(graphs=["g"], sinks=[sink], channel_size=16) as running:
        runtime = running
        running.pause("g")
        for value in range(6):
            await running.push("a", value)
        running.resume("g")
        await running.wait_idle()
        assert fired == [0, 1, 2]
        assert running.health()["reactors"]["rx"]["channel_depths"] == {"a": 3}
        running.resume("g")
        await running.wait_idle()
    assert fired == [0, 1, 2, 3, 4, 5]
    assert [out["run"] for out in sink.outputs()] == [0, 1, 2, 3, 4, 5]
