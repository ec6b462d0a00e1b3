pytest_plugins = ["tests.fixtures.kafka_broker", "tests.fixtures.postgres_server"]

# -- registry isolation -------------------------------------------------------------------
import pytest  # noqa: E402

from headrace.registry import default_registry  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_registries():
    """Declarations a test makes (decorators, builders, loads and unloads) do not leak into
    the next test. Tests that need an example module's declarations reload it.
    """
    with default_registry.isolated():
        yield
