"""The state store: execution history, dead letters and last accumulator values, in SQL.

SQLite file by default, PostgreSQL (``postgresql+psycopg://...``) for fleets of workers
sharing one store. Timestamps are Unix seconds. Tables: ``headrace_executions``,
``headrace_dead_letters``, ``headrace_accumulator_values``, ``headrace_results`` (graph
outputs written by a ``state_store`` sink), and the packages' ``headrace_packages`` and
``headrace_package_workers`` (``packages_table``). To keep several deployments in
one PostgreSQL database, give each its own schema through the URL, e.g.
``?options=-csearch_path%3Dmyteam``.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import orjson
import pydantic
import pydantic_core
import sqlalchemy as sa
import structlog
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.pool import StaticPool

from headrace.accumulators import AccumulatorKind, get_accumulator
from headrace.accumulators.limits import DEFAULT_LIMITS, ValueLimits, depth_problem, size_problem
from headrace.connectors.dead_letters import DeadLetter
from headrace.engine.observers import ExecutionBatch, ExecutionRecord

if TYPE_CHECKING:
    from headrace.engine.runtime import Runtime

log = structlog.get_logger("headrace.state_store")

STORED_KINDS = frozenset({AccumulatorKind.POLLING, AccumulatorKind.PASSTHROUGH})
"""Accumulator kinds whose last value is kept: Kafka cannot replay them after a restart."""

_SCHEMA_LOCK_KEY = 0x68656164  # PostgreSQL advisory lock serialising concurrent schema creation


def storable_problem(value: Any, limits: ValueLimits) -> str | None:
    """Why ``value`` cannot be stored (too deep, too big, not serialisable); ``None`` if it can."""
    problem = depth_problem(value, limits.stored_depth)
    if problem is not None:
        return problem
    try:
        size = len(_dumps(value))
    except Exception as error:
        return f"value cannot be written as JSON: {error}"
    return size_problem(size, limits.max_bytes)


def _dumps(value: Any) -> str:
    """JSON for anything a graph may carry: models, bytes (base64), NaN (null), else repr."""
    return pydantic_core.to_json(
        value, bytes_mode="base64", inf_nan_mode="null", fallback=repr
    ).decode()


class _JsonText(sa.TypeDecorator[Any]):
    """JSON kept as TEXT (SQLite's JSON column type would coerce ``"4.0"`` to ``4``)."""

    impl = sa.Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: sa.Dialect) -> str | None:
        return None if value is None else _dumps(value)

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> Any:
        return None if value is None else orjson.loads(value)


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON(none_as_null=True).with_variant(_JsonText(), "sqlite")


metadata = sa.MetaData()

