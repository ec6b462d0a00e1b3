"""CallThread: every call on one named thread, in order; results and errors come back."""

from __future__ import annotations

import asyncio
import threading

import pytest

from headrace.connectors.kafka.call_thread import CallThread


async def test_calls_run_in_order_on_one_thread_and_errors_reach_the_caller() -> None:
    worker = CallThread("test-consumer")
    seen: list[tuple[int, str]] = []

    def record(i: int) -> int:
        seen.append((i, threading.current_thread().name))
        return i * 2

    def fail() -> None:
        raise ValueError("consumer call failed")

    try:
        results = await asyncio.gather(*(worker.call(record, i) for i in range(50)))
        assert results == [i * 2 for i in range(50)]
        assert seen == [(i, "test-consumer") for i in range(50)], "in order, on one thread"
        with pytest.raises(ValueError, match="consumer call failed"):
            await worker.call(fail)
        done = worker.submit(record, 7)
        assert await asyncio.wrap_future(done) == 14
        assert await worker.call(record, 8) == 16, "the thread survives a failed call"
    finally:
        worker.shutdown(wait=True)
    with pytest.raises(RuntimeError, match="after shutdown"):
        worker.submit(record, 9)
    assert not worker._thread.is_alive()


async def test_a_cancelled_caller_does_not_break_the_thread() -> None:
    worker = CallThread("test-consumer")
    release = threading.Event()
    try:
        waiting = asyncio.ensure_future(worker.call(release.wait, 5))
        await asyncio.sleep(0.01)
        waiting.cancel()
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert await worker.call(lambda: "still serving") == "still serving"
    finally:
        worker.shutdown(wait=True)


async def test_a_submitted_future_cancelled_before_its_call_ran_does_not_kill_the_thread() -> None:
    worker = CallThread("test-consumer")
    release = threading.Event()
    try:
        blocker = worker.submit(release.wait, 5)
        queued = worker.submit(lambda: "ran anyway")
        assert queued.cancel(), "still queued behind the blocker"
        release.set()
        await asyncio.wait_for(asyncio.wrap_future(blocker), 5)
        assert await asyncio.wait_for(worker.call(lambda: "serving"), 5) == "serving"
    finally:
        release.set()
        worker.shutdown(wait=True)


def test_a_stuck_call_is_abandoned_on_a_daemon_thread_that_never_blocks_exit() -> None:
    """A call stuck for good is abandoned with its thread: a daemon, so the worker's
    process still exits (the interpreter joins ThreadPoolExecutor threads at exit)."""
    calls = CallThread("test-transactions")
    assert calls._thread.daemon
    stuck = threading.Event()
    pending = calls.submit(stuck.wait)  # never returns on its own
    calls.shutdown(wait=False)  # returns at once: the stuck call is abandoned
    assert not pending.done() and calls._thread.is_alive()
    stuck.set()
    assert pending.result(timeout=5) is True
