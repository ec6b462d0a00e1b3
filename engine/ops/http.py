"""The worker's HTTP operations API (FastAPI) and the uvicorn server that runs it in-loop.

Loopback by default. With a token, every endpoint but ``GET /v1/health/live`` needs
``Authorization: Bearer <token>`` (WebSockets may pass ``?token=`` instead).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import socket
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import structlog
import uvicorn
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, WebSocket
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict
from starlette.websockets import WebSocketDisconnect

from headrace.accumulators import AccumulatorInputError, AccumulatorKind
from headrace.engine.ops.metrics import CONTENT_TYPE, Metrics, source_partitions
from headrace.engine.ops.net import is_loopback
from headrace.engine.store.state_store import StateStore

if TYPE_CHECKING:
    from headrace.engine.runtime import Runtime

log = structlog.get_logger("headrace.http")

_bearer = HTTPBearer(auto_error=False, description="The worker's operations token.")


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class Live(BaseModel):
    status: str


class Ready(BaseModel):
    status: str
    ready: bool
    failures: dict[str, dict[str, Any]]


class GraphHealth(_Open):
    state: str
    fire_count: int
    last_fired_at: float | None
    paused: bool
    reactor: str
    accumulators: dict[str, dict[str, Any]]


class AccumulatorHealth(_Open):
    kind: str
    status: str
    channel_depth: int
    channel_capacity: int
    lag: int | None


class PauseState(BaseModel):
    reactor: str
    paused: bool
    graphs: list[str]


class Pushed(BaseModel):
    accumulator: str
    accepted: bool


class Executions(BaseModel):
    executions: list[dict[str, Any]]


class Results(BaseModel):
    results: list[dict[str, Any]]


class DeadLetters(BaseModel):
    dead_letters: list[dict[str, Any]]


def check_bind(host: str, token: str | None) -> None:
    """Refuse to expose the API beyond loopback without a token."""
    if not token and not is_loopback(host):
        raise ValueError(
            f"HTTP API bind address {host!r} is not loopback: set a token (http token / "
            "HEADRACE_HTTP_TOKEN) or bind to 127.0.0.1"
        )


def _token_matches(given: str | None, token: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


def create_app(
    runtime: Runtime,
    *,
    metrics: Metrics | None = None,
    store: StateStore | None = None,
    token: str | None = None,
    push_timeout: float = 10.0,
) -> FastAPI:
    """The operations API over ``runtime``; ``push_timeout`` bounds waits on full channels."""
    app = FastAPI(
        title="Headrace worker",
        version="1",
        description="Health, pause/resume, pushes into passthrough accumulators, metrics.",
        # With a token the description needs it too; browsable docs are only served without.
        openapi_url=None if token else "/openapi.json",
        docs_url=None if token else "/docs",
        redoc_url=None if token else "/redoc",
    )
    app.state.headrace_token = token or None

    def authorize(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> None:
        given = credentials.credentials if credentials is not None else None
        if token and not _token_matches(given, token):
            raise HTTPException(
                401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"}
            )

    @app.get("/v1/health/live", tags=["health"])
    async def live() -> Live:
        """Liveness: the process answers. Needs no token."""
        return Live(status="ok")

    api = APIRouter(dependencies=[Depends(authorize)])

    @api.get("/v1/health/ready", tags=["health"], responses={503: {"model": Ready}})
    async def ready() -> Any:
        """Readiness: 200 while the runtime runs and no component failed, else 503."""
        body = Ready(
            status=runtime.status(), ready=runtime.ready(), failures=runtime.supervisor.health()
        )
        if body.ready:
            return body
        return JSONResponse(body.model_dump(), status_code=503)

    @api.get("/v1/health/graphs", tags=["health"])
    async def graphs_health() -> dict[str, GraphHealth]:
        return {n: GraphHealth(**h) for n, h in runtime.health()["graphs"].items()}

    @api.get("/v1/health/graphs/{name}", tags=["health"], responses={404: {}})
    async def graph_health(name: str) -> GraphHealth:
        graphs = runtime.health()["graphs"]
        if name not in graphs:
            raise HTTPException(404, f"unknown graph {name!r} (running: {sorted(graphs)})")
        return GraphHealth(**graphs[name])

    @api.get("/v1/health/accumulators", tags=["health"])
    async def accumulators_health() -> dict[str, AccumulatorHealth]:
        return _accumulator_health(runtime)

    def pause_state(reactor: str) -> PauseState:
        loop = runtime.reactors[reactor]
        bound = sorted(n for n, g in runtime.graphs.items() if g.graph.reactor_name == reactor)
        return PauseState(reactor=reactor, paused=loop.paused, graphs=bound)

    def graph_reactor(name: str) -> str:
        if name not in runtime.graphs:
            raise HTTPException(404, f"unknown graph {name!r} (running: {sorted(runtime.graphs)})")
        return runtime.graphs[name].graph.reactor_name

    def known_reactor(name: str) -> str:
        if name not in runtime.reactors:
            known = sorted(runtime.reactors)
            raise HTTPException(404, f"unknown reactor {name!r} (running: {known})")
        return name

    @api.post("/v1/graphs/{name}/pause", tags=["control"], responses={404: {}})
    async def pause_graph(name: str) -> PauseState:
        """Pause the reactor the graph binds to (every graph on it stops firing)."""
        runtime.reactors[graph_reactor(name)].pause()
        return pause_state(graph_reactor(name))

    @api.post("/v1/graphs/{name}/resume", tags=["control"], responses={404: {}})
    async def resume_graph(name: str) -> PauseState:
        runtime.reactors[graph_reactor(name)].resume()
        return pause_state(graph_reactor(name))

    @api.post("/v1/reactors/{name}/pause", tags=["control"], responses={404: {}})
    async def pause_reactor(name: str) -> PauseState:
        runtime.reactors[known_reactor(name)].pause()
        return pause_state(name)

    @api.post("/v1/reactors/{name}/resume", tags=["control"], responses={404: {}})
    async def resume_reactor(name: str) -> PauseState:
        runtime.reactors[known_reactor(name)].resume()
        return pause_state(name)

    @api.post(
        "/v1/accumulators/{name}",
        tags=["push"],
        status_code=202,
        responses={400: {}, 404: {}, 409: {}, 422: {}, 503: {}},
        openapi_extra={
            "requestBody": {
                "required": True,
                "description": "One event, any JSON value.",
                "content": {"application/json": {"schema": {}}},
            }
        },
    )
    async def push(name: str, request: Request) -> Pushed:
        """Push one JSON event into a passthrough accumulator."""
        problem = _push_problem(runtime, name)
        if problem is not None:
            raise HTTPException(*problem)
        try:
            event = orjson.loads(await request.body())
        except orjson.JSONDecodeError as error:
            raise HTTPException(400, f"invalid JSON: {error}") from None
        status, detail = await _push(runtime, name, event, push_timeout)
        if status != 202:
            raise HTTPException(status, detail)
        return Pushed(accumulator=name, accepted=True)

    @app.websocket("/v1/ws/accumulators/{name}")
    async def push_socket(websocket: WebSocket, name: str) -> None:
        """Each text frame is one JSON event; each gets ``{"ok": true}`` or an error."""
        if token:
            header = websocket.headers.get("authorization", "")
            scheme, _, given = header.partition(" ")
            if scheme.lower() != "bearer":
                given = websocket.query_params.get("token", "")
            if not _token_matches(given, token):
                await _deny(websocket, 401, "missing or wrong bearer token")
                return
        problem = _push_problem(runtime, name)
        if problem is not None:
            await _deny(websocket, *problem)
            return
        await websocket.accept()
        with contextlib.suppress(WebSocketDisconnect):
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                frame = message.get("text")
                if frame is None:
                    frame = message.get("bytes") or b""
                reply = await _push_frame(runtime, name, frame, push_timeout)
                await websocket.send_text(orjson.dumps(reply).decode())

    @api.get("/v1/executions", tags=["history"], responses={404: {}})
    async def executions(
        graph: str | None = None, limit: Annotated[int, Query(ge=1, le=10_000)] = 100
    ) -> Executions:
        """Recent graph executions from the state store, newest first."""
        rows = await asyncio.to_thread(_need_store(store).executions, graph, limit)
        return Executions(executions=rows)

    @api.get("/v1/results", tags=["history"], responses={404: {}})
    async def results(
        graph: str | None = None, limit: Annotated[int, Query(ge=1, le=10_000)] = 100
    ) -> Results:
        """Recent graph results kept by ``state_store`` sinks, newest first."""
        rows = await asyncio.to_thread(_need_store(store).results, graph, limit)
        return Results(results=rows)

    @api.get("/v1/dead-letters", tags=["history"], responses={404: {}})
    async def dead_letters(limit: Annotated[int, Query(ge=1, le=10_000)] = 100) -> DeadLetters:
        """Recent dead letters from the state store, newest first."""
        rows = await asyncio.to_thread(_need_store(store).dead_letters, limit)
        return DeadLetters(dead_letters=rows)

    @api.get(
        "/metrics",
        tags=["metrics"],
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE: {}}}, 404: {}},
    )
    async def prometheus() -> Response:
        """Prometheus metrics in text exposition format."""
        if metrics is None:
            raise HTTPException(404, "metrics are not enabled on this worker")
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    if token:

        @api.get("/openapi.json", include_in_schema=False)
        async def openapi() -> JSONResponse:
            return JSONResponse(app.openapi())

    app.include_router(api)
    return app


def _need_store(store: StateStore | None) -> StateStore:
    if store is None:
        raise HTTPException(404, "no state store is configured on this worker")
    return store


def _push_problem(runtime: Runtime, name: str) -> tuple[int, str] | None:
    """``(status, reason)`` when ``name`` cannot take pushes."""
    runner = runtime.accumulators.get(name)
    if runner is None:
        return 404, f"unknown accumulator {name!r} (running: {sorted(runtime.accumulators)})"
    if runner.spec.kind is not AccumulatorKind.PASSTHROUGH:
        return 409, (
            f"accumulator {name!r} is a {runner.spec.kind.value} accumulator; "
            "only passthrough accumulators accept pushes"
        )
    return None


async def _push(runtime: Runtime, name: str, event: Any, timeout: float) -> tuple[int, str]:
    try:
        await asyncio.wait_for(runtime.push(name, event), timeout)
    except AccumulatorInputError as error:
        return 422, str(error)
    except TimeoutError:
        return 503, f"accumulator {name!r}: channel stayed full for {timeout}s; retry later"
    except (KeyError, ValueError) as error:
        return 409, str(error).strip("\"'")
    return 202, "accepted"


async def _push_frame(
    runtime: Runtime, name: str, frame: str | bytes, timeout: float
) -> dict[str, Any]:
    try:
        event = orjson.loads(frame)
    except orjson.JSONDecodeError as error:
        return {"ok": False, "error": f"invalid JSON: {error}"}
    status, detail = await _push(runtime, name, event, timeout)
    return {"ok": True} if status == 202 else {"ok": False, "error": detail}


async def _deny(websocket: WebSocket, status: int, detail: str) -> None:
    """Refuse a WebSocket handshake with an HTTP status when the server allows it."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(JSONResponse({"detail": detail}, status))
    else:
        await websocket.close(code=1008, reason=detail[:120])


