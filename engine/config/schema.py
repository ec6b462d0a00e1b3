"""Topic-to-graph config files: the TOML schema (pydantic v2), env interpolation, errors.

A worker loads one or more TOML files. Each file may hold any of these sections::

    modules = ["examples.price_signal"]      # or [[modules]] name = "..." path = "..."

    [worker]                                  # at most one file sets it
    bootstrap_servers = "${KAFKA_BOOTSTRAP_SERVERS}"
    group_id = "prices"
    # also: commit_interval, batch_size, channel_size, drain_timeout, and the Kafka
    # source's memory bounds max_in_flight_per_partition, max_batch_events,
    # max_dead_letters_in_flight, max_dead_letter_bytes
    [worker.http]         host, port, token, enabled, allow_unauthenticated, allowed_hosts,
                          allowed_origins, max_connections, header_timeout, max_websockets, ...
    [worker.limits]       max_depth, max_bytes (values: push bodies, frames, stored values)
    [worker.state_store]  enabled, url, retention_executions, retention_dead_letters,
                          retention_results, prune_interval
    [worker.dead_letters] kafka, topic_suffix, execution_topic, state_store
    [worker.log]          format (auto|json|console), level
    [worker] guarantee    "at_least_once" (default) or "exactly_once" (Kafka transactions)
    [worker.transactions] max_inputs, transactional_id, barrier_timeout, strict

    [accumulators.NAME]   kind, topic, group, model, function, interval, flush_interval,
                          key (field name, "@message" or "module:function"), ...
    [reactors.NAME]       accumulators, mode, strategy, keyed, max_concurrency, max_keys,
                          key_ttl
    [graphs.NAME]         module, reactor, topology, retry, on_error, sinks
    [sinks.NAME]          type (kafka|log|callback|state_store), topic, key, function,
                          producer; state_store writes results to the worker's state store

Every problem is reported as ``file: field.path: reason`` (see ``ConfigIssue``); the
cross-file checks live in ``engine.config_resolve`` and ``engine.config_worker``,
run by ``headrace.engine.config.loader.load_config``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
)

from headrace.accumulators.durations import DurationError, parse_duration
from headrace.accumulators.limits import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_DEPTH,
    ENCODER_DEPTH,
    OUTPUT_HEADROOM,
    ValueLimits,
)
from headrace.engine.ops.net import is_loopback

# -- errors -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a config file: where it is and what is wrong."""

    file: str
    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}: {self.field}: {self.reason}"


class ConfigError(Exception):
    """A set of config problems; nothing was started. ``str()`` lists one per line."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = list(issues)
        super().__init__("\n".join(str(issue) for issue in self.issues))


def field_path(*parts: str | int) -> str:
    """``("graphs", "g", "sinks", 0)`` -> ``graphs.g.sinks[0]``; odd keys are quoted."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_\-]*", part):
            out += f".{part}" if out else part
        else:
            out += f"[{part!r}]" if out else repr(part)
    return out or "<file>"


# -- environment interpolation --------------------------------------------------------------

_VAR = re.compile(r"\$(\$)|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:-)([^}]*))?\}|\$\{([^}]*)\}?")


@dataclass
class Interpolation:
    """What ``interpolate`` did: the new data, the fields it touched and its problems."""

    data: Any
    from_env: set[str]
    problems: list[tuple[str, str]]


