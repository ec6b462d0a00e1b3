"""The worker's HTTP operations API (FastAPI) and the uvicorn server that runs it in-loop.

Loopback by default. With a token (``HEADRACE_TOKEN``) every endpoint but
``GET /v1/health/live`` needs ``Authorization: Bearer <token>``; WebSockets take the header
or a single-use ticket from ``POST /v1/auth/ws-ticket`` as ``?ticket=``. Without a token only
reads are served, unless ``allow_unauthenticated``. ``Host`` and ``Origin`` are checked
(``http_guard``), push bodies and frames are capped by the value limits, connections by
``http_server``.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hmac
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import pydantic_core
import structlog
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, WebSocket
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict
from starlette.requests import ClientDisconnect
from starlette.websockets import WebSocketDisconnect

from headrace.accumulators import AccumulatorInputError, AccumulatorKind
from headrace.accumulators.limits import DEFAULT_LIMITS, ValueLimits, too_deep
from headrace.engine.ops.http_guard import BrowserGuard, HostPolicy, read_capped_body, require_json
from headrace.engine.ops.http_server import (
    AcceptErrorThrottle,
    ConnectionLimits,
    _InLoopServer,
    bind_socket,
    uvicorn_config,
)
from headrace.engine.ops.log_scrub import register_secret
from headrace.engine.ops.metrics import CONTENT_TYPE, Metrics, source_partitions
from headrace.engine.ops.net import is_loopback
from headrace.engine.ops.tickets import TicketBook
from headrace.engine.store.state_store import StateStore

if TYPE_CHECKING:
    from headrace.engine.config.loader import LoadedConfig
    from headrace.engine.runtime import Runtime

log = structlog.get_logger("headrace.http")

TOKEN_SETTING = "HEADRACE_TOKEN"
NO_TOKEN_WRITES = (
    f"this worker has no API token, so it refuses state-changing requests: set {TOKEN_SETTING}, "
    "or worker.http.allow_unauthenticated = true (loopback only)"
)
WRONG_TOKEN = "missing or wrong bearer token"

_bearer = HTTPBearer(auto_error=False, description=f"The worker's API token ({TOKEN_SETTING}).")


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class Problem(BaseModel):
    detail: str


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


class StoreHealth(_Open):
    status: str
    open: bool
    queued: int
    dropped_executions: int
    rejected_values: int
    write_errors: int
    last_error: str | None
    last_rejected: str | None


class PauseState(BaseModel):
    reactor: str
    paused: bool
    graphs: list[str]


class Pushed(BaseModel):
    accumulator: str
    accepted: bool


class Ticket(BaseModel):
    ticket: str
    expires_in: float


class Executions(BaseModel):
    executions: list[dict[str, Any]]


class Results(BaseModel):
    results: list[dict[str, Any]]


class DeadLetters(BaseModel):
    dead_letters: list[dict[str, Any]]


def _problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": Problem} for status in statuses}


def check_bind(host: str, token: str | None) -> None:
    """Refuse to expose the API beyond loopback without a token."""
    if not token and not is_loopback(host):
        raise ValueError(
            f"HTTP API bind address {host!r} is not loopback: set a token ({TOKEN_SETTING}) "
            "or bind to 127.0.0.1"
        )


def _token_matches(given: str | None, token: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


class _SocketCount:
    """Open push WebSockets, per worker and per accumulator."""

    def __init__(self, total: int, per_accumulator: int) -> None:
        self.max_total, self.max_each = total, per_accumulator
        self.open: Counter[str] = Counter()

    def refusal(self, name: str) -> str | None:
        if self.open.total() >= self.max_total:
            return f"{self.max_total} WebSockets are open (worker.http.max_websockets); retry later"
        if self.open[name] >= self.max_each:
            return (
                f"{self.max_each} WebSockets are open on accumulator {name!r} "
                "(worker.http.max_websockets_per_accumulator); retry later"
            )
        return None


def create_app(
    runtime: Runtime,
    *,
    metrics: Metrics | None = None,
    store: StateStore | None = None,
    token: str | None = None,
    push_timeout: float = 10.0,
    allow_unauthenticated: bool = False,
    host: str = "127.0.0.1",
    allowed_hosts: Sequence[str] = (),
    allowed_origins: Sequence[str] = (),
    limits: ValueLimits = DEFAULT_LIMITS,
    max_websockets: int = 256,
    max_websockets_per_accumulator: int = 64,
    ticket_ttl: float = 30.0,
    packages: Any = None,
    packages_max_bytes: int = 16 * 1024 * 1024,
) -> FastAPI:
    """The operations API over ``runtime``; ``push_timeout`` bounds waits on full channels.

    ``host`` is the bind address the ``Host`` check accepts (with ``allowed_hosts``).
    """
    token = token or None
    register_secret(token)
    app = FastAPI(
        title="Headrace worker",
        version="1",
        description=(
            "Health, pause/resume, pushes into passthrough accumulators, metrics. "
            + (
                f"Every operation but liveness needs 'Authorization: Bearer' + {TOKEN_SETTING}."
                if token
                else "No token: reads are open"
                + ("; so are writes (allow_unauthenticated)." if allow_unauthenticated else ".")
            )
        ),
        # With a token the description needs it too; browsable docs are only served without.
        openapi_url=None if token else "/openapi.json",
        docs_url=None if token else "/docs",
        redoc_url=None if token else "/redoc",
    )
    app.state.headrace_token = token
    app.state.headrace_protected = bool(token)
    tickets = TicketBook(ttl=ticket_ttl)
    sockets = _SocketCount(max_websockets, max_websockets_per_accumulator)
    app.state.headrace_sockets = sockets

    if token:

        def authorize(
            credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
        ) -> None:
            given = credentials.credentials if credentials is not None else None
            if not _token_matches(given, token):
                raise HTTPException(401, WRONG_TOKEN, headers={"WWW-Authenticate": "Bearer"})

        read_deps: list[Any] = [Depends(authorize)]
        write_deps: list[Any] = [Depends(authorize)]
        read_errors, write_errors = _problems(401), _problems(401)
    else:

        def refuse_writes() -> None:
            if not allow_unauthenticated:
                raise HTTPException(403, NO_TOKEN_WRITES)

        read_deps, write_deps = [], [Depends(refuse_writes)]
        read_errors, write_errors = {}, _problems(403)

    @app.exception_handler(ClientDisconnect)
    async def client_left(_request: Request, _error: ClientDisconnect) -> Response:
        log.debug("http client disconnected before sending the whole body")
        return Response(status_code=400)  # nobody is listening any more

    @app.get("/v1/health/live", tags=["health"])
    async def live() -> Live:
        """Liveness: the process answers. Needs no token."""
        return Live(status="ok")

    known = Depends(_known_query_only)
    reads = APIRouter(dependencies=[*read_deps, known], responses={**read_errors, **_problems(400)})
    writes = APIRouter(
        dependencies=[*write_deps, known], responses={**write_errors, **_problems(400)}
    )

    @reads.get("/v1/health", tags=["health"])
    async def health() -> dict[str, Any]:
        """Summary: status, readiness, the graphs that run; with packages enabled, what this
        worker runs (per package: name, version, status, error), whether it waits for
        uploads, and (shared state store) every worker of the fleet."""
        body: dict[str, Any] = {
            "status": runtime.status(),
            "ready": runtime.ready(),
            "graphs": sorted(runtime.graphs),
        }
        if packages is not None:
            body["packages"] = await packages.health()
        return body

    @reads.get("/v1/health/ready", tags=["health"], responses={503: {"model": Ready}})
    async def ready() -> Any:
        """Readiness: 200 while the runtime runs and no component failed, else 503."""
        body = Ready(
            status=runtime.status(), ready=runtime.ready(), failures=runtime.supervisor.health()
        )
        if body.ready:
            return body
        return JSONResponse(body.model_dump(), status_code=503)

    @reads.get("/v1/health/graphs", tags=["health"])
    async def graphs_health() -> dict[str, GraphHealth]:
        return {n: GraphHealth(**h) for n, h in runtime.health()["graphs"].items()}

    @reads.get("/v1/health/graphs/{name}", tags=["health"], responses=_problems(404))
    async def graph_health(name: str) -> GraphHealth:
        graphs = runtime.health()["graphs"]
        if name not in graphs:
            raise HTTPException(404, f"unknown graph {name!r} (running: {sorted(graphs)})")
        return GraphHealth(**graphs[name])

    @reads.get("/v1/health/accumulators", tags=["health"])
    async def accumulators_health() -> dict[str, AccumulatorHealth]:
        return _accumulator_health(runtime)

    @reads.get("/v1/health/state-store", tags=["health"], responses=_problems(404))
    async def store_health() -> StoreHealth:
        """The state store writer: ``degraded`` once a write was dropped or a value refused."""
        return StoreHealth(**_need_store(store).health())

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

    @writes.post("/v1/graphs/{name}/pause", tags=["control"], responses=_problems(404))
    async def pause_graph(name: str) -> PauseState:
        """Pause the reactor the graph binds to (every graph on it stops firing)."""
        runtime.reactors[graph_reactor(name)].pause()
        return pause_state(graph_reactor(name))

    @writes.post("/v1/graphs/{name}/resume", tags=["control"], responses=_problems(404))
    async def resume_graph(name: str) -> PauseState:
        runtime.reactors[graph_reactor(name)].resume()
        return pause_state(graph_reactor(name))

    @writes.post("/v1/reactors/{name}/pause", tags=["control"], responses=_problems(404))
    async def pause_reactor(name: str) -> PauseState:
        runtime.reactors[known_reactor(name)].pause()
        return pause_state(name)

    @writes.post("/v1/reactors/{name}/resume", tags=["control"], responses=_problems(404))
    async def resume_reactor(name: str) -> PauseState:
        runtime.reactors[known_reactor(name)].resume()
        return pause_state(name)

    @writes.post("/v1/auth/ws-ticket", tags=["auth"], status_code=201)
    async def ws_ticket() -> Ticket:
        """A single-use ticket for one WebSocket handshake (``?ticket=``), valid briefly, so
        the token itself never travels in a URL."""
        return Ticket(ticket=tickets.issue(), expires_in=tickets.ttl)

    @writes.post(
        "/v1/accumulators/{name}",
        tags=["push"],
        status_code=202,
        responses=_problems(400, 404, 409, 413, 415, 422, 503),
        openapi_extra={
            "requestBody": {
                "required": True,
                "description": (
                    "One event, a JSON value. Each passthrough accumulator's own path below "
                    "gives its model's schema."
                ),
                "content": {"application/json": {"schema": {}}},
            }
        },
    )
    async def push(name: str, request: Request) -> Pushed:
        """Push one JSON event into a passthrough accumulator."""
        problem = _push_problem(runtime, name)
        if problem is not None:
            raise HTTPException(*problem)
        require_json(request)
        body = await read_capped_body(request, limits.max_bytes)
        event, problem = parse_event(body, limits)
        if problem is not None:
            raise HTTPException(*problem)
        status, detail = await _push(runtime, name, event, push_timeout)
        if status != 202:
            raise HTTPException(status, detail)
        return Pushed(accumulator=name, accepted=True)

    def socket_refusal(websocket: WebSocket) -> tuple[int, str] | None:
        if token:
            scheme, _, given = websocket.headers.get("authorization", "").partition(" ")
            if scheme.lower() == "bearer" and _token_matches(given, token):
                return None
            if tickets.redeem(websocket.query_params.get("ticket")):
                return None
            return 401, (
                f"{WRONG_TOKEN}: send 'Authorization: Bearer <{TOKEN_SETTING}>', or "
                "?ticket= from POST /v1/auth/ws-ticket"
            )
        return None if allow_unauthenticated else (403, NO_TOKEN_WRITES)

    @app.websocket("/v1/ws/accumulators/{name}")
    async def push_socket(websocket: WebSocket, name: str) -> None:
        """Each text frame is one JSON event; each gets ``{"ok": true}`` or an error."""
        refusal = socket_refusal(websocket) or _push_problem(runtime, name)
        if refusal is None and (full := sockets.refusal(name)) is not None:
            refusal = (503, full)
        if refusal is not None:
            await _deny(websocket, *refusal)
            return
        sockets.open[name] += 1
        try:
            await websocket.accept()
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                frame = message.get("text")
                if frame is None:
                    frame = message.get("bytes") or b""
                reply = await _push_frame(runtime, name, frame, push_timeout, limits)
                await websocket.send_text(orjson.dumps(reply).decode())
        except (WebSocketDisconnect, OSError):
            return  # the client went away: expected, not an error
        finally:
            sockets.open[name] -= 1

    @reads.get("/v1/executions", tags=["history"], responses=_problems(404))
    async def executions(
        graph: str | None = None, limit: Annotated[int, Query(ge=1, le=10_000)] = 100
    ) -> Executions:
        """Recent graph executions from the state store, newest first."""
        rows = await asyncio.to_thread(_need_store(store).executions, graph, limit)
        return Executions(executions=rows)

    @reads.get("/v1/results", tags=["history"], responses=_problems(404))
    async def results(
        graph: str | None = None, limit: Annotated[int, Query(ge=1, le=10_000)] = 100
    ) -> Results:
        """Recent graph results kept by ``state_store`` sinks, newest first."""
        rows = await asyncio.to_thread(_need_store(store).results, graph, limit)
        return Results(results=rows)

    @reads.get("/v1/dead-letters", tags=["history"], responses=_problems(404))
    async def dead_letters(limit: Annotated[int, Query(ge=1, le=10_000)] = 100) -> DeadLetters:
        """Recent dead letters from the state store, newest first."""
        rows = await asyncio.to_thread(_need_store(store).dead_letters, limit)
        return DeadLetters(dead_letters=rows)

    @reads.get(
        "/metrics",
        tags=["metrics"],
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE: {}}}, **_problems(404)},
    )
    async def prometheus() -> Response:
        """Prometheus metrics in text exposition format."""
        if metrics is None:
            raise HTTPException(404, "metrics are not enabled on this worker")
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    if token:

        @reads.get("/openapi.json", include_in_schema=False)
        async def openapi() -> JSONResponse:
            return JSONResponse(app.openapi())

    app.include_router(reads)
    app.include_router(writes)
    if packages is not None and token:  # uploads run code: never without a token
        from headrace.engine.packages.http import packages_router

        app.include_router(packages_router(packages, [*write_deps, known], packages_max_bytes))
    app.openapi = _with_push_schemas(app, runtime)  # type: ignore[method-assign]
    if allowed_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(allowed_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(
        BrowserGuard, hosts=HostPolicy(host, allowed_hosts), allowed_origins=allowed_origins
    )
    return app


def _known_query_only(request: Request) -> None:
    """400 for a query parameter the endpoint does not take (``?limt=5`` is not ignored) or
    one given twice (which value would count?)."""
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None or not request.query_params:
        return
    taken = _query_names(dependant)
    for key in taken:  # every query parameter here takes one value
        if len(request.query_params.getlist(key)) > 1:
            raise HTTPException(400, f"query parameter {key!r} given more than once")
    unknown = sorted(set(request.query_params) - taken)
    if unknown:
        takes = ", ".join(sorted(taken)) or "none"
        raise HTTPException(
            400, f"unknown query parameter {unknown[0]!r} (this endpoint takes: {takes})"
        )


def _query_names(dependant: Any) -> set[str]:
    names = {param.alias for param in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


def _pushable(runtime: Runtime) -> list[str]:
    fed = {name for source in runtime.sources for name in source.accumulators}
    return sorted(
        name
        for name, runner in runtime.accumulators.items()
        if runner.spec.kind is AccumulatorKind.PASSTHROUGH and name not in fed
    )


def _with_push_schemas(app: FastAPI, runtime: Runtime) -> Callable[[], dict[str, Any]]:
    """``app.openapi`` plus one push path per passthrough accumulator, whose request body is
    the accumulator's model JSON Schema (any JSON value when it has no model)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        spec = generate()
        generic = spec["paths"]["/v1/accumulators/{name}"]["post"]
        schemas = spec.setdefault("components", {}).setdefault("schemas", {})
        for name in _pushable(runtime):
            model = runtime.accumulators[name].spec.model
            operation = copy.deepcopy(generic)
            operation["operationId"] = f"push_{name}"
            operation["summary"] = f"Push into {name}"
            operation["parameters"] = [
                p for p in operation.get("parameters", []) if p.get("name") != "name"
            ]
            schema: dict[str, Any] = {}
            if model is not None:
                schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                schemas.update(schema.pop("$defs", {}))
            strict = runtime.accumulators[name].spec.strict
            operation["requestBody"] = {
                "required": True,
                "description": f"One event for {name!r}"
                + (f", validated by {model.__name__}" if model else ", any JSON value")
                + (" in strict mode." if model and strict else "."),
                "content": {"application/json": {"schema": schema}},
            }
            spec["paths"][f"/v1/accumulators/{name}"] = {"post": operation}
        app.openapi_schema = spec
        return spec

    return openapi


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