executions_table = sa.Table(
    "headrace_executions",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("graph", sa.String(255), nullable=False, index=True),
    sa.Column("reactor", sa.String(255), nullable=False),
    sa.Column("fire", sa.BigInteger, nullable=False),
    sa.Column("started_at", sa.Double, nullable=False),
    sa.Column("duration", sa.Double, nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("error", sa.Text),
    sa.Column("node", sa.String(255)),
    sa.Column("worker", sa.String(255), nullable=False),
)

dead_letters_table = sa.Table(
    "headrace_dead_letters",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("payload", _json()),
    sa.Column("payload_bytes", sa.LargeBinary),
    sa.Column("accumulator", sa.String(255)),
    sa.Column("graph", sa.String(255)),
    sa.Column("node", sa.String(255)),
    sa.Column("topic", sa.String(255)),
    sa.Column("partition", sa.Integer),
    sa.Column("offset", sa.BigInteger),
    sa.Column("at", sa.Double, nullable=False),
    sa.Column("worker", sa.String(255), nullable=False),
)

results_table = sa.Table(
    "headrace_results",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("graph", sa.String(255), nullable=False, index=True),
    sa.Column("outputs", _json()),
    sa.Column("at", sa.Double, nullable=False),
    sa.Column("worker", sa.String(255), nullable=False),
)

values_table = sa.Table(
    "headrace_accumulator_values",
    metadata,
    sa.Column("accumulator", sa.String(255), primary_key=True),
    sa.Column("value", _json()),
    sa.Column("value_type", sa.String(512)),
    sa.Column("updated_at", sa.Double, nullable=False),
    sa.Column("worker", sa.String(255), nullable=False),
)


_EXECUTION_COLUMNS = (
    "graph",
    "reactor",
    "fire",
    "started_at",
    "duration",
    "status",
    "attempts",
    "error",
    "node",
    "worker",
)


def _execution_insert(dialect: sa.Dialect) -> str:
    """The DB-API ``INSERT`` of one execution row, positional parameters in
    ``_EXECUTION_COLUMNS`` order: ``executemany`` of plain tuples costs a fraction of
    SQLAlchemy's per-row parameter compiling (issue 10: ~8 µs of CPU per message)."""
    marker = "?" if dialect.paramstyle == "qmark" else "%s"
    return (
        f"INSERT INTO {executions_table.name} ({', '.join(_EXECUTION_COLUMNS)}) "
        f"VALUES ({', '.join([marker] * len(_EXECUTION_COLUMNS))})"
    )


def _type_name(value: Any) -> str | None:
    cls = type(value)
    if isinstance(value, pydantic.BaseModel):
        return f"{cls.__module__}:{cls.__qualname__}"
    return None


def _loaded_model(type_name: str) -> type[pydantic.BaseModel] | None:
    """The model class named ``module:qualname`` if its module is already imported."""
    module_name, _, qualname = type_name.partition(":")
    found: Any = sys.modules.get(module_name)
    for part in qualname.split("."):
        found = getattr(found, part, None)
    if isinstance(found, type) and issubclass(found, pydantic.BaseModel):
        return found
    return None


class _SuccessBatches:
    """One graph's newest batches of successful executions, oldest first."""

    __slots__ = ("batches", "count")

    def __init__(self) -> None:
        self.batches: deque[ExecutionBatch] = deque()
        self.count = 0

    def add(self, batch: ExecutionBatch, cap: int) -> int:
        """Keep ``batch``; drop the oldest batches the newer ones make unneeded (at least
        ``cap`` executions without them). Returns how many executions were dropped."""
        batches = self.batches
        batches.append(batch)
        self.count += len(batch.fires)
        dropped = 0
        while self.count - len(batches[0].fires) >= cap:
            old = len(batches.popleft().fires)
            self.count -= old
            dropped += old
        return dropped

    def records(self, cap: int) -> tuple[list[ExecutionRecord], int]:
        """The newest ``cap`` executions as records, in order, and how many were left out."""
        records = [record for batch in self.batches for record in batch.records()]
        skipped = max(0, len(records) - cap)
        return records[skipped:], skipped


class StateStore:
    """Keeps execution history, dead letters and last accumulator values in SQL.

    Use it as a runtime observer (``attach(runtime)`` before start), as the runtime's
    dead-letter sink (``send`` writes durably before returning), as the store behind a
    ``StoreSink`` (``write_result`` writes durably before returning), and after start call
    ``await restore_into(runtime)``. Observer hooks only enqueue; a background thread writes
    in batches every ``flush_interval`` seconds and prunes every ``prune_interval``. When more
    than ``queue_size`` execution records wait, the oldest are dropped and counted; dead
    letters and results are never queued nor dropped. Dead letters reach the store only
    through ``send``: make it (or a ``FanOutDeadLetters`` holding it) the runtime's
    ``dead_letters``.

    A value that cannot be stored (deeper or bigger than ``limits`` allow, or not
    serialisable) never blocks the writer: it is dead-lettered (kind ``"value"``, with the
    reason, without the payload), counted in ``health()["rejected_values"]``, and the rest is
    written. A failed batch keeps its records queued for the next flush.
    """

    def __init__(
        self,
        url: str = "sqlite:///headrace-state.db",
        *,
        retention_executions: int = 10_000,
        retention_dead_letters: int = 100_000,
        retention_results: int = 100_000,
        worker_id: str | None = None,
        accumulators: Iterable[str] | None = None,
        queue_size: int = 10_000,
        flush_interval: float = 0.2,
        prune_interval: float = 60.0,
        limits: ValueLimits = DEFAULT_LIMITS,
        successes_per_flush: int = 100,
    ) -> None:
        for name, number in (
            ("retention_executions", retention_executions),
            ("successes_per_flush", successes_per_flush),
            ("retention_dead_letters", retention_dead_letters),
            ("retention_results", retention_results),
            ("queue_size", queue_size),
        ):
            if number < 1:
                raise ValueError(f"state store {name} must be >= 1, got {number}")
        self.url = sa.make_url(url)
        if self.url.drivername == "postgresql":  # psycopg 3 is the driver Headrace ships with
            self.url = self.url.set(drivername="postgresql+psycopg")
        if self.url.get_backend_name() not in ("sqlite", "postgresql"):
            raise ValueError(
                f"state store URL {self.display_url!r}: only sqlite:/// and "
                "postgresql+psycopg:// are supported"
            )
        self.retention_executions = retention_executions
        self.retention_dead_letters = retention_dead_letters
        self.retention_results = retention_results
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}"
        self.flush_interval = flush_interval
        self.prune_interval = prune_interval
        self.limits = limits
        self.successes_per_flush = successes_per_flush
        self._stored_names = frozenset(accumulators) if accumulators is not None else None
        self._runtime: Runtime | None = None
        self._kind_cache: dict[str, bool] = {}
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._executions: deque[ExecutionRecord] = deque(maxlen=queue_size)
        self._successes: dict[str, _SuccessBatches] = {}
        """Per graph, the newest batches of successes (``on_executions``), turned into
        records only at the flush, which keeps their newest ``successes_per_flush``."""
        self._values: dict[str, tuple[Any, float]] = {}
        self._restoring = False
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._engine: sa.Engine | None = None
        self.dropped_executions = 0
        self.written_executions = 0
        self.unsampled_executions = 0
        self.written_dead_letters = 0
        self.written_results = 0
        self.write_errors = 0
        self.rejected_values = 0
        self.last_error: str | None = None
        self.last_rejected: str | None = None

    @property
    def display_url(self) -> str:
        return self.url.render_as_string(hide_password=True)

    # -- lifecycle ----------------------------------------------------------------------
    def open(self) -> StateStore:
        """Connect, create the schema if missing (safe concurrently) and start the writer."""
        if self._engine is not None:
            return self
        self._engine = self._create_engine()
        try:
            self._create_schema()
        except Exception:
            self._engine.dispose()
            self._engine = None
            raise
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run_writer, name="headrace-state-writer", daemon=True
        )
        self._thread.start()
        log.info("state store open", url=self.display_url, worker=self.worker_id)
        return self

    def _create_engine(self) -> sa.Engine:
        options: dict[str, Any] = {"json_serializer": _dumps, "json_deserializer": orjson.loads}
        if self.url.get_backend_name() == "sqlite":
            database = self.url.database or ""
            if database in ("", ":memory:") or database.startswith("file::memory:"):
                options.update(poolclass=StaticPool, connect_args={"check_same_thread": False})
            else:
                Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
                options["connect_args"] = {"timeout": 30}
        else:
            options["pool_pre_ping"] = True
        engine = sa.create_engine(self.url, **options)
        if self.url.get_backend_name() == "sqlite":
            sa.event.listen(engine, "connect", _sqlite_pragmas)
        return engine

    def _create_schema(self) -> None:
        engine = self._require_engine()
        for attempt in range(1, 4):
            try:
                with engine.begin() as conn:
                    if engine.dialect.name == "postgresql":
                        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_SCHEMA_LOCK_KEY)))
                    metadata.create_all(conn, checkfirst=True)
                return
            except sa.exc.DBAPIError:  # another process created it between check and create
                if attempt == 3:
                    raise
                time.sleep(0.1 * attempt)

    def close(self) -> None:
        """Write everything still queued, stop the writer and disconnect."""
        if self._engine is None:
            return
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        try:
            self.flush()
        except Exception as error:  # reported, never raised: a stopping worker still exits 0
            with self._lock:
                successes = len(self._take_successes())
                lost = len(self._executions) + successes + len(self._values)
                self.dropped_executions += len(self._executions) + successes
                self._executions.clear()
                self._values.clear()
            self.write_errors += 1
            self.last_error = repr(error)
            log.error(
                "state store: last writes lost on close",
                url=self.display_url,
                lost=lost,
                error=repr(error),
            )
        finally:
            self._engine.dispose()
            self._engine = None
        log.info("state store closed", url=self.display_url)

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    def __enter__(self) -> StateStore:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _require_engine(self) -> sa.Engine:
        if self._engine is None:
            raise RuntimeError(f"state store {self.display_url} is not open: call open() first")
        return self._engine

    # -- observer hooks (event loop thread: enqueue only) ----------------------------------
    def attach(self, runtime: Runtime) -> None:
        """Observe ``runtime`` (adds itself to its observers) and learn its accumulator kinds."""
        self._runtime = runtime
        self._kind_cache.clear()
        if self not in runtime.observers.observers:
            runtime.observers.observers.append(self)

    def on_execution(self, record: ExecutionRecord) -> None:
        with self._lock:
            if len(self._executions) == self._executions.maxlen:
                self.dropped_executions += 1
            self._executions.append(record)

    def on_executions(self, batch: ExecutionBatch) -> None:
        """Keep the batch (no record per execution) while it holds some of its graph's
        newest ``successes_per_flush``; older ones count as unsampled (a flush would leave
        them out anyway)."""
        with self._lock:
            kept = self._successes.get(batch.graph)
            if kept is None:
                kept = self._successes[batch.graph] = _SuccessBatches()
            self.unsampled_executions += kept.add(batch, self.successes_per_flush)

    def _take_successes(self) -> list[ExecutionRecord]:
        """The kept successes as records, newest ``successes_per_flush`` per graph (under
        ``_lock``; the rest count as unsampled)."""
        records: list[ExecutionRecord] = []
        for kept in self._successes.values():
            taken, skipped = kept.records(self.successes_per_flush)
            records.extend(taken)
            self.unsampled_executions += skipped
        self._successes.clear()
        return records

    def wants_delivered(self, accumulator: str) -> bool:
        """Only the kinds Kafka cannot replay (``STORED_KINDS``) are kept; an accumulator
        the runtime does not know yet (a package's, being added) may be one."""
        known = self._stored_names is not None or (
            self._runtime is not None and accumulator in self._runtime.accumulators
        )
        return self._keeps(accumulator) if known else True

    def on_delivered(self, accumulator: str, value: Any) -> None:
        if self._restoring or not self._keeps(accumulator):
            return
        with self._lock:
            self._values[accumulator] = (value, time.time())

    def _keeps(self, name: str) -> bool:
        known = self._kind_cache.get(name)
        if known is not None:
            return known
        if self._stored_names is not None:
            keep = name in self._stored_names
        elif self._runtime is not None and name in self._runtime.accumulators:
            keep = self._runtime.accumulators[name].spec.kind in STORED_KINDS
        else:
            try:
                keep = get_accumulator(name).kind in STORED_KINDS
            except KeyError:
                keep = False
        self._kind_cache[name] = keep
        return keep

    # -- dead-letter sink -----------------------------------------------------------------
    async def send(self, letter: DeadLetter) -> None:
        """Write one dead letter; returns once it is committed (retried on connection errors)."""
        await _retrying(
            lambda: self.write_dead_letters([letter]), "dead letter write failed; retrying"
        )

    def write_dead_letters(self, letters: Iterable[DeadLetter]) -> None:
        rows = [self._dead_letter_row(letter) for letter in letters]
        if not rows:
            return
        with self._require_engine().begin() as conn:
            conn.execute(dead_letters_table.insert(), rows)
        with self._lock:
            self.written_dead_letters += len(rows)

    def _dead_letter_row(self, letter: DeadLetter) -> dict[str, Any]:
        raw = letter.payload if isinstance(letter.payload, bytes | bytearray) else None
        payload, reason = None if raw is not None else letter.payload, letter.reason
        problem = (
            size_problem(len(raw), self.limits.max_bytes)
            if raw is not None
            else storable_problem(payload, self.limits)
            if payload is not None
            else None
        )
        if problem is not None:  # the letter is kept, its payload cannot be
            payload, raw, reason = None, None, f"{reason} (payload not stored: {problem})"
        return {
            "kind": letter.kind,
            "reason": reason,
            "payload": payload,
            "payload_bytes": bytes(raw) if raw is not None else None,
            "accumulator": letter.accumulator,
            "graph": letter.graph,
            "node": letter.node,
            "topic": letter.topic,
            "partition": letter.partition,
            "offset": letter.offset,
            "at": letter.at,
            "worker": self.worker_id,
        }

    # -- graph results (the state_store sink) ------------------------------------------------
    async def write_result(self, graph: str, outputs: dict[str, Any]) -> None:
        """Write one graph result; returns once it is committed (retried on connection errors)."""
        at = time.time()
        await _retrying(
            lambda: self.write_results([(graph, outputs, at)]),
            "result write failed; retrying",
            graph=graph,
        )

    def write_results(self, results: Iterable[tuple[str, dict[str, Any], float]]) -> None:
        """Insert ``(graph, outputs, at)`` rows in one transaction; ``ValueError`` naming the
        graph when outputs cannot be stored (see ``limits``)."""
        results = list(results)
        for graph, outputs, _ in results:
            problem = storable_problem(outputs, self.limits)
            if problem is not None:
                raise ValueError(f"graph {graph!r}: result not stored: {problem}")
        rows = [
            {"graph": graph, "outputs": outputs, "at": at, "worker": self.worker_id}
            for graph, outputs, at in results
        ]
        if not rows:
            return
        with self._require_engine().begin() as conn:
            conn.execute(results_table.insert(), rows)
        with self._lock:
            self.written_results += len(rows)

    # -- background writing ---------------------------------------------------------------
    def _run_writer(self) -> None:
        next_prune = time.monotonic() + self.prune_interval
        while not self._stop.is_set():
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            try:
                self.flush()
                if time.monotonic() >= next_prune:
                    next_prune = time.monotonic() + self.prune_interval
                    self.prune()
            except Exception as error:  # keep writing later; never kill the thread
                self.write_errors += 1
                self.last_error = repr(error)
                log.error("state store write failed", error=repr(error))

    def flush(self) -> None:
        """Write every queued execution record and accumulator value now.

        Values that cannot be stored are dead-lettered first; when the batch still fails,
        a connection error re-queues everything and raises, any other error writes the
        records and each value on its own, dead-lettering the values that fail."""
        with self._write_lock:
            with self._lock:
                records = list(self._executions)
                self._executions.clear()
                records.extend(self._take_successes())
                values, self._values = self._values, {}
            if not records and not values:
                return
            records = self._sample(records)
            values = self._reject_unstorable(values)
            try:
                self._write(records, values)
            except sa.exc.OperationalError:
                self._requeue(records, values)
                raise
            except Exception as error:
                log.warning("state store batch failed; writing rows one by one", error=repr(error))
                self._write_one_by_one(records, values)

    def _sample(self, records: list[ExecutionRecord]) -> list[ExecutionRecord]:
        """Every failure, and the newest ``successes_per_flush`` successes of each graph,
        in their original order; the successes left out are counted."""
        cap = self.successes_per_flush
        if len(records) <= cap:
            return records
        seen: dict[str, int] = {}
        kept: list[ExecutionRecord] = []
        for record in reversed(records):
            if record.status == "ok":
                count = seen.get(record.graph, 0)
                if count >= cap:
                    continue
                seen[record.graph] = count + 1
            kept.append(record)
        kept.reverse()
        with self._lock:
            self.unsampled_executions += len(records) - len(kept)
        return kept

    def _reject_unstorable(
        self, values: dict[str, tuple[Any, float]]
    ) -> dict[str, tuple[Any, float]]:
        kept = {}
        for name, (value, at) in values.items():
            problem = storable_problem(value, self.limits)
            if problem is None:
                kept[name] = (value, at)
            else:
                self._reject_value(name, problem)
        return kept

    def _reject_value(self, name: str, problem: str) -> None:
        reason = f"last value of accumulator {name!r} not stored: {problem}"
        with self._lock:
            self.rejected_values += 1
            self.last_rejected = reason
        log.warning("state store: value not stored, dead-lettered", accumulator=name, reason=reason)
        letter = DeadLetter(kind="value", reason=reason, payload=None, accumulator=name)
        try:
            self.write_dead_letters([letter])
        except Exception as error:
            self.write_errors += 1
            self.last_error = repr(error)
            log.error("state store: dead letter of a rejected value failed", error=repr(error))

    def _requeue(
        self, records: list[ExecutionRecord], values: dict[str, tuple[Any, float]]
    ) -> None:
        """Put a failed batch back in front of the queue (oldest records dropped when full)."""
        with self._lock:
            for name, item in values.items():  # a value set meanwhile is newer: keep it
                self._values.setdefault(name, item)
            room = (self._executions.maxlen or len(records)) - len(self._executions)
            kept = records[-room:] if room > 0 else []
            self.dropped_executions += len(records) - len(kept)
            self._executions.extendleft(reversed(kept))

    def _write_one_by_one(
        self, records: list[ExecutionRecord], values: dict[str, tuple[Any, float]]
    ) -> None:
        try:
            if records:
                self._write(records, {})
        except sa.exc.OperationalError:
            self._requeue(records, values)
            raise
        except Exception as error:
            with self._lock:
                self.dropped_executions += len(records)
            self.write_errors += 1
            self.last_error = repr(error)
            log.error(
                "state store: execution records dropped", count=len(records), error=repr(error)
            )
        for name, item in values.items():
            try:
                self._write([], {name: item})
            except sa.exc.OperationalError:
                self._requeue([], {name: item})
                raise
            except Exception as error:
                self._reject_value(name, f"the database refused it: {error}")

    def _write(self, records: list[ExecutionRecord], values: dict[str, tuple[Any, float]]) -> None:
        engine = self._require_engine()
        with engine.begin() as conn:
            if records:
                worker = self.worker_id
                conn.exec_driver_sql(
                    _execution_insert(engine.dialect),
                    [
                        (
                            r.graph,
                            r.reactor,
                            r.fire,
                            r.started_at,
                            r.duration,
                            r.status,
                            r.attempts,
                            r.error,
                            r.node,
                            worker,
                        )
                        for r in records
                    ],
                )
            if values:
                rows = [
                    {
                        "accumulator": name,
                        "value": value,
                        "value_type": _type_name(value),
                        "updated_at": at,
                        "worker": self.worker_id,
                    }
                    for name, (value, at) in sorted(values.items())  # stable lock order
                ]
                insert = (postgresql if engine.dialect.name == "postgresql" else sqlite).insert
                statement = insert(values_table)
                conn.execute(
                    statement.on_conflict_do_update(
                        index_elements=[values_table.c.accumulator],
                        set_={
                            column: statement.excluded[column]
                            for column in ("value", "value_type", "updated_at", "worker")
                        },
                    ),
                    rows,
                )
        self.written_executions += len(records)

    def prune(self) -> dict[str, int]:
        """Delete execution records, dead letters and results beyond the retention counts."""
        deleted = {}
        with self._require_engine().begin() as conn:
            for table, keep in (
                (executions_table, self.retention_executions),
                (dead_letters_table, self.retention_dead_letters),
                (results_table, self.retention_results),
            ):
                cutoff = (
                    sa.select(table.c.id).order_by(table.c.id.desc()).offset(keep).limit(1)
                ).scalar_subquery()
                result = conn.execute(sa.delete(table).where(table.c.id <= cutoff))
                deleted[table.name] = result.rowcount
        return deleted

    # -- reading ---------------------------------------------------------------------------
    def load_last_values(self) -> dict[str, Any]:
        """Stored last values by accumulator name, as JSON (models as dicts)."""
        return {name: value for name, (value, _) in self._load_typed_values().items()}

    def _load_typed_values(self) -> dict[str, tuple[Any, str | None]]:
        with self._require_engine().connect() as conn:
            rows = conn.execute(
                sa.select(
                    values_table.c.accumulator, values_table.c.value, values_table.c.value_type
                )
            )
            return {row.accumulator: (row.value, row.value_type) for row in rows}

    def executions(self, graph: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """The newest execution records first, optionally of one graph."""
        query = sa.select(executions_table).order_by(executions_table.c.id.desc()).limit(limit)
        if graph is not None:
            query = query.where(executions_table.c.graph == graph)
        with self._require_engine().connect() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    def results(self, graph: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """The newest graph results first (written by a ``state_store`` sink), optionally
        of one graph; ``outputs`` is the graph's terminal outputs as JSON."""
        query = sa.select(results_table).order_by(results_table.c.id.desc()).limit(limit)
        if graph is not None:
            query = query.where(results_table.c.graph == graph)
        with self._require_engine().connect() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest dead letters first; byte payloads come back base64 encoded."""
        query = sa.select(dead_letters_table).order_by(dead_letters_table.c.id.desc()).limit(limit)
        with self._require_engine().connect() as conn:
            rows = [dict(row._mapping) for row in conn.execute(query)]
        for row in rows:
            raw = row.pop("payload_bytes")
            row["payload_encoding"] = "base64" if raw is not None else "json"
            if raw is not None:
                row["payload"] = base64.b64encode(raw).decode()
        return rows

    def health(self) -> dict[str, Any]:
        with self._lock:
            successes = sum(
                min(kept.count, self.successes_per_flush) for kept in self._successes.values()
            )
            queued = len(self._executions) + successes + len(self._values)
        return {
            "url": self.display_url,
            "open": self._engine is not None,
            "queued": queued,
            "written_executions": self.written_executions,
            "unsampled_executions": self.unsampled_executions,
            "written_dead_letters": self.written_dead_letters,
            "written_results": self.written_results,
            "dropped_executions": self.dropped_executions,
            "rejected_values": self.rejected_values,
            "write_errors": self.write_errors,
            "last_error": self.last_error,
            "last_rejected": self.last_rejected,
            "status": (
                "degraded"
                if self.dropped_executions or self.rejected_values or self.write_errors
                else "ok"
            ),
        }

    # -- restart -----------------------------------------------------------------------------
    async def restore_into(self, runtime: Runtime) -> list[str]:
        """Re-deliver stored last values into a started runtime; returns the names restored.

        Only polling and passthrough accumulators that run in ``runtime`` and have not
        delivered anything yet are restored (a fresh value wins over a stored one). A restored
        value counts as a delivery: it fills the ``latest`` input cache and sets the
        accumulator's dirty flag, so a ``when_all`` reactor whose other accumulators deliver
        next fires with it, and a reactor all of whose accumulators were restored fires once
        right away on the restored values (at-least-once: that fire may repeat the last one
        before the restart). Stored pydantic models come back as their class when the module
        defining it is imported, else the value is skipped with a warning.
        """
        if self._runtime is None:
            self.attach(runtime)
        stored = await asyncio.to_thread(self._load_typed_values)
        restored = []
        self._restoring = True
        try:
            for name, (value, type_name) in sorted(stored.items()):
                runner = runtime.accumulators.get(name)
                if runner is None or runner.spec.kind not in STORED_KINDS or runner.delivered:
                    continue
                try:
                    runner.restore(_revive(value, type_name, runner.spec.model))
                except Exception as error:
                    log.warning("state not restored", accumulator=name, error=repr(error))
                    continue
                restored.append(name)
        finally:
            self._restoring = False
        if restored:
            log.info("accumulator values restored", accumulators=restored)
        return restored


async def _retrying(write: Callable[[], None], warning: str, **fields: Any) -> None:
    """Run ``write`` in a thread, up to 3 times while the database connection fails."""
    for attempt in range(1, 4):
        try:
            await asyncio.to_thread(write)
            return
        except sa.exc.OperationalError as error:
            if attempt == 3:
                raise
            log.warning(warning, **fields, error=repr(error))
            await asyncio.sleep(0.5 * attempt)


def _revive(value: Any, type_name: str | None, model: type[pydantic.BaseModel] | None) -> Any:
    if type_name is None:
        return value
    if model is not None and f"{model.__module__}:{model.__qualname__}" == type_name:
        cls: type[pydantic.BaseModel] | None = model
    else:
        cls = _loaded_model(type_name)
    if cls is None:
        raise LookupError(f"stored value is a {type_name} but that model is not loaded")
    return cls.model_validate(value)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
    finally:
        cursor.close()


# The package tables live on the same metadata: every store has the whole schema, whatever
# was imported first (imported last: the module needs ``metadata`` from here).
from headrace.engine.store import packages_table as _packages_table  # noqa: E402, F401

__all__ = ["STORED_KINDS", "StateStore", "metadata"]