def interpolate(data: Any, environ: Mapping[str, str] | None = None) -> Interpolation:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in every string value (keys are left alone).

    ``$$`` is a literal ``$``. ``${VAR:-default}`` uses the default when VAR is unset or
    empty; ``${VAR}`` with VAR unset is a problem reported at that field.
    """
    env = os.environ if environ is None else environ
    from_env: set[str] = set()
    problems: list[tuple[str, str]] = []

    def substitute(text: str, path: tuple[str | int, ...]) -> str:
        def replace(match: re.Match[str]) -> str:
            if match.group(1):
                return "$"
            if match.group(5) is not None or match.group(2) is None:
                problems.append(
                    (
                        field_path(*path),
                        f"bad variable reference {match.group(0)!r}: "
                        "use ${NAME} or ${NAME:-default} (and $$ for a literal $)",
                    )
                )
                return match.group(0)
            name, has_default, default = match.group(2), match.group(3), match.group(4)
            from_env.add(field_path(*path))
            value = env.get(name)
            if has_default and not value:
                return default or ""
            if value is None:
                problems.append(
                    (
                        field_path(*path),
                        f"environment variable {name} is not set "
                        f"(set it, or write ${{{name}:-default}})",
                    )
                )
                return ""
            return value

        if "$" not in text:
            return text
        return _VAR.sub(replace, text)

    def walk(value: Any, path: tuple[str | int, ...]) -> Any:
        if isinstance(value, str):
            return substitute(value, path)
        if isinstance(value, dict):
            return {key: walk(item, (*path, key)) for key, item in value.items()}
        if isinstance(value, list):
            return [walk(item, (*path, index)) for index, item in enumerate(value)]
        return value

    return Interpolation(walk(data, ()), from_env, problems)


# -- field types ----------------------------------------------------------------------------


def _duration(value: Any) -> Any:
    if value is None:
        return value
    try:
        return parse_duration(value, "duration")
    except DurationError as error:
        raise ValueError(str(error).removeprefix("duration: ")) from None


def _one_or_many(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


def _ref(value: str) -> str:
    module, sep, attr = value.partition(":")
    dotted = r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*"
    if not sep or not re.fullmatch(dotted, module) or not re.fullmatch(dotted, attr):
        raise ValueError(
            f"must be 'module:attribute' (e.g. 'mypkg.feeds:orderbook'), got {value!r}"
        )
    return value


def _module_name(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", value):
        raise ValueError(f"must be a dotted Python module name, got {value!r}")
    return value


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


SECRET_KEY = re.compile(r"password|secret|token|credential|sasl|oauthbearer|ssl\.key\.pem", re.I)
"""Kafka client settings whose values are secrets (wrapped in SecretStr, never logged)."""


def _kafka_settings(value: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, item in value.items():
        if isinstance(item, SecretStr):
            out[key] = item
            continue
        if not isinstance(item, str | int | float | bool):
            raise ValueError(
                f"setting {key!r} must be a string, number or boolean, got {type(item).__name__}"
            )
        out[key] = SecretStr(str(item)) if SECRET_KEY.search(key) else item
    return out


Duration = Annotated[float, BeforeValidator(_duration)]
NonEmpty = Annotated[str, Field(min_length=1)]
Names = Annotated[list[NonEmpty], BeforeValidator(_one_or_many)]
Ref = Annotated[str, AfterValidator(_ref)]
ModuleName = Annotated[str, AfterValidator(_module_name)]
KafkaSettings = Annotated[dict[str, Any], AfterValidator(_kafka_settings)]


def reveal(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Kafka settings for the client library: secrets unwrapped, everything a string."""
    out = {}
    for key, value in settings.items():
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        out[key] = value
    return out


# -- models ---------------------------------------------------------------------------------


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=False)


class HttpConfig(Model):
    """The operations endpoint. Non-loopback hosts need a token (``HEADRACE_TOKEN``, which
    always applies when set). Without a token only reads are served, unless
    ``allow_unauthenticated``."""

    enabled: bool = True
    host: NonEmpty = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    token: SecretStr | None = None
    allow_unauthenticated: bool = False
    """Without a token, accept pushes, pause and resume too (loopback binds only)."""
    allowed_hosts: list[NonEmpty] = Field(default_factory=list)
    """Host names accepted in the ``Host`` header besides the bind address (DNS rebinding)."""
    allowed_origins: list[NonEmpty] = Field(default_factory=list)
    """Browser origins (``scheme://host[:port]``) allowed; requests with any other
    ``Origin`` header are refused."""
    max_connections: int = Field(1000, ge=1)
    """Open connections per worker; over it the oldest idle one is closed."""
    header_timeout: Duration = 10.0
    """Seconds a connection may take to send its request headers."""
    keep_alive_timeout: Duration = 5.0
    max_websockets: int = Field(256, ge=1)
    max_websockets_per_accumulator: int = Field(64, ge=1)
    push_timeout: Duration = 10.0
    """Seconds a push waits for room in a full channel before 503."""

    @property
    def is_loopback(self) -> bool:
        return is_loopback(self.host)


