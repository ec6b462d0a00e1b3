"""The operations API of a running worker (``headrace run``, JSON logs, no Kafka) under
hostile and careless clients: secrets in URLs, oversized and half-sent bodies, idle
connection floods, foreign Host/Origin headers, values too deep to store.

One worker serves the whole module (starting one costs seconds on a busy machine); each
test cleans up its own connections. Figures measured are printed (``pytest -s``).
"""

from __future__ import annotations

import contextlib
import json
import resource
import secrets
import signal
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import psutil
import pytest
import websockets
from websockets.sync.client import connect

from tests.integration.test_worker_cli import WorkerProcess

NODES = '''
"""Nodes of the HTTP hardening worker."""
from pydantic import BaseModel


class Quote(BaseModel):
    symbol: str
    price: float


def nest(event):
    value = event
    for _ in range(150):  # the parser accepted the event; the value is too deep to store
        value = [value]
    return value


def record(ticks, quotes, deep):
    return {"ticks": ticks, "quote": quotes.price if quotes is not None else None}
'''

CONFIG = """
modules = [{{ name = "hr_http_nodes", path = "." }}]

[worker]
drain_timeout = "30s"

[worker.http]
port = 0
max_connections = 1000
header_timeout = "5s"
max_websockets_per_accumulator = 4

[worker.state_store]
url = "sqlite:///{db}"

[accumulators.ticks]
kind = "passthrough"

[accumulators.quotes]
kind = "passthrough"
model = "hr_http_nodes:Quote"
strict = true

[accumulators.deep]
kind = "passthrough"
function = "hr_http_nodes:nest"

[reactors.rx]
accumulators = ["ticks", "quotes", "deep"]
strategy = "sequential"

[graphs.work]
module = "hr_http_nodes"
reactor = "rx"
topology = {{ record = {{ inputs = ["ticks", "quotes", "deep"] }} }}
sinks = ["log"]

[sinks.log]
type = "log"
"""

