pytest_plugins = ["tests.fixtures.kafka_broker", "tests.fixtures.postgres_server"]

# -- registry isolation -------------------------------------------------------------------
import os  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

import headrace.accumulators.registry  # noqa: E402
import headrace.engine.graph.registry  # noqa: E402
import headrace.reactors.declaration  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_registries():
    """Snapshot the process-global accumulator, reactor and graph registries; restore after.

    Declarations a test makes (decorators, builders, loads and unloads) do not leak into
    the next test. Tests that need an example module's declarations reload it.
    """
    accumulators_before = dict(headrace.accumulators.registry._accumulators)
    reactors_before = dict(headrace.reactors.declaration._reactors)
    bindings_before = {
        name: set(graphs) for name, graphs in headrace.reactors.declaration._bindings.items()
    }
    graphs_before = dict(headrace.engine.graph.registry._graphs)
    yield
    for registry, snapshot in (
        (headrace.accumulators.registry._accumulators, accumulators_before),
        (headrace.reactors.declaration._reactors, reactors_before),
        (headrace.reactors.declaration._bindings, bindings_before),
        (headrace.engine.graph.registry._graphs, graphs_before),
    ):
        registry.clear()
        registry.update(snapshot)


# -- logging: the whole suite runs with the worker's JSON or console configuration -----------

LOG_FORMAT_ENV = "HEADRACE_TEST_LOG_FORMAT"


class _CurrentStdout:
    """Writes to whatever ``sys.stdout`` is now (pytest swaps it per test for capture)."""

    def write(self, text: str) -> int:
        return sys.stdout.write(text)

    def flush(self) -> None:
        sys.stdout.flush()

    def isatty(self) -> bool:
        return False


def _test_log_format() -> str | None:
    fmt = os.environ.get(LOG_FORMAT_ENV, "").strip().lower() or None
    if fmt not in (None, "json", "console"):
        raise pytest.UsageError(f"{LOG_FORMAT_ENV} must be json or console, got {fmt!r}")
    return fmt


def pytest_report_header() -> str:
    fmt = _test_log_format()
    return f"headrace logs: {fmt or 'structlog defaults'} ({LOG_FORMAT_ENV})"


@pytest.fixture(autouse=True)
def _worker_logging():
    """With ``HEADRACE_TEST_LOG_FORMAT=json|console`` every test logs through the worker's
    configuration (debug level, so every call renders) and fails if logging had to fall
    back (a field that did not render, a processor that raised)."""
    fmt = _test_log_format()
    if fmt is None:
        yield
        return
    from headrace.engine.ops.logging import LOG_FAILURES, configure_logging

    configure_logging("debug", fmt, stream=_CurrentStdout())  # type: ignore[arg-type]
    before = LOG_FAILURES.count
    yield
    if LOG_FAILURES.count != before:
        pytest.fail(
            f"{LOG_FAILURES.count - before} log line(s) needed the fallback under {fmt} "
            f"logs; last: {LOG_FAILURES.last}"
        )