class StateStoreConfig(Model):
    """SQLAlchemy URL of the state store (SQLite file by default, PostgreSQL for fleets)."""

    enabled: bool = True
    url: NonEmpty = "sqlite:///headrace-state.db"
    retention_executions: int = Field(10_000, ge=1)
    retention_dead_letters: int = Field(10_000, ge=1)
    retention_results: int = Field(100_000, ge=1)
    prune_interval: Duration = 60.0


class DeadLettersConfig(Model):
    """Where dead letters go: Kafka topics and/or the state store."""

    kafka: bool = True
    topic_suffix: NonEmpty = ".dlq"
    execution_topic: NonEmpty = "headrace.dead_letters"
    state_store: bool = True


class TransactionsConfig(Model):
    """Exactly-once settings (used with ``[worker] guarantee = "exactly_once"``)."""

    max_inputs: int = Field(10_000, ge=1)
    """A transaction commits after this many inputs, or after ``commit_interval``."""
    transactional_id: NonEmpty | None = None
    """Unique per live worker instance; default ``headrace-<group>-<host>-<pid>``. A stable
    id per worker slot fences the slot's previous incarnation at once on restart."""
    barrier_timeout: Duration = 10.0
    """How long ending a transaction waits for the inputs in flight to be handled."""
    strict: bool = False
    """Refuse to start when a sink or dead-letter destination cannot join the transaction."""


class LimitsConfig(Model):
    """One depth and size limit for values: the push parser (HTTP bodies and WebSocket
    frames), the accumulators' validation, the state store and sinks all use it."""

    max_depth: int = Field(DEFAULT_MAX_DEPTH, ge=1, le=ENCODER_DEPTH - OUTPUT_HEADROOM)
    max_bytes: int = Field(DEFAULT_MAX_BYTES, ge=1)

    def value_limits(self) -> ValueLimits:
        return ValueLimits(max_depth=self.max_depth, max_bytes=self.max_bytes)


class LogConfig(Model):
    format: Literal["auto", "json", "console"] = "auto"
    level: Annotated[
        Literal["debug", "info", "warning", "error", "critical"], BeforeValidator(_lower)
    ] = "info"


class PackagesConfig(Model):
    """Packages deployed into the running worker (``/v1/packages``, ``--packages DIR``).

    The upload endpoints also need an API token: uploading a package runs its code."""

    enabled: bool = True
    workdir: NonEmpty | None = None
    """Where uploaded archives are extracted (default: a new temporary directory)."""
    max_archive_bytes: int = Field(16 * 1024 * 1024, ge=1)
    max_extracted_bytes: int = Field(64 * 1024 * 1024, ge=1)
    poll_interval: Duration = 2.0
    """Directory mode and fleets: how often the package source is checked for changes."""