TOKEN = "hr-" + secrets.token_urlsafe(24)
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class Api:
    def __init__(self, worker: WorkerProcess, base: str) -> None:
        self.worker = worker
        self.base = base
        self.port = int(base.rsplit(":", 1)[1])
        self.ws = f"ws://127.0.0.1:{self.port}/v1/ws/accumulators"
        self.process = psutil.Process(worker.proc.pid)

    def get(self, path: str, **options: Any) -> httpx.Response:
        headers = {**AUTH, **options.pop("headers", {})}
        return httpx.get(self.base + path, headers=headers, timeout=10, **options)

    def post(self, path: str, **options: Any) -> httpx.Response:
        headers = {**AUTH, **options.pop("headers", {})}
        return httpx.post(self.base + path, headers=headers, timeout=10, **options)

    def rss_mb(self) -> float:
        return self.process.memory_info().rss / 2**20

    def raw(self, request: bytes, read: bool = True, timeout: float = 10.0) -> bytes:
        """Send ``request`` on a fresh socket; return what comes back until close."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
            sock.sendall(request)
            if not read:
                return b""
            return _read_all(sock)


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    with contextlib.suppress(ConnectionResetError, TimeoutError):
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    directory = tmp_path_factory.mktemp("http-hardening")
    (directory / "hr_http_nodes.py").write_text(NODES)
    config = directory / "worker.toml"
    config.write_text(CONFIG.format(db=directory / "state.db"))
    env = {"HEADRACE_TOKEN": TOKEN, "HEADRACE_HTTP_TOKEN": "ignored-old-name"}
    worker = WorkerProcess([config], env, directory)
    try:
        yield Api(worker, worker.ready())
        code = worker.stop(signal.SIGTERM)
        assert code == 0, worker.output()
        _assert_clean_logs(worker)
    finally:
        worker.kill()


def _assert_clean_logs(worker: WorkerProcess) -> None:
    """After every test of the module: no token anywhere, no error lines, no tracebacks."""
    everything = worker.raw + worker.stderr
    leaked = [line for line in everything if TOKEN in line]
    assert not leaked, leaked[:3]
    errors = [line for line in worker.lines if line.get("level") in ("error", "critical")]
    assert not errors, errors[:3]
    tracebacks = [line for line in everything if "Traceback" in line]
    assert not tracebacks, tracebacks[:3]


def test_startup_says_the_api_is_protected_and_warns_of_an_unused_token_variable(
    api: Api,
) -> None:
    listening = api.worker.wait_for("http api listening")
    assert listening["protected"] is True and "HEADRACE_TOKEN" in listening["auth"]
    warned = api.worker.wait_for(
        "HEADRACE_HTTP_TOKEN is set but nothing reads it: the API token is HEADRACE_TOKEN"
    )
    assert warned["level"] == "warning"
    assert httpx.get(api.base + "/v1/health/graphs", timeout=10).status_code == 401
    assert api.get("/v1/health/graphs").status_code == 200


def test_no_log_line_holds_the_token_after_http_and_websocket_use(api: Api) -> None:
    assert api.post("/v1/accumulators/ticks", json={"n": 1}).status_code == 202
    with connect(f"{api.ws}/ticks", additional_headers=AUTH) as ws:
        ws.send('{"n": 2}')
        assert json.loads(ws.recv()) == {"ok": True}
    ticket = api.post("/v1/auth/ws-ticket").json()["ticket"]
    with connect(f"{api.ws}/ticks?ticket={ticket}") as ws:
        ws.send('{"n": 3}')
        assert json.loads(ws.recv()) == {"ok": True}
    refused = [
        (f"{api.ws}/ticks?token={TOKEN}", {}),  # the old way: refused, and scrubbed in the log
        (f"{api.ws}/ticks?ticket={ticket}", {}),  # used up
        (f"{api.ws}/ticks", {"Authorization": "Bearer wrong"}),
        (f"{api.ws}/nope?token={TOKEN}", AUTH),
    ]
    for url, headers in refused:
        with (
            pytest.raises(websockets.InvalidStatus) as denied,
            connect(url, additional_headers=headers),
        ):
            pass
        assert denied.value.response.status_code in (401, 404), url
    httpx.get(f"{api.base}/v1/health/graphs?token={TOKEN}", timeout=10)  # 401, not logged raw
    handshakes = [line for line in api.worker.raw if "WebSocket /v1/ws" in line]
    assert any("token=***" in line for line in handshakes), handshakes[-5:]
    assert not [line for line in api.worker.raw if TOKEN in line]


def test_websockets_per_accumulator_are_capped(api: Api) -> None:
    with contextlib.ExitStack() as stack:
        for _ in range(4):
            stack.enter_context(connect(f"{api.ws}/ticks", additional_headers=AUTH))
        with (
            pytest.raises(websockets.InvalidStatus) as full,
            connect(f"{api.ws}/ticks", additional_headers=AUTH),
        ):
            pass
        assert full.value.response.status_code == 503
        assert b"max_websockets_per_accumulator" in full.value.response.body
    deadline = time.monotonic() + 10
    while True:  # the slots come back once the sockets are closed
        try:
            with connect(f"{api.ws}/ticks", additional_headers=AUTH):
                break
        except websockets.InvalidStatus:
            assert time.monotonic() < deadline, "WebSocket slots were not released"
            time.sleep(0.1)


def test_foreign_host_origin_and_content_type_are_refused(api: Api) -> None:
    rebinding = api.get("/v1/health/graphs", headers={**AUTH, "Host": "evil.example:8080"})
    assert rebinding.status_code == 421 and "allowed_hosts" in rebinding.json()["detail"]
    page = api.post(
        "/v1/accumulators/ticks", json={"n": 9}, headers={"Origin": "https://evil.example"}
    )
    assert page.status_code == 403 and "allowed_origins" in page.json()["detail"]
    plain = api.post(
        "/v1/accumulators/ticks", content=b'{"n": 9}', headers={"Content-Type": "text/plain"}
    )
    assert plain.status_code == 415
    with (
        pytest.raises(websockets.InvalidStatus) as socket_page,
        connect(f"{api.ws}/ticks", additional_headers=AUTH, origin="https://evil.example"),
    ):
        pass
    assert socket_page.value.response.status_code == 403
    assert api.get("/v1/health/graphs", headers={**AUTH, "Host": "localhost"}).status_code == 200


def test_oversized_bodies_get_413_before_buffering_and_rss_stays_flat(api: Api) -> None:
    before = api.rss_mb()
    head = (
        b"POST /v1/accumulators/ticks HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + f"Authorization: Bearer {TOKEN}\r\n".encode()
        + b"Content-Type: application/json\r\n"
    )
    declared = api.raw(head + b"Content-Length: 104857600\r\n\r\n" + b"[" * 1000)
    assert _status(declared) == 413, declared[:200]

    # no Content-Length: chunked, 64 MiB offered; refused once 1 MiB has arrived
    sent = 0
    with socket.create_connection(("127.0.0.1", api.port), timeout=10) as sock:
        sock.sendall(head + b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n%s\r\n" % (65536, b" " * 65536)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            while sent < 64 * 2**20:
                sock.sendall(chunk)
                sent += 65536
        streamed = _read_all(sock)
    assert _status(streamed) == 413, streamed[:200]
    assert sent < 32 * 2**20, f"the worker kept reading: {sent} bytes sent"
    after = api.rss_mb()
    print(f"\n413: RSS {before:.1f} -> {after:.1f} MiB; chunked bytes sent before refusal {sent}")
    assert after - before < 40, (before, after)


def test_a_client_leaving_mid_body_logs_no_error(api: Api) -> None:
    head = (
        b"POST /v1/accumulators/ticks HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + f"Authorization: Bearer {TOKEN}\r\n".encode()
        + b"Content-Type: application/json\r\nContent-Length: 5000\r\n\r\n"
    )
    api.raw(head + b'{"n": ', read=False)
    time.sleep(0.5)
    assert api.get("/v1/health/live").status_code == 200
    errors = [line for line in api.worker.lines if line.get("level") in ("error", "critical")]
    assert not errors, errors


def test_5000_idle_connections_leave_liveness_answering_within_1s(api: Api) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 6000:  # this process holds the 5000 client ends
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= 6000, "raise ulimit -n"
    idle: list[socket.socket] = []
    try:
        for _ in range(5000):
            sock = socket.socket()
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                sock.connect(("127.0.0.1", api.port))
            idle.append(sock)
        time.sleep(1.0)  # let the worker accept (and shed) them
        _wait(lambda: api.process.num_fds() < 1100, "the worker to settle under its cap")
        latencies = []
        for _ in range(10):
            started = time.monotonic()
            response = httpx.get(api.base + "/v1/health/live", timeout=5)
            latencies.append(time.monotonic() - started)
            assert response.status_code == 200
        rss = api.rss_mb()
        fds = api.process.num_fds()
    finally:
        for sock in idle:
            sock.close()
    print(
        f"\n5000 idle: liveness max {max(latencies) * 1000:.0f} ms, "
        f"median {sorted(latencies)[5] * 1000:.0f} ms; worker fds {fds}, RSS {rss:.0f} MiB"
    )
    # the cap is what failed before (every idle connection held an fd); the latency is the
    # issue's bar, taken as the median so one request racing a busy shared machine does not
    # decide it; every request must have answered within its 5 s timeout regardless
    assert fds < 1200, f"the connection cap did not hold: {fds} open fds"
    assert sorted(latencies)[5] < 1.0, latencies


def test_too_deep_values_are_refused_or_dead_lettered_and_no_store_write_is_lost(
    api: Api,
) -> None:
    deep: Any = 1
    for _ in range(300):
        deep = [deep]
    refused = api.post("/v1/accumulators/ticks", json=deep)
    assert refused.status_code == 422 and "worker.limits.max_depth" in refused.json()["detail"]
    coerced = api.post("/v1/accumulators/quotes", json={"symbol": "X", "price": "100"})
    assert coerced.status_code == 422, "strict model: a string is not a price"
    assert api.post("/v1/accumulators/quotes", json={"symbol": "X", "price": 100}).is_success

    fires_before = api.get("/v1/health/graphs/work").json()["fire_count"]
    assert api.post("/v1/accumulators/deep", json={"n": 1}).status_code == 202  # stored? no
    for n in range(10):
        assert api.post("/v1/accumulators/ticks", json={"n": 100 + n}).status_code == 202
    expected = fires_before + 11

    def settled() -> dict[str, Any] | None:
        store = api.get("/v1/health/state-store").json()
        fires = api.get("/v1/health/graphs/work").json()["fire_count"]
        written = len(api.get("/v1/executions", params={"limit": 1000}).json()["executions"])
        return store if fires == expected and written == expected else None

    store = _wait(settled, "every execution record written")
    assert store["status"] == "degraded" and store["rejected_values"] == 1, store
    assert store["dropped_executions"] == 0 and store["write_errors"] == 0, store
    letters = api.get("/v1/dead-letters").json()["dead_letters"]
    (letter,) = [d for d in letters if d["kind"] == "value"]
    assert letter["accumulator"] == "deep" and "nested more than" in letter["reason"]


def _wait(predicate: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
