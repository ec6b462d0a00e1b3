"""The ``headrace`` command line, in process: help, validate, graphs, exit codes."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from headrace.engine.cli import EXIT_CONFIG, EXIT_OK, main
from tests.unit.support import imports_restored

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
PRICE_SIGNAL = str(EXAMPLES / "price_signal.toml")


@pytest.fixture(autouse=True)
def _restore_logging_and_imports() -> Iterator[None]:
    """The commands configure logging on the captured streams and import modules."""
    handlers = list(logging.getLogger().handlers)
    level = logging.getLogger().level
    with imports_restored():
        yield
    structlog.reset_defaults()
    root = logging.getLogger()
    root.handlers[:] = handlers
    root.setLevel(level)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_help_explains_every_command_and_the_exit_codes(capsys: pytest.CaptureFixture[str]):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for word in ("run", "validate", "graphs", "exit codes", "0 ", "1 ", "2 ", "${VAR}"):
        assert word in out
    for command, words in (
        ("run", ("SIGTERM", "drains", "commit", "--log-level", "second signal")),
        ("validate", ("FILE: FIELD: REASON", "exits 2")),
        ("graphs", ("--mermaid", "--graph")),
    ):
        code, out, _ = run(capsys, command, "--help")
        assert code == 0
        for word in words:
            assert word in out, (command, word)


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys)
    assert code == EXIT_CONFIG and "COMMAND" in err
    code, _, err = run(capsys, "validate")
    assert code == EXIT_CONFIG and "FILE" in err


def test_validate_ok(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "validate", PRICE_SIGNAL)
    assert code == EXIT_OK, err
    assert out.startswith("ok: 1 file; graphs: price_signal; reactors: price_signal_rx")
    code, out, _ = run(capsys, "validate", "-q", PRICE_SIGNAL)
    assert (code, out) == (EXIT_OK, "")


def test_validate_prints_every_problem_as_file_field_reason(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        'modules = ["examples.price_signal"]\n'
        "[worker]\n"
        'bootstrap_servers = "${HEADRACE_TEST_UNSET_VAR}"\n'
        'commit_interval = "soon"\n'
        "[graphs.price_signal]\n"
        'sinks = ["nowhere"]\n'
    )
    code, out, err = run(capsys, "validate", str(bad))
    assert code == EXIT_CONFIG
    assert out == ""
    lines = err.strip().splitlines()
    assert f"{bad}: worker.bootstrap_servers: environment variable HEADRACE_TEST_UNSET_VAR" in err
    assert f"{bad}: worker.commit_interval: invalid duration 'soon'" in err
    assert f"{bad}: graphs.price_signal.sinks[0]: unknown sink 'nowhere'" in err
    assert lines[-1] == "headrace: 3 problems in the config; nothing was started"


def test_run_with_a_bad_config_exits_2_before_starting(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[worker]\nport = 1\n")
    code, _, err = run(capsys, "run", str(bad))
    assert code == EXIT_CONFIG
    assert f"{bad}: worker.port: unknown key" in err
    code, _, err = run(capsys, "run", str(tmp_path / "missing.toml"))
    assert code == EXIT_CONFIG and "cannot read" in err


def test_graphs_lists_and_draws(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "graphs", PRICE_SIGNAL)
    assert code == EXIT_OK, err
    assert "accumulators:\n  orderbook: stream topic=price.orderbook" in out
    assert "price_signal_rx: when_any, latest; watches orderbook; graphs price_signal" in out
    assert "price_signal: reactor price_signal_rx; sinks signals, log; retry 3x" in out
    assert "graph price_signal\n  [orderbook] -> compute_signal\n  compute_signal -> emit" in out


def test_graphs_mermaid_for_one_graph(capsys: pytest.CaptureFixture[str]) -> None:
    files = [str(EXAMPLES / "market_maker.toml")]
    code, out, err = run(capsys, "graphs", *files, "--mermaid", "--graph", "market_maker_strict")
    assert code == EXIT_OK, err
    assert "accumulators:" not in out
    assert "%% graph market_maker_strict (reactor market_maker_strict_rx)" in out
    assert "flowchart LR" in out
    assert "decision -- Signal --> signal_handler" in out
    assert "decision -- NoAction --> audit_logger" in out
    assert "market_maker_reactor" not in out


def test_graphs_unknown_graph_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "graphs", PRICE_SIGNAL, "--graph", "nope")
    assert code == EXIT_CONFIG
    assert "unknown graph 'nope' (graphs: price_signal)" in err


# -- logging -----------------------------------------------------------------------------------


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_logs_are_json_off_a_terminal_with_secrets_masked() -> None:
    from headrace.engine.ops.logging import configure_logging

    out = io.StringIO()
    assert configure_logging("info", "auto", stream=out) == ("info", "json")
    log = structlog.get_logger("test")
    log.debug("hidden")
    log.info(
        "graph result",
        graph="g",
        node="n",
        topic="t",
        partition=0,
        offset=7,
        token="s3cret",
        url="postgresql+psycopg://app:pw@db/app",
        settings={"sasl.password": "pw2", "client.id": "c"},
    )
    logging.getLogger("uvicorn.error").warning("from the standard library")
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert list(first)[:3] == ["timestamp", "level", "event"]
    assert first["event"] == "graph result" and first["level"] == "info"
    assert (first["graph"], first["node"], first["topic"], first["partition"], first["offset"]) == (
        "g",
        "n",
        "t",
        0,
        7,
    )
    assert first["token"] == "***"
    assert first["url"] == "postgresql+psycopg://app:***@db/app"
    assert first["settings"] == {"sasl.password": "***", "client.id": "c"}
    assert "s3cret" not in out.getvalue() and "pw2" not in out.getvalue()
    assert second["event"] == "from the standard library" and second["level"] == "warning"


def test_logs_are_readable_on_a_terminal_and_levels_filter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from headrace.engine.ops.logging import configure_logging

    out = Terminal()
    monkeypatch.setenv("HEADRACE_LOG_LEVEL", "WARNING")
    assert configure_logging(None, None, stream=out) == ("warning", "console")
    structlog.get_logger().info("not shown")
    structlog.get_logger().warning("shown", graph="g")
    text = re.sub(r"\x1b\[[0-9;]*m", "", out.getvalue())  # colors on a terminal
    assert "not shown" not in text
    assert "shown" in text and "graph=g" in text and not text.lstrip().startswith("{")
    with pytest.raises(ValueError, match="log level must be one of"):
        configure_logging("loud", "json", stream=out)