class WorkerConfig(Model):
    """Process-wide settings of a worker."""

    bootstrap_servers: NonEmpty | None = None
    group_id: NonEmpty = "headrace"
    commit_interval: Duration = 1.0
    batch_size: int = Field(500, ge=1)
    channel_size: int | None = Field(None, ge=1)
    # memory bounds of the Kafka source (defaults: headrace.connectors.kafka.source)
    max_in_flight_per_partition: int = Field(100_000, ge=1)
    max_batch_events: int = Field(200_000, ge=1)
    max_dead_letters_in_flight: int = Field(1_000, ge=1)
    max_dead_letter_bytes: int = Field(64 * 1024 * 1024, ge=1)
    drain_timeout: Duration = 30.0
    guarantee: Literal["at_least_once", "exactly_once"] = "at_least_once"
    transactions: TransactionsConfig = Field(default_factory=TransactionsConfig)
    kafka: KafkaSettings = Field(default_factory=dict)
    consumer: KafkaSettings = Field(default_factory=dict)
    producer: KafkaSettings = Field(default_factory=dict)
    http: HttpConfig = Field(default_factory=HttpConfig)
    state_store: StateStoreConfig = Field(default_factory=StateStoreConfig)
    dead_letters: DeadLettersConfig = Field(default_factory=DeadLettersConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    packages: PackagesConfig = Field(default_factory=PackagesConfig)

    def consumer_config(self) -> dict[str, Any]:
        return reveal({**self.kafka, **self.consumer})

    def producer_config(self) -> dict[str, Any]:
        return reveal({**self.kafka, **self.producer})


def _module_entry(value: Any) -> Any:
    return {"name": value} if isinstance(value, str) else value


class ModuleConfig(Model):
    """A Python module to import; ``path`` (relative to the file) is put on ``sys.path``."""

    name: ModuleName
    path: NonEmpty | None = None


AccumulatorKindName = Literal["stream", "batch", "polling", "passthrough"]


class AccumulatorConfig(Model):
    """An accumulator declared (or re-configured) by a file."""

    kind: AccumulatorKindName | None = None
    topic: NonEmpty | None = None
    group: NonEmpty | None = None
    model: Ref | None = None
    function: Ref | None = None
    interval: Duration | None = None
    flush_interval: Duration | None = None
    max_buffer_size: int | None = Field(None, ge=1)
    channel_size: int | None = Field(None, ge=1)
    strict: bool | None = None
    """Validate the model in pydantic strict mode (stream, passthrough); default lax."""
    key: NonEmpty | None = None
    """A field of the value, ``"@message"`` (the message key) or ``"module:function"``."""
    scope: Literal["group", "global"] | None = None
    """``global`` (stream): every worker reads the whole topic as a table (latest per key)."""


class ReactorConfig(Model):
    accumulators: Annotated[Names, Field(min_length=1)]
    mode: Literal["when_any", "when_all"] = "when_any"
    strategy: Literal["latest", "sequential"] = "latest"
    keyed: bool = False
    max_concurrency: int = Field(1, ge=1)
    max_keys: int | None = Field(None, ge=1)
    key_ttl: Duration | None = None


class NodeConfig(Model):
    """One node of a topology; its function is the module's attribute of the node's name."""

    inputs: Names | None = None
    next: Names | None = None
    routes: dict[NonEmpty, Names] | None = None
    function: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] | None = None
    thread: bool = False

    def shape(self) -> dict[str, Any]:
        """The topology dict entry ``parse_topology`` takes."""
        out: dict[str, Any] = {}
        if self.inputs is not None:
            out["inputs"] = list(self.inputs)
        if self.next is not None:
            out["next"] = list(self.next)
        if self.routes is not None:
            out["routes"] = {variant: list(targets) for variant, targets in self.routes.items()}
        return out


class RetryConfig(Model):
    attempts: int = Field(1, ge=1)
    backoff: Duration = 0.1
    max_backoff: Duration = 5.0


class GraphConfig(Model):
    """A graph defined by the file (``module`` + ``topology``) or configured (module's own)."""

    module: ModuleName | None = None
    reactor: NonEmpty | None = None
    topology: dict[str, NodeConfig] | None = None
    retry: RetryConfig | None = None
    on_error: Literal["dead_letter", "stop"] | None = None
    sinks: Annotated[list[NonEmpty], BeforeValidator(_one_or_many)] = Field(default_factory=list)


SinkType = Literal["kafka", "log", "callback", "state_store"]


class SinkConfig(Model):
    """Where graph results go. ``kafka`` needs ``topic``; ``callback`` needs ``function``;
    ``state_store`` writes to the worker's state store (``worker.state_store`` enabled)."""

    type: SinkType
    topic: NonEmpty | None = None
    key: NonEmpty | None = None
    function: Ref | None = None
    producer: KafkaSettings = Field(default_factory=dict)


class ConfigFile(Model):
    """One file, as written (after interpolation)."""

    worker: WorkerConfig | None = None
    modules: list[Annotated[ModuleConfig, BeforeValidator(_module_entry)]] = Field(
        default_factory=list
    )
    accumulators: dict[str, AccumulatorConfig] = Field(default_factory=dict)
    reactors: dict[str, ReactorConfig] = Field(default_factory=dict)
    graphs: dict[str, GraphConfig] = Field(default_factory=dict)
    sinks: dict[str, SinkConfig] = Field(default_factory=dict)


SECTIONS = ("accumulators", "reactors", "graphs", "sinks")
"""Sections whose entries are named; each name may be declared in one file only."""

SECRET_FIELDS = ("worker.http.token",)
"""Fields that hold secrets: they must come from the environment, never the file itself."""
