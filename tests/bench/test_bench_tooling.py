"""The benchmark tooling's own logic, without a broker: output verification, the peer
requirements file, idempotent peer venvs, the report and the profile's layer attribution."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import orjson
import pytest

from tests.bench import peer_venvs, profile
from tests.bench.peer_apps.pipeline import signal, valid
from tests.bench.peers import Result, expected_signal, report, verify


def outputs(ids: list[int], *, wrap: bool = False) -> list[bytes]:
    docs = [expected_signal(i) for i in ids]
    return [orjson.dumps({"mid_spread": d} if wrap else d) for d in docs]


def test_verify_accepts_exactly_n_correct_outputs_in_any_order_and_either_shape() -> None:
    verdict = verify(outputs([3, 1, 0, 2], wrap=True), 4)
    assert (verdict.outputs, verdict.duplicates, verdict.missing, verdict.wrong) == (4, 0, 0, 0)
    assert verify(outputs([0, 1, 2, 3]), 4).missing == 0


def test_verify_counts_duplicates_missing_and_wrong_values() -> None:
    values = outputs([0, 1, 1, 3])
    bad = expected_signal(2) | {"mid": 1.0}
    values.append(orjson.dumps(bad))
    values.append(b"not json")
    verdict = verify(values, 5)
    assert verdict.duplicates == 1
    assert verdict.missing == 2  # 2 (its one output is wrong) and 4 (never came)
    assert verdict.wrong == 2
    assert verdict.example.startswith('{"symbol"')


def test_the_pipeline_computes_what_verify_expects() -> None:
    from tests.bench.kafka_throughput import order_book

    book = orjson.loads(order_book(7))
    assert valid(book)
    assert signal(book) == expected_signal(7)
    assert not valid({**book, "b": "1.0"})
    assert not valid({**book, "symbol": None})


def test_requirements_sections_parse_and_the_shipped_file_pins_every_peer() -> None:
    text = "# c\n[a]\nx==1  # why\n\n[b]\ny[z]==2\n"
    assert peer_venvs.parse_requirements(text) == {"a": ["x==1"], "b": ["y[z]==2"]}
    with pytest.raises(ValueError, match="outside a \\[peer\\] section"):
        peer_venvs.parse_requirements("x==1\n")
    shipped = peer_venvs.parse_requirements(peer_venvs.REQUIREMENTS.read_text())
    for peer in ("quix", "bytewax", "faust", "profile"):
        assert shipped[peer], peer
        assert all("==" in line for line in shipped[peer]), shipped[peer]


def fake_runs(monkeypatch: pytest.MonkeyPatch, fail_install: bool = False) -> list[list[str]]:
    calls: list[list[str]] = []

    def run(command: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        calls.append(command)
        if command[1:3] == ["-m", "venv"]:
            python = Path(command[3]) / "bin" / "python"
            python.parent.mkdir(parents=True)
            python.touch()
        failed = fail_install and "install" in command
        out = "quixstreams==9.9\nother==1\n" if "freeze" in command else ""
        return subprocess.CompletedProcess(command, 1 if failed else 0, out, "no such dist")

    monkeypatch.setattr(peer_venvs, "_run", run)
    return calls


def test_a_peer_venv_is_made_once_and_remade_when_its_pins_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = fake_runs(monkeypatch)
    env = peer_venvs.ensure("quix", ["quixstreams==9.9"], tmp_path)
    assert env.versions == "quixstreams==9.9"
    assert len(calls) == 3  # venv, install, freeze
    again = peer_venvs.ensure("quix", ["quixstreams==9.9"], tmp_path)
    assert again == env and len(calls) == 3  # stamp matched: nothing run
    peer_venvs.ensure("quix", ["quixstreams==9.8"], tmp_path)
    assert len(calls) == 6
    stamp = json.loads((tmp_path / "quix" / peer_venvs.STAMP).read_text())
    assert stamp["requirements"] == ["quixstreams==9.8"]


def test_a_failed_install_is_reported_with_pips_reason_and_leaves_no_venv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_runs(monkeypatch, fail_install=True)
    with pytest.raises(peer_venvs.PeerUnavailable, match="no such dist"):
        peer_venvs.ensure("bytewax", ["bytewax==0"], tmp_path)
    assert not (tmp_path / "bytewax").exists()


def test_report_gives_medians_ratios_and_a_failed_system_with_its_reason() -> None:
    def ok(system: str, rate: float, cpu: float) -> Result:
        return Result(system, rate=rate, cpu_per_msg=cpu, peak_rss=2**20, committed="yes")

    results = {
        "raw": [ok("raw", 100_000, 2e-6)],
        "headrace": [ok("headrace", r, 40e-6) for r in (10_000, 30_000, 20_000)],
        "quix": [ok("quix", 10_000, 20e-6)],
        "bytewax": [Result("bytewax", error="not installed: pip said no\ndetail line")],
    }
    text = "\n".join(report(results, 3))
    assert "headrace      20,000       40.0" in text  # the median of three runs
    assert "bytewax    FAILED: not installed: pip said no" in text
    assert "    detail line" in text
    assert "Headrace/Quix msg/s: 2.00" in text
    assert "Headrace/Bytewax msg/s: n/a" in text
    assert "engine/raw msg/s: 0.20 (ceiling)" in text
    assert "CPU per message, Headrace/raw: 20.00 (ceiling)" in text


def test_a_run_with_duplicates_is_not_reported_correct() -> None:
    row = Result("quix", rate=1.0, cpu_per_msg=1e-6, outputs=11, duplicates=1, committed="yes")
    assert not row.correct
    assert "quix" in report({"quix": [row]}, 1)[1] and " NO " in report({"quix": [row]}, 1)[1]


RAW = [
    "thread (10): MainThread;<module> (headrace:6);run_worker (engine/worker.py:325);"
    "BaseEventLoop._run_once (asyncio/base_events.py:1922);"
    "KafkaSource._handle (connectors/kafka/source.py:367);loads (orjson.so) 5",
    "thread (10): MainThread;<module> (headrace:6);run_worker (engine/worker.py:325);"
    "BaseEventLoop._run_once (asyncio/base_events.py:1922);"
    "EpollSelector.select (selectors.py:468) 7",
    "thread (11): headrace-state-writer;Thread.run (threading.py:982);"
    "StateStore._write (engine/store/state_store.py:435);"
    "DefaultDialect.do_executemany (sqlalchemy/engine/default.py:1189) 3",
    "thread (10): MainThread;<module> (headrace:6);run_worker (engine/worker.py:325);"
    "BaseEventLoop._run_once (asyncio/base_events.py:1907) 2",
    "thread (12): sink-poll;DeliveryProducer._serve (connectors/kafka/producer.py:119);"
    "pthread_cond_timedwait (libc.so.6);0x7f (libc.so.6) 9",
]


def test_profile_samples_go_to_the_innermost_headrace_frame_and_waits_are_dropped(
    tmp_path: Path,
) -> None:
    stacks = tmp_path / "raw.txt"
    stacks.write_text("\n".join(RAW) + "\n")
    samples, waits = profile.read_samples(stacks)
    assert waits == 7 + 9  # the epoll wait and the condition wait
    assert samples == {
        (10, "MainThread", "source: decode + route"): 5,  # orjson under _handle
        (11, "headrace-state-writer", "state store"): 3,  # sqlalchemy is not "engine/"
        (10, "MainThread", "event loop (asyncio scheduling, selector, no Headrace frame)"): 2,
    }
    assert profile.hot_lines(stacks)[0] == ("connectors/kafka/source.py:367 KafkaSource._handle", 5)


def test_the_headrace_worker_config_carries_the_shared_consumer_settings(tmp_path: Path) -> None:
    """--consumer-config reaches Headrace's worker as [worker.consumer]; none, no table."""
    import tomllib

    from headrace.engine.config.schema import WorkerConfig
    from tests.bench.peers import headrace_toml

    shared = {"fetch.queue.backoff.ms": 20}
    parsed = tomllib.loads(headrace_toml("b:9092", "in", "out", "g", tmp_path, shared))
    assert WorkerConfig(**parsed["worker"]).consumer_config()["fetch.queue.backoff.ms"] == 20
    assert (
        "consumer"
        not in tomllib.loads(headrace_toml("b", "in", "out", "g", tmp_path, {}))["worker"]
    )