def _accumulator_health(runtime: Runtime) -> dict[str, AccumulatorHealth]:
    lag_by_topic: dict[str, int] = {}
    for source in runtime.sources:
        with contextlib.suppress(Exception):
            for topic, _partition, info in source_partitions(source.health()):
                if isinstance(info.get("lag"), int):
                    lag_by_topic[topic] = lag_by_topic.get(topic, 0) + info["lag"]
    result = {}
    for name, runner in runtime.accumulators.items():
        health = runner.health()
        states = {
            loop.state.value for loop in runtime.reactors.values() if name in loop.spec.accumulators
        }
        status: str
        if "failed" in states:
            status = "failed"
        elif health["channel_depth"] >= health["channel_capacity"]:
            status = "backpressure"
        elif states and states <= {"paused"}:
            status = "paused"
        elif states == {"stopped"}:
            status = "stopped"
        else:
            status = "ok"
        lag = lag_by_topic.get(runner.spec.topic) if runner.spec.topic else None
        result[name] = AccumulatorHealth(**{**health, "status": status, "lag": lag})
    return result


class _InLoopServer(uvicorn.Server):
    """uvicorn without signal handlers: the worker owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class HttpServer:
    """Runs the app with uvicorn inside the current event loop: ``await start()``/``stop()``.

    Refuses (``ValueError``) a non-loopback ``host`` when the app has no token. ``port=0``
    picks a free port; read it from ``port`` after ``start``.
    """

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 8080) -> None:
        check_bind(host, getattr(app.state, "headrace_token", None))
        self.app = app
        self.host = host
        self.port = port
        self._server: _InLoopServer | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        """Bind (errors surface here as ``OSError``) and serve in a background task."""
        if self._task is not None:
            return
        sock = _bind(self.host, self.port)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=5,
        )
        self._server = _InLoopServer(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="http-api")
        while not self._server.started:
            if self._task.done():
                self._task.result()
                raise RuntimeError("HTTP server stopped during startup")
            await asyncio.sleep(0.01)
        log.info("http api listening", url=self.url)

    async def stop(self) -> None:
        """Close open connections (WebSockets get 1012) and stop serving."""
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        try:
            await self._task
        finally:
            self._server, self._task = None, None
        log.info("http api stopped")


def _bind(host: str, port: int) -> socket.socket:
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


__all__ = ["HttpServer", "check_bind", "create_app", "is_loopback"]
