"""The HTTP operations API around a real in-process runtime."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel
from websockets.asyncio.client import connect

from headrace.accumulators import passthrough_accumulator, stream_accumulator
from headrace.connectors import DeadLetter, MemorySink
from headrace.engine import Runtime
from headrace.engine.ops.http import HttpServer, check_bind, create_app, is_loopback
from headrace.engine.ops.metrics import Metrics
from headrace.engine.store.state_store import StateStore
from tests.unit.engine.ops.test_metrics import FakeSource
from tests.unit.support import declare_reactor, one_node_graph, passthroughs, wait_until

TOKEN = "s3cret-token"


class Quote(BaseModel):
    symbol: str
    price: float


@dataclass
class Stack:
    runtime: Runtime
    sink: MemorySink
    metrics: Metrics
    store: StateStore


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    """Passthroughs ``a`` and ``quote`` (a Quote model) and a stream ``book`` feed graph ``g``."""
    passthroughs("a")

    @passthrough_accumulator(name="quote")
    def quote(event: Quote) -> Quote:
        return event

    stream_accumulator(topic="book.topic", name="book")(lambda event: event)
    declare_reactor("rx", ["a", "quote", "book"], strategy="sequential")
    graph = one_node_graph("g", "rx", ["a", "quote", "book"], lambda a, quote, book: [a, quote])
    sink = MemorySink()
    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}", flush_interval=0.01).open()
    source = FakeSource({"partitions": [{"topic": "book.topic", "partition": 0, "lag": 4}]})
    runtime = Runtime(graphs=[graph], sinks=[sink], dead_letters=store, sources=[source])
    metrics = Metrics(runtime, store=store)
    store.attach(runtime)
    async with runtime:
        yield Stack(runtime, sink, metrics, store)
    store.close()


def client_for(stack: Stack, token: str | None = None, **options: object) -> httpx.AsyncClient:
    """A client of the app; without a token, writes are allowed unless told otherwise."""
    options = {
        "metrics": stack.metrics,
        "store": stack.store,
        "allow_unauthenticated": token is None,
        **options,
    }
    app = create_app(stack.runtime, token=token, **options)  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://localhost")


# -- auth ----------------------------------------------------------------------------------

PROTECTED = [
    ("GET", "/v1/health/ready"),
    ("GET", "/v1/health/graphs"),
    ("GET", "/v1/health/graphs/g"),
    ("GET", "/v1/health/accumulators"),
    ("POST", "/v1/graphs/g/pause"),
    ("POST", "/v1/graphs/g/resume"),
    ("POST", "/v1/reactors/rx/pause"),
    ("POST", "/v1/reactors/rx/resume"),
    ("POST", "/v1/accumulators/a"),
    ("POST", "/v1/auth/ws-ticket"),
    ("GET", "/v1/health/state-store"),
    ("GET", "/v1/executions"),
    ("GET", "/v1/results"),
    ("GET", "/v1/dead-letters"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
]


async def test_token_guards_every_endpoint_but_liveness(stack: Stack) -> None:
    async with client_for(stack, TOKEN) as client:
        live = await client.get("/v1/health/live")
        assert live.status_code == 200 and live.json() == {"status": "ok"}
        for method, path in PROTECTED:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
                response = await client.request(method, path, headers=headers, json=1)
                assert response.status_code == 401, (method, path, headers)
                assert response.headers["www-authenticate"] == "Bearer"
            ok = await client.request(
                method, path, headers={"Authorization": f"Bearer {TOKEN}"}, json=1
            )
            assert ok.status_code in (200, 201, 202), (method, path, ok.text)
    assert stack.runtime.reactors["rx"].paused is False  # pause then resume ran


async def test_without_a_token_reads_are_open_and_writes_refused_unless_allowed(
    stack: Stack,
) -> None:
    async with client_for(stack, allow_unauthenticated=False) as client:
        for method, path in PROTECTED:
            response = await client.request(method, path, json=1)
            if method == "GET":
                assert response.status_code == 200, (method, path, response.text)
            else:
                assert response.status_code == 403, (method, path, response.text)
                assert "HEADRACE_TOKEN" in response.json()["detail"]
                assert "allow_unauthenticated" in response.json()["detail"]
    assert stack.runtime.accumulators["a"].events_in == 0
    async with client_for(stack, allow_unauthenticated=True) as client:
        for method, path in PROTECTED:
            response = await client.request(method, path, json=1)
            assert response.status_code in (200, 201, 202), (method, path, response.text)


def test_non_loopback_bind_without_token_is_refused(stack: Stack) -> None:
    open_app = create_app(stack.runtime)
    for host in ("0.0.0.0", "::", "10.1.2.3", "worker.example.com"):
        with pytest.raises(ValueError, match=r"not loopback: set a token \(HEADRACE_TOKEN\)"):
            HttpServer(open_app, host=host, port=0)
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        assert is_loopback(host)
        HttpServer(open_app, host=host, port=0)
    HttpServer(create_app(stack.runtime, token=TOKEN), host="0.0.0.0", port=0)
    check_bind("0.0.0.0", TOKEN)


# -- health ----------------------------------------------------------------------------------


async def test_graph_and_accumulator_health(stack: Stack) -> None:
    async with client_for(stack) as client:
        assert (await client.post("/v1/accumulators/a", json={"n": 1})).status_code == 202
        await stack.sink.wait_for(1)
        await stack.runtime.wait_idle()
        graphs = (await client.get("/v1/health/graphs")).json()
        assert list(graphs) == ["g"]
        one = (await client.get("/v1/health/graphs/g")).json()
        assert one == graphs["g"]
        assert one["state"] == "running" and one["paused"] is False
        assert one["fire_count"] == 1 and one["last_fired_at"] > 0
        assert one["reactor"] == "rx"
        assert set(one["accumulators"]) == {"a", "quote", "book"}
        missing = await client.get("/v1/health/graphs/nope")
        assert missing.status_code == 404 and "unknown graph 'nope'" in missing.json()["detail"]

        accumulators = (await client.get("/v1/health/accumulators")).json()
        assert accumulators["a"]["status"] == "ok"
        assert accumulators["a"]["kind"] == "passthrough" and accumulators["a"]["lag"] is None
        assert accumulators["a"]["events_in"] == 1
        assert accumulators["book"]["lag"] == 4  # from the source's partition health
        assert accumulators["book"]["channel_depth"] == 0


# -- pushes -----------------------------------------------------------------------------------


async def test_pushes_reach_the_graph_and_bad_requests_say_why(stack: Stack) -> None:
    async with client_for(stack) as client:
        pushed = await client.post("/v1/accumulators/a", json={"n": 1})
        assert pushed.status_code == 202
        assert pushed.json() == {"accumulator": "a", "accepted": True}
        quote = await client.post("/v1/accumulators/quote", json={"symbol": "X", "price": 2})
        assert quote.status_code == 202
        await stack.sink.wait_for(2)
        assert stack.sink.outputs("g") == [
            {"run": [{"n": 1}, None]},
            {"run": [{"n": 1}, Quote(symbol="X", price=2.0)]},
        ]

        json_type = {"Content-Type": "application/json"}
        bad = await client.post("/v1/accumulators/a", content=b"{not json", headers=json_type)
        assert bad.status_code == 400
        assert bad.json()["detail"].startswith("invalid JSON: ")
        empty = await client.post("/v1/accumulators/a", content=b"", headers=json_type)
        assert empty.status_code == 400

        unknown = await client.post("/v1/accumulators/nope", json=1)
        assert unknown.status_code == 404
        assert "unknown accumulator 'nope'" in unknown.json()["detail"]

        stream = await client.post("/v1/accumulators/book", json={"bid": 1})
        assert stream.status_code == 409
        assert "is a stream accumulator" in stream.json()["detail"]

        invalid = await client.post("/v1/accumulators/quote", json={"symbol": "X"})
        assert invalid.status_code == 422
        detail = invalid.json()["detail"]
        assert "does not match Quote" in detail and "price" in detail

    await stack.runtime.wait_idle()
    assert len(stack.sink.results) == 2  # nothing bad reached the graph


async def test_a_push_into_a_full_channel_times_out_with_503(tmp_path: Path) -> None:
    passthroughs("a", channel_size=1)
    declare_reactor("rx", ["a"], strategy="sequential")
    runtime = Runtime(graphs=[one_node_graph("g", "rx", ["a"], lambda a: a)])
    async with runtime:
        runtime.pause("rx")
        app = create_app(runtime, push_timeout=0.05, allow_unauthenticated=True)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            assert (await client.post("/v1/accumulators/a", json=1)).status_code == 202
            full = await client.post("/v1/accumulators/a", json=2)
            assert full.status_code == 503 and "stayed full" in full.json()["detail"]
            accumulators = (await client.get("/v1/health/accumulators")).json()
            assert accumulators["a"]["status"] == "backpressure"
        runtime.resume("rx")


# -- pause / resume ------------------------------------------------------------------------------


async def test_pause_and_resume_stop_and_restart_firing(stack: Stack) -> None:
    async with client_for(stack) as client:
        paused = await client.post("/v1/graphs/g/pause")
        assert paused.json() == {"reactor": "rx", "paused": True, "graphs": ["g"]}
        health = (await client.get("/v1/health/graphs/g")).json()
        assert health["paused"] is True and health["state"] == "paused"
        assert (await client.get("/v1/health/accumulators")).json()["a"]["status"] == "paused"

        await client.post("/v1/accumulators/a", json=1)
        await client.post("/v1/accumulators/a", json=2)
        await asyncio.sleep(0.1)
        assert stack.sink.results == []
        health = (await client.get("/v1/health/graphs/g")).json()
        assert health["fire_count"] == 0
        assert health["accumulators"]["a"]["channel_depth"] == 2

        resumed = await client.post("/v1/graphs/g/resume")
        assert resumed.json()["paused"] is False
        await stack.sink.wait_for(2)

        assert (await client.post("/v1/reactors/rx/pause")).json()["paused"] is True
        await client.post("/v1/accumulators/a", json=3)
        await asyncio.sleep(0.05)
        assert len(stack.sink.results) == 2
        assert (await client.post("/v1/reactors/rx/resume")).json()["paused"] is False
        await stack.sink.wait_for(3)
        assert (await client.get("/v1/health/graphs/g")).json()["fire_count"] == 3

        for path in ("/v1/graphs/nope/pause", "/v1/reactors/nope/resume", "/v1/reactors/g/pause"):
            assert (await client.post(path)).status_code == 404, path


# -- history and metrics ------------------------------------------------------------


async def test_results_from_the_state_store(stack: Stack) -> None:
    await stack.store.write_result("g", {"run": {"n": 1}})
    await stack.store.write_result("other", {"x": [1, 2]})
    await stack.store.write_result("g", {"run": {"n": 2}})
    async with client_for(stack, TOKEN) as client:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        assert (await client.get("/v1/results")).status_code == 401
        every = (await client.get("/v1/results", headers=headers)).json()["results"]
        assert [(r["graph"], r["outputs"]) for r in every] == [
            ("g", {"run": {"n": 2}}),
            ("other", {"x": [1, 2]}),
            ("g", {"run": {"n": 1}}),
        ]
        assert {"id", "graph", "outputs", "at", "worker"} == set(every[0])
        one = await client.get("/v1/results", params={"graph": "g", "limit": 1}, headers=headers)
        assert [r["outputs"] for r in one.json()["results"]] == [{"run": {"n": 2}}]
        for limit in (0, 10_001, "x"):
            bad = await client.get(f"/v1/results?limit={limit}", headers=headers)
            assert bad.status_code == 422, limit


async def test_executions_dead_letters_and_metrics(stack: Stack, tmp_path: Path) -> None:
    async with client_for(stack) as client:
        for event in (1, 2):
            await client.post("/v1/accumulators/a", json=event)
        await stack.sink.wait_for(2)
        await stack.store.send(DeadLetter(kind="message", reason="bad", payload=b"x"))
        await wait_until(lambda: len(stack.store.executions()) == 2)
        executions = (await client.get("/v1/executions", params={"graph": "g"})).json()
        assert [e["fire"] for e in executions["executions"]] == [2, 1]
        assert (await client.get("/v1/executions?limit=1")).json()["executions"][0]["fire"] == 2
        assert (await client.get("/v1/executions?limit=0")).status_code == 422
        letters = (await client.get("/v1/dead-letters")).json()["dead_letters"]
        assert [(d["reason"], d["payload"]) for d in letters] == [("bad", "eA==")]

        response = await client.get("/metrics")
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        parsed = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text)
            for s in family.samples
        }
        assert parsed[("headrace_events_in_total", (("accumulator", "a"),))] == 2
        assert parsed[("headrace_fires_total", (("reactor", "rx"),))] == 2
        assert parsed[("headrace_executions_total", (("graph", "g"), ("status", "ok")))] == 2
        assert parsed[("headrace_execution_duration_seconds_count", (("graph", "g"),))] == 2
        assert parsed[("headrace_channel_depth", (("accumulator", "a"),))] == 0
        assert parsed[("headrace_paused", (("reactor", "rx"),))] == 0
        assert parsed[("headrace_consumer_lag", (("partition", "0"), ("topic", "book.topic")))] == 4
        assert parsed[("headrace_state_store_dropped_executions_total", ())] == 0

    bare = create_app(stack.runtime)
    transport = httpx.ASGITransport(app=bare)
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
        for path in ("/metrics", "/v1/executions", "/v1/results", "/v1/dead-letters"):
            missing = await client.get(path)
            assert missing.status_code == 404 and "this worker" in missing.json()["detail"]


async def test_openapi_lists_the_endpoints(stack: Stack) -> None:
    async with client_for(stack, TOKEN) as client:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        spec = (await client.get("/openapi.json", headers=headers)).json()
        assert (await client.get("/docs")).status_code == 404
    async with client_for(stack) as client:
        assert set((await client.get("/openapi.json")).json()["paths"]) == set(spec["paths"])
        assert (await client.get("/docs")).status_code == 200
    paths = spec["paths"]
    assert {path: sorted(paths[path]) for path in paths} == {
        "/v1/health": ["get"],
        "/v1/health/live": ["get"],
        "/v1/health/ready": ["get"],
        "/v1/health/graphs": ["get"],
        "/v1/health/graphs/{name}": ["get"],
        "/v1/health/accumulators": ["get"],
        "/v1/graphs/{name}/pause": ["post"],
        "/v1/graphs/{name}/resume": ["post"],
        "/v1/reactors/{name}/pause": ["post"],
        "/v1/reactors/{name}/resume": ["post"],
        "/v1/health/state-store": ["get"],
        "/v1/auth/ws-ticket": ["post"],
        "/v1/accumulators/{name}": ["post"],
        "/v1/accumulators/a": ["post"],
        "/v1/accumulators/quote": ["post"],
        "/v1/executions": ["get"],
        "/v1/results": ["get"],
        "/v1/dead-letters": ["get"],
        "/metrics": ["get"],
    }
    push = paths["/v1/accumulators/{name}"]["post"]
    assert "application/json" in push["requestBody"]["content"]
    assert {"202", "400", "404", "409", "422"} <= set(push["responses"])
    assert "HTTPBearer" in spec["components"]["securitySchemes"]
    assert "security" not in paths["/v1/health/live"]["get"]
    assert paths["/v1/health/graphs"]["get"]["security"] == [{"HTTPBearer": []}]


# -- WebSocket, over a real server --------------------------------------------------


async def test_websocket_pushes_over_a_real_server(stack: Stack) -> None:
    server = HttpServer(create_app(stack.runtime, token=TOKEN), port=0)
    await server.start()
    try:
        base = f"ws://127.0.0.1:{server.port}/v1/ws/accumulators"
        auth = {"Authorization": f"Bearer {TOKEN}"}
        async with connect(f"{base}/a", additional_headers=auth) as socket:
            replies = []
            for frame in ('{"n": 1}', "not json", "[1, 2]"):
                await socket.send(frame)
                replies.append(orjson.loads(await socket.recv()))
            assert replies[0] == {"ok": True} and replies[2] == {"ok": True}
            assert replies[1]["ok"] is False and replies[1]["error"].startswith("invalid JSON")
        await stack.sink.wait_for(2)
        assert [out["run"][0] for out in stack.sink.outputs()] == [{"n": 1}, [1, 2]]

        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
            issued = await client.post("/v1/auth/ws-ticket", headers=auth)
            assert issued.status_code == 201, issued.text
            ticket = issued.json()["ticket"]
        async with connect(f"{base}/quote?ticket={ticket}") as socket:
            await socket.send('{"symbol": "Y"}')
            invalid = orjson.loads(await socket.recv())
            assert invalid["ok"] is False and "does not match Quote" in invalid["error"]
            await socket.send(b'{"symbol": "Y", "price": 3}')  # binary frames work too
            assert orjson.loads(await socket.recv()) == {"ok": True}
        await stack.sink.wait_for(3)

        for url, headers, status in (
            (f"{base}/a", {}, 401),
            (f"{base}/a?token=wrong", {}, 401),
            (f"{base}/a?token={TOKEN}", {}, 401),  # the token never goes in a URL
            (f"{base}/a?ticket={ticket}", {}, 401),  # a ticket is good for one handshake
            (f"{base}/nope", auth, 404),
            (f"{base}/book", auth, 409),
        ):
            with pytest.raises(websockets.InvalidStatus) as refused:
                async with connect(url, additional_headers=headers):
                    pass
            assert refused.value.response.status_code == status, url

        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
            assert (await client.get("/v1/health/live")).status_code == 200
            assert (await client.get("/v1/health/graphs")).status_code == 401
        async with connect(f"{base}/a", additional_headers=auth) as socket:
            await server.stop()  # open sockets are closed on stop
            with pytest.raises(websockets.ConnectionClosed):
                await socket.recv()
    finally:
        await server.stop()
