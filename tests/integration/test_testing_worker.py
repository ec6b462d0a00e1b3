"""``headrace_worker`` of the testing toolkit: the in-process variant against the real
broker, and a worker that cannot start reported with its exit code and output."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from headrace.registry import default_registry
from headrace.testing import HeadraceWorker, InProcessWorker, WorkerError
from headrace.testing.kafka import partitions_of
from tests.fixtures import REPO_ROOT
from tests.integration.test_worker_cli import NODES, passthrough_config

USER_PROJECT = REPO_ROOT / "examples" / "user_project"


@pytest.mark.kafka
def test_in_process_worker_fires_serves_http_and_stops_cleanly(
    kafka_topic: Callable[..., str],
    headrace_worker: Callable[..., Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.syspath_prepend(str(USER_PROJECT))  # price_alerts, as if installed
    prices, alerts = kafka_topic(partitions=2), kafka_topic()
    assert prices != alerts and prices.startswith("test_in_process_worker_fires")
    worker = headrace_worker(
        USER_PROJECT / "price_alerts.toml",
        env={
            "PRICES_TOPIC": prices,
            "ALERTS_TOPIC": alerts,
            "PRICE_ALERTS_GROUP": f"in-process-{prices}",
            "HEADRACE_STATE_STORE_URL": f"sqlite:///{tmp_path / 'state.db'}",
        },
        in_process=True,
    )
    worker.ready()
    assert partitions_of(worker.bootstrap, prices) == [0, 1]
    assert default_registry.find_graph("price_alerts") is not None  # this process's registry
    worker.produce_json(prices, [{"symbol": "ACME", "price": p} for p in (1.0, 150.0, 99.0)])
    outputs = worker.wait_for_outputs(alerts, 3)
    assert sorted(o["alert"]["alert"] for o in outputs) == [False, False, True]
    assert worker.health()["price_alerts"]["fire_count"] == 3
    assert "headrace_executions_total" in worker.metrics()
    assert worker.stop() == 0


@pytest.mark.kafka
def test_in_process_workers_one_after_another_each_load_the_config_modules(
    kafka_bootstrap: str,
    kafka_topic: Callable[..., str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The registry is restored after each worker; ``forget_modules`` lets the next one
    import ``price_alerts.graph`` again, so its graph is declared again."""
    monkeypatch.syspath_prepend(str(USER_PROJECT))
    prices, alerts = kafka_topic(), kafka_topic()
    env = {
        "PRICES_TOPIC": prices,
        "ALERTS_TOPIC": alerts,
        "PRICE_ALERTS_GROUP": f"in-process-twice-{prices}",
        "HEADRACE_STATE_STORE_URL": f"sqlite:///{tmp_path / 'state.db'}",
    }
    for run in (1, 2):
        with default_registry.isolated():
            worker = InProcessWorker(
                [USER_PROJECT / "price_alerts.toml"], env=env, bootstrap=kafka_bootstrap
            )
            worker.ready()
            worker.produce_json(prices, [{"symbol": "ACME", "price": 100.0 + run}])
            assert len(worker.wait_for_outputs(alerts, run)) == run
            assert worker.stop() == 0
        assert default_registry.find_graph("price_alerts") is None
        assert worker.forget_modules() == ["price_alerts.graph"]


def test_a_worker_that_cannot_start_reports_its_exit_code_and_output(
    headrace_worker: Callable[..., Any], tmp_path: Path
) -> None:
    config = tmp_path / "broken.toml"
    config.write_text('modules = ["no_such_module_here"]\n')
    worker = headrace_worker(config, kafka=False)
    with pytest.raises(WorkerError) as raised:
        worker.ready(timeout=60)
    message = str(raised.value)
    assert "worker exited with 2 before logging 'worker ready'" in message
    assert "no_such_module_here" in message
    assert worker.stop() == 2


def test_worker_signals_log_copies_and_the_default_log_format(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``send`` freezes (SIGSTOP) and thaws (SIGCONT) the worker without waiting;
    ``stdout_path``/``stderr_path`` copy the streams as they arrive; ``log_format=None``
    and an env value of ``None`` (unset) leave the format to the worker: JSON off a
    terminal, although this process has ``HEADRACE_LOG_FORMAT=console``."""
    (tmp_path / "hr_worker_nodes.py").write_text(NODES)
    config = passthrough_config(tmp_path, "slow")
    monkeypatch.setenv("HEADRACE_LOG_FORMAT", "console")
    out, err = tmp_path / "worker.out", tmp_path / "worker.err"
    worker = HeadraceWorker(
        [config],
        env={"HEADRACE_LOG_FORMAT": None},
        log_format=None,
        stdout_path=out,
        stderr_path=err,
        die_with_parent=True,
    )
    try:
        base = worker.ready()
        worker.send(signal.SIGSTOP)
        with pytest.raises(httpx.TimeoutException):  # frozen: the API does not answer
            httpx.get(f"{base}/v1/health/live", timeout=1.0)
        worker.send(signal.SIGCONT)
        assert httpx.get(f"{base}/v1/health/live", timeout=10).is_success
        assert worker.stop() == 0, worker.output()
    finally:
        worker.kill()
    copied = out.read_text().splitlines()
    assert copied == worker.raw and len(copied) >= 2
    assert [json.loads(line)["event"] for line in copied] == [e["event"] for e in worker.lines]
    assert worker.events("worker ready") and worker.events("worker stopped")
    assert err.read_text().splitlines() == worker.stderr
    worker.send(signal.SIGKILL)  # exited already: nothing is sent, nothing raises
    assert worker.returncode == 0
