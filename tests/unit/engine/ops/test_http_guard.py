"""Hardening of the operations API, in process: Host/Origin/Content-Type, body and depth
limits, strict models, tickets, the OpenAPI description, and secrets kept out of logs."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import structlog
from pydantic import BaseModel

from headrace.accumulators import passthrough_accumulator
from headrace.engine import Runtime
from headrace.engine.ops.http import create_app
from headrace.engine.ops.http_guard import HostPolicy, host_name
from headrace.engine.ops.log_scrub import forget_secrets, register_secret, scrub_text
from headrace.engine.ops.logging import configure_logging
from headrace.engine.ops.tickets import TicketBook
from tests.unit.support import declare_reactor, one_node_graph, passthroughs

TOKEN = "unit-s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
JSON = {"Content-Type": "application/json"}


class Price(BaseModel):
    symbol: str
    price: float


@pytest.fixture
async def runtime() -> AsyncIterator[Runtime]:
    """Passthroughs ``a`` (any JSON), ``lax`` and ``strict`` (Price models) feed graph ``g``."""
    passthroughs("a")

    @passthrough_accumulator(name="lax")
    def lax(event: Price) -> Price:
        return event

    @passthrough_accumulator(name="strict", strict=True)
    def strict(event: Price) -> Price:
        return event

    declare_reactor("rx", ["a", "lax", "strict"], strategy="sequential")
    graph = one_node_graph("g", "rx", ["a", "lax", "strict"], lambda a, lax, strict: 1)
    async with Runtime(graphs=[graph]) as running:
        yield running


def client(runtime: Runtime, base: str = "http://127.0.0.1:8080", **options: object):
    app = create_app(runtime, token=TOKEN, **options)  # type: ignore[arg-type]
    transport = httpx.ASGITransport(app=app)
    return httpx.AsyncClient(transport=transport, base_url=base, headers=AUTH)


# -- Host and Origin ------------------------------------------------------------------------


def test_host_policy_accepts_the_bind_address_and_configured_names_only() -> None:
    loopback = HostPolicy("127.0.0.1", ["worker.internal"])
    for header in ("127.0.0.1:8080", "localhost:8080", "LOCALHOST", "[::1]:8080", "127.0.0.1"):
        assert loopback.allows(header), header
    assert loopback.allows("worker.internal:9000")
    for header in ("evil.example", "evil.example:8080", "10.0.0.5", "", None, "127.0.0.1.nip.io"):
        assert not loopback.allows(header), header
    wildcard = HostPolicy("0.0.0.0")
    assert wildcard.allows("10.0.0.5:8080") and wildcard.allows("[fe80::1]:80")
    assert not wildcard.allows("attacker.example")
    named = HostPolicy("10.1.2.3", ["ops.example.com"])
    assert named.allows("10.1.2.3:8080") and named.allows("ops.example.com")
    assert not named.allows("localhost") and not named.allows("10.1.2.4")
    assert host_name("[::1]:80") == "::1" and host_name("Example.COM.:80") == "example.com"


async def test_rebinding_hosts_and_foreign_origins_are_refused(runtime: Runtime) -> None:
    async with client(runtime, base="http://evil.example:8080") as rebinding:
        refused = await rebinding.get("/v1/health/graphs")
        assert refused.status_code == 421 and "allowed_hosts" in refused.json()["detail"]
        assert (await rebinding.get("/v1/health/live")).status_code == 421
    async with client(runtime) as api:
        page = {"Origin": "https://evil.example"}
        pushed = await api.post("/v1/accumulators/a", json={"n": 1}, headers=page)
        assert pushed.status_code == 403 and "allowed_origins" in pushed.json()["detail"]
        paused = await api.post("/v1/reactors/rx/pause", headers=page)
        assert paused.status_code == 403
        assert runtime.reactors["rx"].paused is False
        assert runtime.accumulators["a"].events_in == 0
        own = await api.get("/v1/health/graphs", headers={"Origin": "http://127.0.0.1:8080"})
        assert own.status_code == 200, "the worker's own /docs page"
    allowed = ["https://ops.example.com"]
    async with client(runtime, allowed_origins=allowed) as api:
        ok = await api.get("/v1/health/graphs", headers={"Origin": "https://ops.example.com"})
        assert ok.status_code == 200
        assert ok.headers["access-control-allow-origin"] == "https://ops.example.com"


# -- bodies -----------------------------------------------------------------------------------


async def test_pushes_need_json_content_type_and_fit_the_size_limit(runtime: Runtime) -> None:
    from headrace.accumulators.limits import ValueLimits

    async with client(runtime, limits=ValueLimits(max_bytes=1000)) as api:
        text = await api.post(
            "/v1/accumulators/a", content=b"1", headers={"Content-Type": "text/plain"}
        )
        assert text.status_code == 415 and "application/json" in text.json()["detail"]
        form = await api.post("/v1/accumulators/a", data={"n": "1"})
        assert form.status_code == 415
        charset = {"Content-Type": "application/json; charset=utf-8"}
        assert (await api.post("/v1/accumulators/a", content=b"1", headers=charset)).is_success

        big = await api.post("/v1/accumulators/a", json="x" * 2000)
        assert big.status_code == 413 and "worker.limits.max_bytes" in big.json()["detail"]
        assert big.headers["connection"] == "close"

        async def stream() -> AsyncIterator[bytes]:  # no Content-Length: counted as it comes
            yield b'"'
            for _ in range(100):
                yield b"x" * 100
            yield b'"'

        streamed = await api.post(
            "/v1/accumulators/a", content=stream(), headers={"Content-Type": "application/json"}
        )
        assert streamed.status_code == 413
    assert runtime.accumulators["a"].events_in == 1


async def test_deep_values_are_refused_and_strict_models_refuse_coercion(
    runtime: Runtime,
) -> None:
    deep: object = 1
    for _ in range(65):
        deep = [deep]
    async with client(runtime) as api:
        refused = await api.post("/v1/accumulators/a", json=deep)
        assert refused.status_code == 422
        assert "nested more than 64 levels" in refused.json()["detail"]
        assert "worker.limits.max_depth" in refused.json()["detail"]
        for price in ("100", True):
            lax = await api.post("/v1/accumulators/lax", json={"symbol": "X", "price": price})
            assert lax.status_code == 202, "lax (the default) coerces, as pydantic does"
            strict = await api.post("/v1/accumulators/strict", json={"symbol": "X", "price": price})
            assert strict.status_code == 422, price
            assert "does not match Price" in strict.json()["detail"]
        fine = await api.post("/v1/accumulators/strict", json={"symbol": "X", "price": 100})
        assert fine.status_code == 202
        too_deep_to_parse = await api.post(
            "/v1/accumulators/a", content=b"[" * 300 + b"]" * 300, headers=JSON
        )
        assert too_deep_to_parse.status_code == 422
        assert "worker.limits.max_depth" in too_deep_to_parse.json()["detail"]
        nan = await api.post("/v1/accumulators/a", content=b"NaN", headers=JSON)
        assert nan.status_code == 400 and "invalid JSON" in nan.json()["detail"]


async def test_big_integers_keep_every_digit(runtime: Runtime) -> None:
    big = 10**30 + 7  # orjson.loads turned this into 1e30, silently
    async with client(runtime) as api:
        pushed = await api.post("/v1/accumulators/a", content=b'{"id": %d}' % big, headers=JSON)
        assert pushed.status_code == 202
    assert runtime.accumulators["a"].last_value == {"id": big}


# -- tickets ----------------------------------------------------------------------------------


def test_tickets_are_single_use_short_lived_and_bounded() -> None:
    now = [0.0]
    book = TicketBook(ttl=30, max_outstanding=3, clock=lambda: now[0])
    first = book.issue()
    assert book.redeem(first) and not book.redeem(first)
    late = book.issue()
    now[0] = 31.0
    assert not book.redeem(late)
    issued = [book.issue() for _ in range(4)]
    assert len(book) == 3 and not book.redeem(issued[0]) and book.redeem(issued[3])
    assert not book.redeem("") and not book.redeem(None) and not book.redeem("made-up")


# -- the OpenAPI description ------------------------------------------------------------------


async def test_openapi_documents_401_everywhere_and_each_accumulators_model(
    runtime: Runtime,
) -> None:
    async with client(runtime) as api:
        spec = (await api.get("/openapi.json")).json()
    operations = [
        (path, method, op) for path, item in spec["paths"].items() for method, op in item.items()
    ]
    assert len(operations) >= 16
    for path, method, op in operations:
        if path == "/v1/health/live":
            assert "401" not in op["responses"] and "security" not in op
            continue
        assert "401" in op["responses"], (method, path)
        assert op["security"] == [{"HTTPBearer": []}], (method, path)
    schemas = spec["components"]["schemas"]
    for name in ("lax", "strict"):
        body = spec["paths"][f"/v1/accumulators/{name}"]["post"]["requestBody"]
        assert body["content"]["application/json"]["schema"] == Price.model_json_schema()
    assert (
        "strict mode"
        in spec["paths"]["/v1/accumulators/strict"]["post"]["requestBody"]["description"]
    )
    generic = spec["paths"]["/v1/accumulators/a"]["post"]
    assert generic["requestBody"]["content"]["application/json"]["schema"] == {}
    push = spec["paths"]["/v1/accumulators/{name}"]["post"]["responses"]
    assert {"202", "400", "401", "404", "409", "413", "415", "422", "503"} <= set(push)
    assert push["413"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Problem"
    }
    assert "Problem" in schemas


# -- secrets in logs ----------------------------------------------------------------------------


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    out = io.StringIO()
    configure_logging("info", "json", stream=out)
    yield out
    forget_secrets()
    structlog.reset_defaults()
    logging.getLogger().handlers.clear()


def test_query_string_credentials_and_registered_secrets_are_scrubbed(
    json_logs: io.StringIO,
) -> None:
    assert scrub_text("GET /v1/ws/a?token=abc&x=1") == "GET /v1/ws/a?token=***&x=1"
    assert scrub_text("/p?x=1&ticket=T1;access_token=Z") == "/p?x=1&ticket=***;access_token=***"
    assert scrub_text("price=100&n=2") == "price=100&n=2"
    register_secret("abc")  # too short to mask safely: ignored
    register_secret("opaque-value-123")
    uvicorn = logging.getLogger("uvicorn.error")
    uvicorn.info('%s - "WebSocket %s" [accepted]', "127.0.0.1:5", "/v1/ws/a?token=opaque-value-123")
    try:
        raise RuntimeError("bad header Bearer opaque-value-123")
    except RuntimeError:
        uvicorn.exception("Exception in ASGI application")
    structlog.get_logger("t").info(
        "pushed", url="http://w/x?ticket=t-0123", note="opaque-value-123"
    )
    lines = [json.loads(line) for line in json_logs.getvalue().splitlines()]
    assert len(lines) == 3
    text = json_logs.getvalue()
    assert "opaque-value-123" not in text and "t-0123" not in text
    assert lines[0]["event"] == '127.0.0.1:5 - "WebSocket /v1/ws/a?token=***" [accepted]'
    assert "Bearer ***" in lines[1]["exception"]
    assert lines[2]["url"] == "http://w/x?ticket=***" and lines[2]["note"] == "***"
