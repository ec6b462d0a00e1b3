"""Pin the public names of ``headrace`` so that changing them is a deliberate act."""

from __future__ import annotations

import subprocess
import sys

import headrace

PUBLIC = [
    "AccumulatorInputError",
    "BaseSink",
    "CallbackSink",
    "ChannelClosedError",
    "ComputationGraph",
    "ComputationGraphBuilder",
    "DeadLetter",
    "GraphDefinitionError",
    "GraphHalted",
    "KafkaDeadLetters",
    "KafkaSink",
    "KafkaSource",
    "LogSink",
    "MemoryDeadLetters",
    "MemorySink",
    "NodeExecutionError",
    "ReactorInUseError",
    "Registry",
    "RetryPolicy",
    "RoutingError",
    "Runtime",
    "RuntimeConfigError",
    "Sink",
    "__version__",
    "batch_accumulator",
    "default_registry",
    "node",
    "passthrough_accumulator",
    "polling_accumulator",
    "reactor",
    "stream_accumulator",
]


def test_all_is_sorted_and_pinned() -> None:
    assert headrace.__all__ == sorted(headrace.__all__)
    assert headrace.__all__ == PUBLIC


def test_every_public_name_resolves() -> None:
    for name in headrace.__all__:
        assert getattr(headrace, name) is not None, name


def test_import_headrace_does_not_load_kafka_or_the_old_top_level_names() -> None:
    code = (
        "import sys, headrace, headrace.engine, headrace.engine.worker;"
        "bad = [m for m in sys.modules if m == 'confluent_kafka' or "
        "m.split('.')[0] in ('engine', 'connectors', 'accumulators', 'reactors')];"
        "print(bad)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/"
    )
    assert out.stdout.strip() == "[]"


def test_python_dash_m_headrace_is_the_cli() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "headrace", "--help"], capture_output=True, text=True, cwd="/"
    )
    assert out.returncode == 0, out.stderr
    assert "run" in out.stdout and "validate" in out.stdout
