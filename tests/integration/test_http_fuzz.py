"""schemathesis against a running worker's own OpenAPI description (``headrace run``, JSON
logs, a token, no Kafka): no 5xx, every response as documented (status, content type,
schema, headers), 401 documented and enforced wherever a token is needed. Examples per
operation are bounded so the whole run stays short."""

from __future__ import annotations

import secrets
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation.modes import GenerationMode

from tests.integration.test_worker_cli import WorkerProcess

NODES = '''
"""Nodes of the fuzzed worker."""
from pydantic import BaseModel


class Order(BaseModel):
    id: int
    qty: int
    side: str


def record(ticks, orders):
    return {"seen": orders.id if orders is not None else None}
'''

CONFIG = """
modules = [{{ name = "hr_fuzz_nodes", path = "." }}]

[worker]
drain_timeout = "30s"
http = {{ port = 0, push_timeout = "1s" }}
state_store = {{ url = "sqlite:///{db}" }}

[accumulators.ticks]
kind = "passthrough"

[accumulators.orders]
kind = "passthrough"
model = "hr_fuzz_nodes:Order"
strict = true

[reactors.rx]
accumulators = ["ticks", "orders"]

[graphs.work]
module = "hr_fuzz_nodes"
reactor = "rx"
topology = {{ record = {{ inputs = ["ticks", "orders"] }} }}
sinks = ["history"]

[sinks.history]
type = "state_store"
"""

TOKEN = "fz-" + secrets.token_urlsafe(24)
AUTH = {"Authorization": f"Bearer {TOKEN}"}
EXAMPLES = 12


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[WorkerProcess, str]]:
    directory = tmp_path_factory.mktemp("http-fuzz")
    (directory / "hr_fuzz_nodes.py").write_text(NODES)
    config: Path = directory / "worker.toml"
    config.write_text(CONFIG.format(db=directory / "state.db"))
    worker = WorkerProcess([config], {"HEADRACE_TOKEN": TOKEN}, directory)
    try:
        yield worker, worker.ready()
        assert worker.stop(signal.SIGTERM) == 0, worker.output()
        errors = [line for line in worker.lines if line.get("level") in ("error", "critical")]
        assert not errors, errors[:3]
        assert not [line for line in worker.raw + worker.stderr if TOKEN in line]
    finally:
        worker.kill()


@pytest.fixture(scope="module")
def worker_schema(fuzzed: tuple[WorkerProcess, str]) -> schemathesis.BaseSchema:
    _, base = fuzzed
    return schemathesis.openapi.from_url(f"{base}/openapi.json", headers=AUTH, timeout=10)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_every_response_is_documented_and_no_5xx(
    worker_schema: schemathesis.BaseSchema, mode: GenerationMode
) -> None:
    """Every operation, ``EXAMPLES`` generated cases each (schemathesis' pytest plugin does
    not run under pytest 9, so the operations are driven here)."""
    failures: list[str] = []
    statuses: Counter[int] = Counter()
    operations = [result.ok() for result in worker_schema.get_all_operations()]
    assert len(operations) >= 17
    for operation in operations:
        if mode is GenerationMode.POSITIVE and operation.label == "POST /v1/packages":
            continue  # no schema describes a valid package archive: uploads have their own tests

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def run(case: schemathesis.Case) -> None:
            statuses[case.call_and_validate(headers=AUTH, timeout=10).status_code] += 1

        try:
            run()
        except Unsatisfiable:  # nothing to get wrong (no parameters, no body): nothing to send
            assert mode is GenerationMode.NEGATIVE, operation.label
        except Exception as error:
            failures.append(f"{operation.label}: {error}")
    print(f"\nschemathesis {mode.value}: {sum(statuses.values())} requests, {dict(statuses)}")
    assert not failures, "\n\n".join(failures)
    assert not [status for status in statuses if status >= 500]
    assert sum(statuses.values()) >= len(operations)


def test_401_is_documented_and_enforced_on_every_protected_operation(
    fuzzed: tuple[WorkerProcess, str],
) -> None:
    _, base = fuzzed
    spec = httpx.get(f"{base}/openapi.json", headers=AUTH, timeout=10).json()
    assert httpx.get(f"{base}/openapi.json", timeout=10).status_code == 401
    protected = 0
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            url = base + path.replace("{name}", "work")
            refused = httpx.request(method, url, json={}, timeout=10)
            if path == "/v1/health/live":
                assert refused.status_code == 200
                continue
            protected += 1
            assert "401" in operation["responses"], (method, path)
            assert operation["security"] == [{"HTTPBearer": []}], (method, path)
            assert refused.status_code == 401, (method, path, refused.text)
            wrong = httpx.request(
                method, url, json={}, headers={"Authorization": "Bearer x"}, timeout=10
            )
            assert wrong.status_code == 401, (method, path)
    assert protected >= 16
    orders = spec["paths"]["/v1/accumulators/orders"]["post"]["requestBody"]
    assert orders["content"]["application/json"]["schema"]["required"] == ["id", "qty", "side"]