def parse_event(data: str | bytes, limits: ValueLimits) -> tuple[Any, tuple[int, str] | None]:
    """``(event, None)``, or ``(None, (status, reason))`` for invalid JSON (400) or JSON too
    deep to parse (422). Integers keep every digit (orjson would turn those beyond 64 bits
    into floats); NaN and Infinity are not JSON."""
    try:
        return pydantic_core.from_json(data, allow_inf_nan=False), None
    except ValueError as error:
        if "recursion limit" in str(error):
            return None, (422, too_deep(limits.max_depth))
        return None, (400, f"invalid JSON: {error}")


async def _push_frame(
    runtime: Runtime, name: str, frame: str | bytes, timeout: float, limits: ValueLimits
) -> dict[str, Any]:
    event, problem = parse_event(frame, limits)
    if problem is not None:
        return {"ok": False, "error": problem[1]}
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


class HttpServer:
    """Runs the app with uvicorn inside the current event loop: ``await start()``/``stop()``.

    Refuses (``ValueError``) a non-loopback ``host`` when the app has no token. ``port=0``
    picks a free port; read it from ``port`` after ``start``.
    """

    def __init__(
        self,
        app: FastAPI,
        host: str = "127.0.0.1",
        port: int = 8080,
        limits: ConnectionLimits | None = None,
    ) -> None:
        check_bind(host, getattr(app.state, "headrace_token", None))
        self.app = app
        self.host = host
        self.port = port
        self.limits = limits or ConnectionLimits()
        self._server: _InLoopServer | None = None
        self._task: asyncio.Task[None] | None = None
        self._throttle: AcceptErrorThrottle | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        """Bind (errors surface here as ``OSError``) and serve in a background task."""
        if self._task is not None:
            return
        sock = bind_socket(self.host, self.port)
        self.port = sock.getsockname()[1]
        self._throttle = AcceptErrorThrottle(
            asyncio.get_running_loop(), self.limits.accept_log_interval
        )
        self._throttle.install()
        self._server = _InLoopServer(uvicorn_config(self.app, self.limits))
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="http-api")
        while not self._server.started:
            if self._task.done():
                self._task.result()
                raise RuntimeError("HTTP server stopped during startup")
            await asyncio.sleep(0.01)
        protected = bool(getattr(self.app.state, "headrace_protected", False))
        log.info(
            "http api listening",
            url=self.url,
            protected=protected,
            auth=(
                f"bearer token ({TOKEN_SETTING}) on every endpoint but /v1/health/live"
                if protected
                else f"none: {TOKEN_SETTING} is not set"
            ),
        )
        if not protected:
            log.warning(
                "http api is not protected: anyone on this machine can read it; set "
                f"{TOKEN_SETTING} to require a token",
                url=self.url,
            )

    async def stop(self) -> None:
        """Close open connections (WebSockets get 1012) and stop serving."""
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        try:
            await self._task
        finally:
            self._server, self._task = None, None
            if self._throttle is not None:
                self._throttle.remove()
        log.info("http api stopped")


