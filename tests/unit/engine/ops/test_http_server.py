"""The in-loop uvicorn server's connection bounds, over real sockets: header timeout, the
connection cap that sheds the oldest idle connection, WebSocket caps, quiet refusals, and
throttled accept errors."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import httpx
import pytest
import websockets
from websockets.asyncio.client import connect

from headrace.engine import Runtime
from headrace.engine.ops.http import HttpServer, create_app
from headrace.engine.ops.http_server import AcceptErrorThrottle, ConnectionLimits
from tests.unit.support import declare_reactor, one_node_graph, passthroughs

TOKEN = "server-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def server() -> AsyncIterator[HttpServer]:
    passthroughs("a", "b")
    declare_reactor("rx", ["a", "b"])
    runtime = Runtime(graphs=[one_node_graph("g", "rx", ["a", "b"], lambda a, b: 1)])
    async with runtime:
        app = create_app(runtime, token=TOKEN, max_websockets=3, max_websockets_per_accumulator=2)
        limits = ConnectionLimits(max_connections=8, header_timeout=0.5, keep_alive_timeout=5)
        http = HttpServer(app, port=0, limits=limits)
        await http.start()
        try:
            yield http
        finally:
            await http.stop()


async def _closed_by_server(reader: asyncio.StreamReader, within: float) -> bool:
    try:
        return await asyncio.wait_for(reader.read(), within) == b""
    except TimeoutError:
        return False


async def test_half_sent_headers_are_cut_off_after_the_header_timeout(
    server: HttpServer,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /v1/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never finished
    await writer.drain()
    assert await _closed_by_server(reader, within=5.0)
    writer.close()


async def test_an_idle_flood_sheds_the_oldest_and_liveness_still_answers(
    server: HttpServer,
) -> None:
    idle = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(20)]
    await asyncio.sleep(0.1)
    async with httpx.AsyncClient(base_url=server.url) as client:
        assert (await client.get("/v1/health/live")).status_code == 200
    closed = [await _closed_by_server(reader, within=0.05) for reader, _ in idle[:10]]
    assert all(closed), "the oldest idle connections make room"
    for _, writer in idle:
        writer.close()


async def test_websocket_caps_per_accumulator_and_per_worker(server: HttpServer) -> None:
    base = f"ws://127.0.0.1:{server.port}/v1/ws/accumulators"
    opened = [await connect(f"{base}/a", additional_headers=AUTH) for _ in range(2)]
    with pytest.raises(websockets.InvalidStatus) as per_accumulator:
        await connect(f"{base}/a", additional_headers=AUTH)
    assert per_accumulator.value.response.status_code == 503
    opened.append(await connect(f"{base}/b", additional_headers=AUTH))
    with pytest.raises(websockets.InvalidStatus) as per_worker:
        await connect(f"{base}/b", additional_headers=AUTH)
    assert per_worker.value.response.status_code == 503
    assert b"worker.http.max_websockets" in per_worker.value.response.body
    for socket in opened:
        await socket.close()


async def test_refused_handshakes_and_dropped_bodies_log_no_errors(
    server: HttpServer, caplog: pytest.LogCaptureFixture
) -> None:
    base = f"ws://127.0.0.1:{server.port}/v1/ws/accumulators"
    with caplog.at_level(logging.INFO):
        for url, headers in ((f"{base}/a", {}), (f"{base}/nope", AUTH)):
            with pytest.raises(websockets.InvalidStatus):
                await connect(url, additional_headers=headers)
        _reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(
            b"POST /v1/accumulators/a HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            + f"Authorization: Bearer {TOKEN}\r\n".encode()
            + b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n[1,"
        )
        await writer.drain()
        writer.close()
        await asyncio.sleep(0.3)
    loud = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not loud, [r.getMessage() for r in loud]
    assert not [r for r in caplog.records if r.exc_info]


def test_accept_errors_are_logged_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.new_event_loop()
    passed: list[str] = []
    loop.set_exception_handler(lambda _loop, context: passed.append(context["message"]))
    throttle = AcceptErrorThrottle(loop, interval=60)
    throttle.install()
    try:
        error = OSError(24, "Too many open files")
        for _ in range(1000):
            loop.call_exception_handler(
                {"message": "socket.accept() out of system resource", "exception": error}
            )
        loop.call_exception_handler({"message": "something else"})
    finally:
        throttle.remove()
        loop.close()
    assert passed == ["something else"], "other contexts reach the previous handler"
    assert throttle.suppressed == 999


async def test_oversized_frames_and_request_heads_are_refused(server: HttpServer) -> None:
    base = f"ws://127.0.0.1:{server.port}/v1/ws/accumulators"
    async with connect(f"{base}/a", additional_headers=AUTH, max_size=None) as socket:
        await socket.send("[" + "1," * (600 * 1024) + "1]")  # 1.2 MB > max_bytes (1 MiB)
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await socket.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /v1/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"x" * 20_000)
    await writer.drain()  # a head still incomplete past 16 KiB is refused, not buffered on
    response = await asyncio.wait_for(reader.read(), 5)
    assert response.startswith(b"HTTP/1.1 400"), response[:100]
    writer.close()
