"""Supervision: a long-lived task that dies, or a reported fatal error, fails the worker."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import httpx
import pytest
import structlog

from headrace.accumulators import polling_accumulator
from headrace.engine import Runtime
from headrace.engine.config.loader import load_config
from headrace.engine.ops.http import create_app
from headrace.engine.supervision import ComponentFailure, Supervisor
from headrace.engine.worker import Worker
from tests.unit.engine.config.test_config import base, mod, write  # noqa: F401 (fixture)
from tests.unit.support import declare_reactor, one_node_graph, pipeline, wait_until


async def _forever() -> None:
    await asyncio.Event().wait()


async def test_a_task_that_raises_fails_its_component_with_the_cause_logged():
    supervisor = Supervisor()
    told: list[ComponentFailure] = []
    supervisor.add_listener(told.append)

    async def boom() -> None:
        raise ValueError("fetch loop broke")

    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(boom())
        supervisor.supervise(task, "kafka-source")
        await wait_until(lambda: bool(told))
    assert [f.component for f in told] == ["kafka-source"]
    assert told[0].reason == "ValueError: fetch loop broke"
    (line,) = [e for e in logs if e["event"] == "component failed"]
    assert line["component"] == "kafka-source" and line["log_level"] == "error"
    assert isinstance(line["exc_info"], ValueError)
    assert supervisor.health()["kafka-source"]["reason"] == "ValueError: fetch loop broke"


async def test_a_task_that_ends_quietly_while_running_is_a_failure_but_not_while_stopping():
    supervisor = Supervisor()

    async def quiet() -> None:
        return None

    running = asyncio.create_task(quiet())
    supervisor.supervise(running, "reactor:rx")
    await running
    await asyncio.sleep(0)
    assert supervisor.failures["reactor:rx"].reason == "task ended while running"

    other = Supervisor()
    stopping = asyncio.create_task(quiet())
    cancelled = asyncio.create_task(_forever())
    other.supervise(stopping, "a")
    other.supervise(cancelled, "b")
    await asyncio.sleep(0)
    other.stopping = True
    cancelled.cancel()
    await asyncio.gather(stopping, cancelled, return_exceptions=True)
    await asyncio.sleep(0)
    assert other.failures == {}


async def test_a_task_cancelled_while_running_is_a_failure():
    supervisor = Supervisor()
    task = asyncio.create_task(_forever())
    supervisor.supervise(task, "http-api")
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await asyncio.sleep(0)
    assert supervisor.failures["http-api"].reason == "task cancelled while running"


async def test_a_task_supervised_twice_is_reported_once():
    supervisor = Supervisor()
    told: list[ComponentFailure] = []
    supervisor.add_listener(told.append)

    async def boom() -> None:
        raise RuntimeError("x")

    task = asyncio.create_task(boom())
    supervisor.supervise(task, "kafka-source")
    supervisor.supervise(task, "KafkaSource:group")
    await asyncio.gather(task, return_exceptions=True)
    await asyncio.sleep(0)
    assert [f.component for f in told] == ["kafka-source"]


async def test_fail_from_another_thread_reaches_listeners_on_the_loop():
    supervisor = Supervisor()
    supervisor.bind(asyncio.get_running_loop())
    seen: list[tuple[str, int]] = []
    supervisor.add_listener(lambda f: seen.append((f.component, threading.get_ident())))
    thread = threading.Thread(target=supervisor.fail, args=("sink:out", "fenced producer"))
    thread.start()
    thread.join()
    await wait_until(lambda: bool(seen))
    assert seen == [("sink:out", threading.get_ident())]
    assert supervisor.failures["sink:out"].reason == "fenced producer"


async def test_the_runtime_supervises_runner_tasks_and_health_shows_the_failure():
    @polling_accumulator(name="p", interval="10ms")
    def poll() -> int:
        return 1

    declare_reactor("rx", ["p"])
    one_node_graph("g", "rx", ["p"], lambda p: p)
    async with Runtime(graphs=["g"]) as runtime:
        app = create_app(runtime)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            ok = await client.get("/v1/health/ready")
            assert ok.status_code == 200 and ok.json()["ready"] is True
            runtime.accumulators["p"]._task.cancel()  # the poll loop dies under the runtime
            await wait_until(lambda: bool(runtime.failures))
            failed = await client.get("/v1/health/ready")
        health = runtime.health()
    assert failed.status_code == 503
    assert failed.json()["failures"]["accumulator:p"]["reason"] == "task cancelled while running"
    assert health["status"] == "failed" and "accumulator:p" in health["failures"]


async def test_a_halted_reactor_is_a_failed_component():
    def bad(a):
        raise RuntimeError("fatal")

    pipeline(["a"], bad, on_error="stop")
    async with Runtime(graphs=["g"]) as runtime:
        await runtime.push("a", 1)
        await wait_until(lambda: "reactor:rx" in runtime.failures)
        assert not runtime.ready()
    assert "fatal" in runtime.failures["reactor:rx"].reason


async def test_a_clean_stop_fails_nothing():
    pipeline(["a"])
    async with Runtime(graphs=["g"]) as runtime:
        await runtime.push("a", 1)
        await runtime.wait_idle()
    await asyncio.sleep(0)
    assert runtime.failures == {} and runtime.status() == "stopped"


@pytest.mark.parametrize("how", ["task", "fail"])
async def test_a_worker_stops_with_exit_1_when_a_component_fails(
    tmp_path: Path,
    mod: str,  # noqa: F811
    how: str,
) -> None:
    file = write(
        tmp_path,
        "w.toml",
        base(mod)
        + """
        [worker]
        http = { enabled = false }
        """,
    )
    worker = Worker(load_config([file], environ={}), install_signals=False)
    running = asyncio.create_task(worker.run())
    await wait_until(lambda: worker.runtime is not None and worker.runtime.ready(), timeout=20)
    assert worker.runtime is not None
    with structlog.testing.capture_logs() as logs:
        if how == "task":
            worker.runtime.reactors["rx"]._task.cancel()
        else:
            await asyncio.to_thread(worker.runtime.fail, "sink:out", "fatal: producer fenced")
        code = await asyncio.wait_for(running, 30)
    assert code == 1
    events = [e["event"] for e in logs]
    assert "component failed" in events and "stopping the worker: a component failed" in events
    assert [e["exit_code"] for e in logs if e["event"] == "worker stopped"] == [1]


async def test_a_fatal_kafka_sink_error_stops_the_worker_with_exit_1(
    tmp_path: Path,
    mod: str,  # noqa: F811
) -> None:
    from confluent_kafka import KafkaError

    file = write(
        tmp_path,
        "k.toml",
        base(mod, 'type = "kafka"\n    topic = "signals"')
        + """
        [worker]
        bootstrap_servers = "127.0.0.1:9"
        drain_timeout = "10s"
        http = { enabled = false }
        state_store = { enabled = false }
        """,
    )
    worker = Worker(load_config([file], environ={}), install_signals=False)
    worker.build()
    sink = worker.sinks["out"]
    # Producer closes wait at most a fifth of drain_timeout: the final commit always fits.
    assert sink.close_timeout == 2.0 and worker.kafka_dead_letters.close_timeout == 2.0
    running = asyncio.create_task(worker.run())
    await wait_until(lambda: worker.runtime is not None and worker.runtime.ready(), timeout=20)
    with structlog.testing.capture_logs() as logs:
        fenced = KafkaError(KafkaError._FENCED, "idempotent producer fenced", fatal=True)
        await asyncio.to_thread(sink.producer.errors, fenced)  # as librdkafka's poll thread
        code = await asyncio.wait_for(running, 30)
    assert code == 1
    (failed,) = [e for e in logs if e["event"] == "component failed"]
    assert failed["component"] == "sink:out" and "fenced" in failed["reason"]


async def test_a_worker_that_fails_to_start_reports_no_component_failure(
    tmp_path: Path,
    mod: str,  # noqa: F811
) -> None:
    file = write(
        tmp_path,
        "h.toml",
        base(mod)
        + """
        [worker]
        http = { port = 0 }
        state_store = { enabled = false }
        """,
    )
    worker = Worker(load_config([file], environ={}), install_signals=False)
    runtime = worker.build()

    async def broken_start() -> None:
        raise RuntimeError("cannot start")

    runtime.start = broken_start  # type: ignore[method-assign]
    with structlog.testing.capture_logs() as logs:
        assert await worker.run() == 1
    assert [e["event"] for e in logs if e["event"] == "component failed"] == []
    assert runtime.failures == {}
