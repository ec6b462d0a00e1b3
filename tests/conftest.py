pytest_plugins = ["tests.fixtures.kafka_broker", "tests.fixtures.postgres_server"]

# -- registry isolation -------------------------------------------------------------------
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
