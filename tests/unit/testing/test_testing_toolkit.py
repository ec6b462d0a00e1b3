"""``headrace.testing`` without a broker: broker selection (with fakes), the testcontainers
path (with a fake module), the fake clock on polling and batch accumulators, the graph
helpers, and the packaged local broker files."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from headrace import ComputationGraphBuilder, batch_accumulator, node, polling_accumulator
from headrace.testing import FakeClock, MemoryRuntime, run_snapshots, run_snapshots_async
from headrace.testing.infra import ScriptError, in_ci
from headrace.testing.kafka import (
    DEFAULT_IMAGE,
    LOCAL_KAFKA_DIR,
    Broker,
    NoBrokerError,
    choose_broker,
    start_testcontainer,
)
from tests.unit.support import declare_reactor, one_node_graph, pipeline

REPO = Path(__file__).resolve().parents[3]


# -- broker selection ------------------------------------------------------------------------
class Calls:
    """Fakes for every way of getting a broker; records which were tried."""

    def __init__(
        self,
        *,
        answers: str | None = None,
        docker: bool = False,
        container: BaseException | None = None,
        local: BaseException | None = None,
    ) -> None:
        self.tried: list[str] = []
        self._answers, self._docker = answers, docker
        self._container, self._local = container, local

    def answers(self, bootstrap: str) -> str | None:
        self.tried.append(f"answers {bootstrap}")
        return self._answers

    def docker_answers(self) -> bool:
        self.tried.append("docker")
        return self._docker

    def start_container(self, image: str) -> Broker:
        self.tried.append(f"container {image}")
        if self._container is not None:
            raise self._container
        return Broker("container:9092", "testcontainers", lambda: None)

    def start_local(self) -> Broker:
        self.tried.append("local")
        if self._local is not None:
            raise self._local
        return Broker("local:9092", "local", lambda: None)

    def choose(self, environ: dict[str, str]) -> Broker:
        return choose_broker(
            environ,
            answers=self.answers,
            docker_answers=self.docker_answers,
            start_container=self.start_container,
            start_local=self.start_local,
        )


def test_kafka_bootstrap_servers_comes_first_and_nothing_is_started() -> None:
    calls = Calls(docker=True)
    broker = calls.choose({"KAFKA_BOOTSTRAP_SERVERS": " h:1 "})
    assert (broker.bootstrap, broker.origin) == ("h:1", "KAFKA_BOOTSTRAP_SERVERS")
    assert calls.tried == ["answers h:1"]


def test_a_configured_broker_that_does_not_answer_is_an_error_not_a_fallback() -> None:
    calls = Calls(answers="no metadata from h:1: timed out", docker=True)
    with pytest.raises(NoBrokerError, match="KAFKA_BOOTSTRAP_SERVERS is set but no metadata"):
        calls.choose({"KAFKA_BOOTSTRAP_SERVERS": "h:1"})
    assert calls.tried == ["answers h:1"]


def test_testcontainers_when_a_docker_engine_answers() -> None:
    calls = Calls(docker=True)
    assert calls.choose({}).bootstrap == "container:9092"
    assert calls.tried == ["docker", f"container {DEFAULT_IMAGE}"]
    calls = Calls(docker=True)
    calls.choose({"HEADRACE_KAFKA_IMAGE": "confluentinc/cp-kafka:7.7.1"})
    assert calls.tried[-1] == "container confluentinc/cp-kafka:7.7.1"


def test_the_local_broker_without_docker() -> None:
    calls = Calls(docker=False)
    assert calls.choose({}).bootstrap == "local:9092"
    assert calls.tried == ["docker", "local"]


@pytest.mark.parametrize(
    ("error", "note"),
    [
        (ImportError("No module named 'testcontainers'"), "testcontainers is not installed"),
        (RuntimeError("pull denied"), "KafkaContainer(confluentinc/cp-kafka:7.6.0) failed"),
    ],
)
def test_a_failing_container_falls_back_to_the_local_broker(error: Exception, note: str) -> None:
    calls = Calls(docker=True, container=error)
    assert calls.choose({}).bootstrap == "local:9092"
    calls = Calls(docker=True, container=error, local=ScriptError("java not found"))
    with pytest.raises(NoBrokerError) as raised:
        calls.choose({})
    assert note in str(raised.value)
    assert "java not found" in str(raised.value)


def test_no_broker_at_all_names_every_reason() -> None:
    calls = Calls(docker=False, local=ScriptError("kafka-local.sh fetch exited 1: mvn not found"))
    with pytest.raises(NoBrokerError) as raised:
        calls.choose({})
    assert str(raised.value) == (
        "no Kafka broker: no Docker engine answers; local broker (kafka-local.sh, Java 17 + "
        "Maven) failed: kafka-local.sh fetch exited 1: mvn not found"
    )


class FakeContainer:
    started: list[FakeContainer] = []

    def __init__(self, image: str, fail_bootstrap: bool = False) -> None:
        self.image, self.kraft, self.running = image, False, False
        self.fail_bootstrap = fail_bootstrap

    def with_kraft(self) -> FakeContainer:
        self.kraft = True
        return self

    def start(self) -> FakeContainer:
        self.running = True
        FakeContainer.started.append(self)
        return self

    def get_bootstrap_server(self) -> str:
        if self.fail_bootstrap:
            raise RuntimeError("no mapped port")
        return "localhost:32771"

    def stop(self) -> None:
        self.running = False


def test_start_testcontainer_runs_a_kraft_kafka_container(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("testcontainers.kafka")
    module.KafkaContainer = FakeContainer  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "testcontainers", types.ModuleType("testcontainers"))
    monkeypatch.setitem(sys.modules, "testcontainers.kafka", module)
    FakeContainer.started.clear()

    broker = start_testcontainer("confluentinc/cp-kafka:7.6.0")
    (container,) = FakeContainer.started
    assert container.kraft and container.running
    assert container.image == "confluentinc/cp-kafka:7.6.0"
    assert broker.bootstrap == "localhost:32771"
    broker.stop()
    assert not container.running

    module.KafkaContainer = lambda image: FakeContainer(image, fail_bootstrap=True)  # type: ignore[attr-defined]
    with pytest.raises(RuntimeError, match="no mapped port"):
        start_testcontainer("img")
    assert not FakeContainer.started[-1].running  # stopped, not leaked


def test_start_testcontainer_without_testcontainers_is_an_import_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "testcontainers", None)
    monkeypatch.setitem(sys.modules, "testcontainers.kafka", None)
    with pytest.raises(ImportError):
        start_testcontainer()


@pytest.mark.parametrize(("value", "expected"), [("true", True), ("1", True), ("", False)])
def test_in_ci(value: str, expected: bool) -> None:
    assert in_ci({"CI": value}) is expected


# -- the packaged local broker ---------------------------------------------------------------
def test_the_local_broker_files_ship_in_the_package_and_docker_local_kafka_delegates(
    tmp_path: Path,
) -> None:
    shipped = {p.name for p in LOCAL_KAFKA_DIR.iterdir()}
    assert shipped == {"kafka-local.sh", "pom.xml", "log4j2.xml", "server.properties.template"}
    assert LOCAL_KAFKA_DIR.parent == REPO / "headrace" / "testing"
    # one copy: docker/local-kafka holds only the wrapper, which runs the packaged script
    assert {p.name for p in (REPO / "docker" / "local-kafka").iterdir()} == {"kafka-local.sh"}
    out = subprocess.run(
        ["bash", str(REPO / "docker" / "local-kafka" / "kafka-local.sh"), "bogus"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 2
    assert "headrace/testing/local-kafka/kafka-local.sh" in out.stderr  # the usage line's $0


# -- the fake clock --------------------------------------------------------------------------
async def test_fake_clock_drives_a_polling_accumulator() -> None:
    polls: list[int] = []

    @polling_accumulator(name="ticker", interval="10s")
    async def ticker() -> int:
        polls.append(len(polls))
        return len(polls)

    declare_reactor("tick_rx", ["ticker"], strategy="sequential")
    one_node_graph("ticks", "tick_rx", ["ticker"], lambda ticker: ticker)
    clock = FakeClock()
    async with MemoryRuntime(graphs=["ticks"], clock=clock) as rt:
        await clock.wait_for_sleepers(1)
        assert await rt.wait_for(1, graph="ticks") == [{"run": 1}]
        await clock.advance(9.5)
        assert len(polls) == 1  # not due yet
        await clock.advance(30.5)  # due at 10, 20, 30 and 40
        await rt.wait_for(5, graph="ticks")
        assert [out["run"] for out in rt.outputs("ticks")] == [1, 2, 3, 4, 5]
        assert clock.monotonic() == 40.0


async def test_fake_clock_drives_a_batch_flush_interval() -> None:
    @batch_accumulator(name="fills", flush_interval="5s")
    def fills(events: list[dict[str, Any]]) -> int:
        return sum(e["qty"] for e in events)

    declare_reactor("fill_rx", ["fills"], strategy="sequential")
    one_node_graph("volume", "fill_rx", ["fills"], lambda fills: fills)
    clock = FakeClock()
    async with MemoryRuntime(graphs=["volume"], clock=clock) as rt:
        await rt.push_many("fills", [{"qty": 1}, {"qty": 2}, {"qty": 3}])
        await clock.wait_for_sleepers(1)
        await asyncio.sleep(0.05)
        assert rt.outputs() == []  # buffered until the interval passes
        await clock.advance(5)
        assert await rt.wait_for(1) == [{"run": 6}]
        await rt.push("fills", {"qty": 10})
        await clock.advance(5)
        assert await rt.wait_for(2) == [{"run": 6}, {"run": 10}]


async def test_fake_clock_rejects_going_backwards() -> None:
    with pytest.raises(ValueError, match="backwards"):
        await FakeClock().advance(-1)


# -- graph helpers ---------------------------------------------------------------------------
def _spread_graph() -> ComputationGraphBuilder:
    declare_reactor("book_rx", ["book"])
    with ComputationGraphBuilder(
        "spread", reactor="book_rx", graph={"mid": {"inputs": ["book"], "next": "fmt"}, "fmt": {}}
    ) as builder:

        @node
        def mid(book: dict[str, float]) -> float:
            return (book["bid"] + book["ask"]) / 2

        @node
        async def fmt(value: float) -> str:
            return f"{value:.1f}"

    return builder


def test_run_snapshots_runs_the_graph_once_per_snapshot() -> None:
    builder = _spread_graph()
    books = [{"book": {"bid": 1, "ask": 2}}, {"book": {"bid": 3, "ask": 4}}]
    results = run_snapshots(builder, books)
    assert results == [{"fmt": "1.5"}, {"fmt": "3.5"}]
    with pytest.raises(RuntimeError, match="not built yet"):
        run_snapshots(
            ComputationGraphBuilder("x", reactor="book_rx", graph={"n": {"inputs": ["book"]}}),
            books,
        )


async def test_run_snapshots_async_inside_a_loop() -> None:
    assert await run_snapshots_async(_spread_graph(), [{"book": {"bid": 0, "ask": 4}}]) == [
        {"fmt": "2.0"}
    ]


async def test_memory_runtime_push_wait_for_and_dead_letters() -> None:
    def run(**inputs: Any) -> Any:
        if inputs["a"] < 0:
            raise ValueError("negative")
        return inputs["a"] * 2

    pipeline(["a"], run, graph="double", strategy="sequential")
    async with MemoryRuntime(graphs=["double"]) as rt:
        await rt.push_many("a", [1, 2, -1, 3])
        assert await rt.wait_for(3, graph="double") == [{"run": 2}, {"run": 4}, {"run": 6}]
        (letter,) = await rt.wait_for_dead_letters(1)
        assert letter.graph == "double" and "negative" in letter.reason
        with pytest.raises(
            TimeoutError, match=r"expected 4 results of graph 'double' in 0.05s, got 3"
        ):
            await rt.wait_for(4, graph="double", timeout=0.05)