def build_http_server(
    runtime: Runtime,
    config: LoadedConfig,
    *,
    metrics: Metrics | None = None,
    store: StateStore | None = None,
    packages: Any = None,
) -> HttpServer | None:
    """The worker's HTTP server from its config (``None`` when disabled); logs the notices
    found while loading the token settings."""
    for notice in config.notices:
        log.warning(notice)
    http = config.worker.http
    if not http.enabled:
        log.info("http api disabled (worker.http.enabled = false)")
        return None
    limits = config.worker.limits.value_limits()
    token = http.token.get_secret_value() if http.token else None
    app = create_app(
        runtime,
        metrics=metrics,
        store=store,
        token=token or None,
        push_timeout=http.push_timeout,
        allow_unauthenticated=http.allow_unauthenticated,
        host=http.host,
        allowed_hosts=http.allowed_hosts,
        allowed_origins=http.allowed_origins,
        limits=limits,
        max_websockets=http.max_websockets,
        max_websockets_per_accumulator=http.max_websockets_per_accumulator,
        packages=packages if config.worker.packages.enabled else None,
        packages_max_bytes=config.worker.packages.max_archive_bytes,
    )
    connections = ConnectionLimits(
        max_connections=http.max_connections,
        header_timeout=http.header_timeout,
        keep_alive_timeout=http.keep_alive_timeout,
        max_frame_bytes=limits.max_bytes,
    )
    return HttpServer(app, http.host, http.port, connections)


__all__ = ["HttpServer", "build_http_server", "check_bind", "create_app", "is_loopback"]
