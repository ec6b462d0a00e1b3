"""Loading config files: parse, interpolate, validate, merge, import, resolve and register.

``load_config(paths)`` either returns a ``LoadedConfig`` (accumulators, reactors and graphs
registered, everything checked) or raises ``ConfigError`` with every problem found, each
naming its file, its field path and the reason. Nothing is started here.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import re
import sys
import tomllib
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pydantic
from pydantic import BaseModel, SecretStr

from accumulators import (
    AccumulatorKind,
    AccumulatorSpec,
    get_accumulator,
    register_accumulator,
    registered_accumulators,
)
from accumulators.spec import DEFAULT_CHANNEL_SIZE, find_model
from engine.builder import ComputationGraph, ComputationGraphBuilder, OnError, RetryPolicy
from engine.config import (
    SECRET_KEY,
    SECTIONS,
    AccumulatorConfig,
    ConfigError,
    ConfigFile,
    ConfigIssue,
    GraphConfig,
    ModuleConfig,
    ReactorConfig,
    SinkConfig,
    WorkerConfig,
    field_path,
    interpolate,
)
from engine.errors import GraphDefinitionError
from engine.registry import register_graph, registered_graphs
from engine.topology import parse_topology
from reactors import ReactorSpec, find_reactor, register_reactor, registered_reactors
from reactors.declaration import make_reactor_spec

M = TypeVar("M", bound=BaseModel)
Path_ = tuple[str | int, ...]

_SECTION_MODELS: dict[str, type[BaseModel]] = {
    "accumulators": AccumulatorConfig,
    "reactors": ReactorConfig,
    "graphs": GraphConfig,
    "sinks": SinkConfig,
}

_KIND_FIELDS: dict[str, set[str]] = {
    "stream": {"topic", "group", "model", "function", "channel_size"},
    "batch": {
        "topic",
        "group",
        "model",
        "function",
        "flush_interval",
        "max_buffer_size",
        "channel_size",
    },
    "polling": {"function", "interval", "channel_size"},
    "passthrough": {"model", "function", "channel_size"},
}

_SINK_FIELDS: dict[str, set[str]] = {
    "kafka": {"topic", "key", "producer"},
    "log": set(),
    "callback": {"function"},
    "state_store": set(),
}

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


# -- results ----------------------------------------------------------------------------------


@dataclass
class LoadedConfig:
    """Checked config, with its accumulators, reactors and graphs registered."""

    files: list[str]
    worker: WorkerConfig
    worker_file: str | None
    accumulators: dict[str, AccumulatorSpec]
    reactors: dict[str, ReactorSpec]
    graphs: dict[str, ComputationGraph]
    graph_sinks: dict[str, list[str]]
    sinks: dict[str, SinkConfig]
    origins: dict[str, str] = field(default_factory=dict)

    def kafka_groups(self) -> dict[str, list[str]]:
        """Consumer group -> accumulators that read a Kafka topic in that group."""
        groups: dict[str, list[str]] = {}
        for name, spec in sorted(self.accumulators.items()):
            if spec.topic and spec.source_type == "kafka":
                groups.setdefault(spec.group or self.worker.group_id, []).append(name)
        return groups

    def kafka_sinks(self) -> list[str]:
        used = {name for names in self.graph_sinks.values() for name in names}
        return [n for n, s in self.sinks.items() if s.type == "kafka" and n in used]

    @property
    def needs_kafka(self) -> bool:
        return bool(self.kafka_groups() or self.kafka_sinks())


# -- issue collection ---------------------------------------------------------------------------


class Issues:
    def __init__(self) -> None:
        self.items: list[ConfigIssue] = []

    def add(self, file: str, path: Path_ | str, reason: str) -> None:
        where = path if isinstance(path, str) else field_path(*path)
        # one problem per field: the first is the cause (e.g. a missing variable), later
        # ones about the same field would only be its consequences
        if not any(i.file == file and i.field == where for i in self.items):
            self.items.append(ConfigIssue(file, where, reason))

    def __bool__(self) -> bool:
        return bool(self.items)

    def raise_if_any(self) -> None:
        if self.items:
            raise ConfigError(self.items)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _unwrap(annotation: Any) -> Any:
    """The model class or container behind Annotated/Optional wrappers."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            annotation = args[0] if len(args) == 1 else annotation
            if len(args) != 1:
                return annotation
        else:
            return annotation


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class that owns the field at ``loc`` (for 'unknown key' hints)."""
    current: Any = model
    for part in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            info = current.model_fields.get(part) if isinstance(part, str) else None
            if info is None:
                return None
            current = info.annotation
        else:
            origin = typing.get_origin(current)
            args = typing.get_args(current)
            if origin is list and args:
                current = args[0]
            elif origin is dict and len(args) == 2:
                current = args[1]
            else:
                return None
    current = _unwrap(current)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _pydantic_issues(
    issues: Issues,
    file: str,
    prefix: Path_,
    model: type[BaseModel],
    error: pydantic.ValidationError,
) -> None:
    for item in error.errors():
        loc = tuple(p for p in item["loc"] if p != "[key]")
        kind, message = item["type"], item["msg"]
        if kind == "extra_forbidden":
            owner = _model_at(model, loc[:-1])
            allowed = ", ".join(owner.model_fields) if owner else ""
            reason = "unknown key" + (f" (allowed: {allowed})" if allowed else "")
        elif kind == "missing":
            reason = "required field is missing"
        elif kind in ("model_type", "dict_type", "model_attributes_type"):
            got = item.get("input")
            reason = f"expected a table, got {type(got).__name__} {_short(got)}"
        elif kind == "value_error":
            reason = message.removeprefix("Value error, ")
        else:
            reason = message
            if "input" in item and kind not in ("literal_error",):
                reason += f" (got {_short(item['input'])})"
            elif kind == "literal_error":
                reason += f", got {_short(item.get('input'))}"
        issues.add(file, (*prefix, *loc), reason)


def _validate(issues: Issues, file: str, prefix: Path_, model: type[M], data: Any) -> M | None:
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as error:
        _pydantic_issues(issues, file, prefix, model, error)
        return None


# -- one file ------------------------------------------------------------------------------------


@dataclass
class ParsedFile:
    file: str
    directory: Path
    worker: WorkerConfig | None = None
    has_worker: bool = False
    modules: list[tuple[int, ModuleConfig]] = field(default_factory=list)
    entries: dict[str, dict[str, Any]] = field(default_factory=lambda: {s: {} for s in SECTIONS})
    broken: dict[str, set[str]] = field(default_factory=lambda: {s: set() for s in SECTIONS})
    from_env: set[str] = field(default_factory=set)


def parse_file(
    path: str | Path, issues: Issues, environ: Mapping[str, str] | None = None
) -> ParsedFile:
    """Read one file; every problem goes into ``issues``; valid entries are kept."""
    file = str(path)
    parsed = ParsedFile(file, Path(path).resolve().parent)
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        issues.add(file, "<file>", f"cannot read: {error.strerror or error}")
        return parsed
    except UnicodeDecodeError as error:
        issues.add(file, "<file>", f"not UTF-8 text: {error}")
        return parsed
    except tomllib.TOMLDecodeError as error:
        issues.add(file, "<toml>", f"invalid TOML: {error}")
        return parsed

    done = interpolate(raw, environ)
    for where, reason in done.problems:
        issues.add(file, where, reason)
    data, parsed.from_env = done.data, done.from_env

    allowed = list(ConfigFile.model_fields)
    for key in data:
        if key not in allowed:
            issues.add(file, (key,), f"unknown section (allowed: {', '.join(allowed)})")

    if "worker" in data:
        parsed.has_worker = True
        parsed.worker = _validate(issues, file, ("worker",), WorkerConfig, data["worker"])

    if "modules" in data:
        modules = _validate(issues, file, (), ConfigFile, {"modules": data["modules"]})
        if modules is not None:
            parsed.modules = list(enumerate(modules.modules))

    for section in SECTIONS:
        if section not in data:
            continue
        table = data[section]
        if not isinstance(table, dict):
            issues.add(file, (section,), f"expected a table of named entries, got {_short(table)}")
            continue
        model = _SECTION_MODELS[section]
        for name, value in table.items():
            entry = _validate(issues, file, (section, name), model, value)
            if entry is None:
                parsed.broken[section].add(name)
            else:
                parsed.entries[section][name] = entry
    return parsed


# -- merging files ------------------------------------------------------------------------


@dataclass
class Merged:
    files: list[ParsedFile]
    worker: WorkerConfig
    worker_file: str | None
    modules: list[tuple[ParsedFile, int, ModuleConfig]]
    entries: dict[str, dict[str, tuple[str, Any]]]
    broken: dict[str, set[str]]
    from_env: dict[str, set[str]]


def merge(files: list[ParsedFile], issues: Issues) -> Merged:
    worker: WorkerConfig | None = None
    worker_file: str | None = None
    entries: dict[str, dict[str, tuple[str, Any]]] = {s: {} for s in SECTIONS}
    broken: dict[str, set[str]] = {s: set() for s in SECTIONS}
    seen: dict[tuple[str, str], str] = {}
    modules: list[tuple[ParsedFile, int, ModuleConfig]] = []
    for parsed in files:
        if parsed.has_worker:
            if worker_file is not None:
                issues.add(
                    parsed.file,
                    "worker",
                    f"[worker] is also set in {worker_file}; keep worker settings in one file",
                )
            else:
                worker_file = parsed.file
                worker = parsed.worker
        modules.extend((parsed, index, module) for index, module in parsed.modules)
        for section in SECTIONS:
            names = list(parsed.entries[section]) + sorted(parsed.broken[section])
            for name in names:
                first = seen.get((section, name))
                if first is not None:
                    issues.add(
                        parsed.file,
                        (section, name),
                        f"{section[:-1]} {name!r} is also declared in {first}; "
                        "each name may be declared in one file only",
                    )
                    continue
                seen[(section, name)] = parsed.file
                if name in parsed.entries[section]:
                    entries[section][name] = (parsed.file, parsed.entries[section][name])
                else:
                    broken[section].add(name)
    return Merged(
        files=files,
        worker=worker or WorkerConfig(),
        worker_file=worker_file,
        modules=modules,
        entries=entries,
        broken=broken,
        from_env={p.file: p.from_env for p in files},
    )


# -- importing -----------------------------------------------------------------------------------


def _ensure_on_path(directory: Path | str) -> None:
    text = str(directory)
    if text not in sys.path:
        sys.path.insert(0, text)


def _import_reason(name: str, error: BaseException) -> str:
    if isinstance(error, ModuleNotFoundError) and error.name and name.startswith(error.name):
        return (
            f"cannot import module {name!r}: no module named {error.name!r} "
            "(run from the project directory, or set 'path' on the module entry)"
        )
    return f"cannot import module {name!r}: {type(error).__name__}: {error}"


def import_module(name: str) -> tuple[Any | None, str | None]:
    try:
        return importlib.import_module(name), None
    except BaseException as error:  # a module may even call sys.exit at import
        if isinstance(error, KeyboardInterrupt):
            raise
        return None, _import_reason(name, error)


def resolve_ref(ref: str) -> tuple[Any | None, str | None]:
    """``"module:attr.sub"`` -> the object, or the reason it cannot be found."""
    module_name, _, attr = ref.partition(":")
    module, reason = import_module(module_name)
    if module is None:
        return None, reason
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            return None, f"module {module_name!r} has no attribute {attr!r}"
        target = getattr(target, part)
    return target, None


# What earlier loads in this process declared, so that loading again (tests, tools) is not
# mistaken for a module declaring the same names.
_declared_reactors: dict[str, ReactorSpec] = {}
_declared_graphs: dict[str, ComputationGraph] = {}


# -- resolution ------------------------------------------------------------------------------------


def _identity(event: Any) -> Any:
    return event


class Resolver:
    """Turns merged entries into registered accumulators, reactors and graphs."""

    def __init__(self, merged: Merged, issues: Issues) -> None:
        self.m = merged
        self.issues = issues
        self.accumulators: dict[str, AccumulatorSpec] = {}
        self.reactors: dict[str, ReactorSpec] = {}
        self.graph_sinks: dict[str, list[str]] = {}
        self.origins: dict[str, str] = {}
        self.config_graphs: set[str] = set()

    def add(self, file: str, path: Path_ | str, reason: str) -> None:
        self.issues.add(file, path, reason)

    def entries(self, section: str) -> Iterable[tuple[str, str, Any]]:
        for name, (file, entry) in self.m.entries[section].items():
            yield name, file, entry

    def known(self, section: str) -> set[str]:
        return set(self.m.entries[section]) | self.m.broken[section]

    # modules
    def import_modules(self) -> None:
        for parsed, index, module in self.m.modules:
            if module.path is not None:
                directory = (parsed.directory / module.path).resolve()
                if not directory.is_dir():
                    self.add(
                        parsed.file, ("modules", index, "path"), f"no such directory: {directory}"
                    )
                    continue
                _ensure_on_path(directory)
            _, reason = import_module(module.name)
            if reason is not None:
                self.add(parsed.file, ("modules", index), reason)

    # accumulators
    def build_accumulators(self) -> None:
        for name, file, cfg in self.entries("accumulators"):
            spec = self._accumulator(name, file, cfg)
            if spec is not None:
                register_accumulator(spec)
                self.accumulators[name] = spec
                self.origins[f"accumulators.{name}"] = file

    def _accumulator(self, name: str, file: str, cfg: AccumulatorConfig) -> AccumulatorSpec | None:
        at = ("accumulators", name)
        before = len(self.issues.items)
        if not name.isidentifier():
            self.add(
                file,
                at,
                "accumulator names must be Python identifiers "
                "(entry nodes receive accumulator values as parameters of that name)",
            )
        existing = registered_accumulators().get(name)
        kind = cfg.kind or (existing.kind.value if existing else None)
        if kind is None:
            self.add(
                file,
                (*at, "kind"),
                "required field is missing (stream, batch, polling or "
                f"passthrough); no imported module declares accumulator {name!r}",
            )
            return None
        if existing is not None and cfg.kind and cfg.kind != existing.kind.value:
            self.add(
                file,
                (*at, "kind"),
                f"accumulator {name!r} is declared as "
                f"{existing.kind.value!r} by its module, not {cfg.kind!r}",
            )
        allowed = _KIND_FIELDS[kind]
        for key in cfg.model_fields_set - {"kind"}:
            if key not in allowed and getattr(cfg, key) is not None:
                self.add(
                    file,
                    (*at, key),
                    f"not used by a {kind} accumulator (it takes: {', '.join(sorted(allowed))})",
                )
        topic = cfg.topic or (existing.topic if existing else None)
        if kind == "stream" and not topic:
            self.add(file, (*at, "topic"), "required for a stream accumulator")

        fn: Callable[..., Any] | None = existing.fn if existing else None
        if cfg.function is not None:
            target, reason = resolve_ref(cfg.function)
            if reason is not None:
                self.add(file, (*at, "function"), reason)
            elif not callable(target):
                self.add(file, (*at, "function"), f"{cfg.function!r} is not callable")
            else:
                fn = target
        if fn is None:
            if kind == "polling":
                self.add(
                    file,
                    (*at, "function"),
                    "required for a polling accumulator (the function called every interval)",
                )
            fn = _identity

        model: type[BaseModel] | None = None
        model_is_list = False
        if cfg.model is not None:
            target, reason = resolve_ref(cfg.model)
            if reason is not None:
                self.add(file, (*at, "model"), reason)
            elif not (isinstance(target, type) and issubclass(target, BaseModel)):
                self.add(file, (*at, "model"), f"{cfg.model!r} is not a pydantic model class")
            else:
                model, model_is_list = target, kind == "batch"
        elif kind != "polling":
            if cfg.function is not None:
                model, model_is_list = find_model(fn)
            elif existing is not None:
                model, model_is_list = existing.model, existing.model_is_list
        if len(self.issues.items) > before:
            return None

        def pick(key: str, default: Any) -> Any:
            value = getattr(cfg, key)
            if value is not None:
                return value
            return getattr(existing, key) if existing is not None else default

        return AccumulatorSpec(
            name=name,
            kind=AccumulatorKind(kind),
            fn=fn,
            topic=topic,
            group=pick("group", None),
            source_type=existing.source_type if existing else "kafka",
            interval=pick("interval", 5.0) if kind == "polling" else None,
            flush_interval=pick("flush_interval", 1.0) if kind == "batch" else None,
            max_buffer_size=pick("max_buffer_size", None) if kind == "batch" else None,
            channel_size=pick("channel_size", DEFAULT_CHANNEL_SIZE),
            model=model,
            model_is_list=model_is_list,
        )

    # reactors
    def build_reactors(self) -> None:
        declared = set(self.m.entries["accumulators"]) | self.m.broken["accumulators"]
        for name, file, cfg in self.entries("reactors"):
            at = ("reactors", name)
            if not _NAME.match(name):
                self.add(file, at, "reactor names use letters, digits, '_', '-' and '.'")
                continue
            existing = find_reactor(name)
            if existing is not None and existing is not _declared_reactors.get(name):
                self.add(
                    file,
                    at,
                    f"reactor {name!r} is already declared by an imported module; "
                    "rename one of them",
                )
                continue
            bad = False
            for index, acc in enumerate(cfg.accumulators):
                if acc not in declared and acc not in registered_accumulators():
                    known = sorted(declared | set(registered_accumulators()))
                    self.add(
                        file,
                        (*at, "accumulators", index),
                        f"unknown accumulator {acc!r} (declared: {', '.join(known) or 'none'})",
                    )
                    bad = True
            if len(set(cfg.accumulators)) != len(cfg.accumulators):
                self.add(file, (*at, "accumulators"), "lists an accumulator twice")
                bad = True
            if bad:
                continue
            spec = make_reactor_spec(name, cfg.accumulators, cfg.mode, cfg.strategy)
            register_reactor(spec)
            _declared_reactors[name] = spec
            self.reactors[name] = spec
            self.origins[f"reactors.{name}"] = file

    def _reactor(self, name: str) -> ReactorSpec | None:
        return self.reactors.get(name) or find_reactor(name)

    # graphs
    def build_graphs(self) -> None:
        sinks = self.known("sinks")
        for name, file, cfg in self.entries("graphs"):
            at = ("graphs", name)
            if not _NAME.match(name):
                self.add(file, at, "graph names use letters, digits, '_', '-' and '.'")
                continue
            for index, sink in enumerate(cfg.sinks):
                if sink not in sinks:
                    self.add(
                        file,
                        (*at, "sinks", index),
                        f"unknown sink {sink!r} (declared: {', '.join(sorted(sinks)) or 'none'})",
                    )
            if cfg.topology is not None:
                self._graph_from_topology(name, file, cfg)
            else:
                self._configure_module_graph(name, file, cfg)
            self.graph_sinks[name] = list(dict.fromkeys(cfg.sinks))
            self.config_graphs.add(name)
            self.origins[f"graphs.{name}"] = file

    def _policy(self, name: str, cfg: GraphConfig, graph: ComputationGraph | None) -> RetryPolicy:
        if cfg.retry is None:
            return graph.retry if graph is not None else RetryPolicy()
        return RetryPolicy(cfg.retry.attempts, cfg.retry.backoff, cfg.retry.max_backoff)

    def _graph_from_topology(self, name: str, file: str, cfg: GraphConfig) -> None:
        at = ("graphs", name)
        topology = cfg.topology or {}
        before = len(self.issues.items)
        existing = registered_graphs().get(name)
        if existing is not None and existing is not _declared_graphs.get(name):
            self.add(
                file,
                (*at, "topology"),
                f"graph {name!r} is already declared by an imported "
                "module; drop 'topology' and 'module' to configure that graph here, "
                "or give this one another name",
            )
            return
        if cfg.module is None:
            self.add(
                file,
                (*at, "module"),
                "required when the file gives the topology "
                "(the Python module whose functions are the nodes)",
            )
        if cfg.reactor is None:
            self.add(file, (*at, "reactor"), "required when the file gives the topology")
        module = None
        if cfg.module is not None:
            module, reason = import_module(cfg.module)
            if reason is not None:
                self.add(file, (*at, "module"), reason)
        if not topology:
            self.add(file, (*at, "topology"), "must name at least one node")
            return
        nodes = list(topology)
        for node, spec in topology.items():
            where = (*at, "topology", node)
            if not node.isidentifier():
                self.add(file, where, "node names must be Python identifiers")
            if spec.next is not None and spec.routes is not None:
                self.add(file, where, "has both 'next' and 'routes'; a node has one or neither")
            for key, targets in (("next", spec.next or []),):
                for target in targets:
                    if target not in topology:
                        self.add(
                            file,
                            (*where, key),
                            f"unknown node {target!r} (nodes: {', '.join(nodes)})",
                        )
            for variant, targets in (spec.routes or {}).items():
                for target in targets:
                    if target not in topology:
                        self.add(
                            file,
                            (*where, "routes", variant),
                            f"unknown node {target!r} (nodes: {', '.join(nodes)})",
                        )
            if module is not None:
                fn_name = spec.function or node
                fn_path = (*where, "function") if spec.function else where
                fn = getattr(module, fn_name, None)
                if fn is None:
                    self.add(file, fn_path, f"module {cfg.module!r} has no function {fn_name!r}")
                elif not callable(fn):
                    self.add(file, fn_path, f"{cfg.module}.{fn_name} is not callable")
        if not any(spec.inputs for spec in topology.values()):
            self.add(file, (*at, "topology"), "no entry node: at least one node needs 'inputs'")
        reactor = None
        if cfg.reactor is not None:
            reactor = self._reactor(cfg.reactor)
            if reactor is None and cfg.reactor not in self.m.broken["reactors"]:
                known = sorted(set(self.known("reactors")) | set(registered_reactors()))
                self.add(
                    file,
                    (*at, "reactor"),
                    f"unknown reactor {cfg.reactor!r} (declared: {', '.join(known) or 'none'})",
                )
        if reactor is not None:
            for node, spec in topology.items():
                foreign = [i for i in spec.inputs or [] if i not in reactor.accumulators]
                if foreign:
                    self.add(
                        file,
                        (*at, "topology", node, "inputs"),
                        f"{', '.join(map(repr, foreign))} "
                        + ("is not an accumulator" if len(foreign) == 1 else "are not accumulators")
                        + f" of reactor {reactor.name!r} (it watches "
                        f"{', '.join(reactor.accumulators)})",
                    )
        if len(self.issues.items) > before or module is None or cfg.reactor is None:
            return
        shape = {node: spec.shape() for node, spec in topology.items()}
        try:
            parse_topology(name, shape)
            builder = ComputationGraphBuilder(
                name,
                reactor=cfg.reactor,
                graph=shape,
                retry=self._policy(name, cfg, None),
                on_error=cfg.on_error or "dead_letter",
            )
            for node, spec in topology.items():
                builder.add_node(node, getattr(module, spec.function or node), spec.thread)
            _declared_graphs[name] = builder.build()
        except GraphDefinitionError as error:
            where: Path_ = (*at, "topology", error.node) if error.node else (*at, "topology")
            prefix = f"graph {name!r}" + (f", node {error.node!r}" if error.node else "") + ": "
            self.add(file, where, str(error).removeprefix(prefix))

    def _configure_module_graph(self, name: str, file: str, cfg: GraphConfig) -> None:
        at = ("graphs", name)
        if cfg.module is not None:
            _, reason = import_module(cfg.module)
            if reason is not None:
                self.add(file, (*at, "module"), reason)
                return
        graph = registered_graphs().get(name)
        if graph is None:
            where = f"module {cfg.module!r}" if cfg.module else "no imported module"
            self.add(
                file,
                at,
                f"no topology, and {where} declares graph {name!r}: "
                f"add [graphs.{name}.topology] or list the module that declares it in "
                "'modules'",
            )
            return
        if cfg.reactor is not None and cfg.reactor != graph.reactor_name:
            self.add(
                file,
                (*at, "reactor"),
                f"graph {name!r} is bound to reactor "
                f"{graph.reactor_name!r} by its module, not {cfg.reactor!r}",
            )
            return
        if cfg.retry is not None or cfg.on_error is not None:
            # a configured copy: the module's own graph object stays as declared
            register_graph(
                dataclasses.replace(
                    graph,
                    retry=self._policy(name, cfg, graph),
                    on_error=OnError(cfg.on_error) if cfg.on_error else graph.on_error,
                )
            )

    # sinks
    def check_sinks(self, worker: WorkerConfig) -> None:
        for name, file, cfg in self.entries("sinks"):
            at = ("sinks", name)
            allowed = _SINK_FIELDS[cfg.type]
            for key in cfg.model_fields_set - {"type"}:
                value = getattr(cfg, key)
                if key not in allowed and value not in (None, {}):
                    self.add(
                        file,
                        (*at, key),
                        f"not used by a {cfg.type} sink"
                        + (f" (it takes: {', '.join(sorted(allowed))})" if allowed else ""),
                    )
            if cfg.type == "kafka" and cfg.topic is None:
                self.add(file, (*at, "topic"), "required for a kafka sink")
            if cfg.type == "state_store" and not worker.state_store.enabled:
                where = self.m.worker_file or "the worker settings"
                self.add(
                    file,
                    (*at, "type"),
                    "a state_store sink writes to the worker's state store, which is "
                    f"disabled (worker.state_store.enabled = false in {where}): enable it "
                    "or use another sink type",
                )
            if cfg.type == "callback":
                if cfg.function is None:
                    self.add(file, (*at, "function"), "required for a callback sink")
                else:
                    target, reason = resolve_ref(cfg.function)
                    if reason is not None:
                        self.add(file, (*at, "function"), reason)
                    elif not callable(target):
                        self.add(file, (*at, "function"), f"{cfg.function!r} is not callable")

    # whole-worker checks
    def _where(self, graph: str, reactor: str) -> tuple[str, str]:
        """The file and field to blame for a wiring problem of ``graph``."""
        if f"graphs.{graph}" in self.origins:
            return self.origins[f"graphs.{graph}"], f"graphs.{graph}"
        if f"reactors.{reactor}" in self.origins:
            return self.origins[f"reactors.{reactor}"], f"reactors.{reactor}"
        return (self.m.files[0].file if self.m.files else "<config>"), "modules"

    def check_wiring(self, graphs: dict[str, ComputationGraph]) -> dict[str, AccumulatorSpec]:
        """Every graph's reactor and every reactor's accumulators exist and fit together."""
        used: dict[str, AccumulatorSpec] = {}
        for name, graph in graphs.items():
            file, where = self._where(name, graph.reactor_name)
            reactor = self._reactor(graph.reactor_name)
            if reactor is None:
                if graph.reactor_name not in self.m.broken["reactors"]:
                    self.add(
                        file,
                        where,
                        f"graph {name!r} binds to unknown reactor "
                        f"{graph.reactor_name!r}: declare it in [reactors] or import "
                        "the module that declares it",
                    )
                continue
            try:
                graph.check_reactor(reactor)
            except GraphDefinitionError as error:
                self.add(file, where, str(error))
            for acc in reactor.accumulators:
                try:
                    used[acc] = get_accumulator(acc)
                except KeyError:
                    if acc not in self.m.broken["accumulators"]:
                        self.add(
                            file,
                            where,
                            f"reactor {reactor.name!r} watches unknown "
                            f"accumulator {acc!r}: declare it in [accumulators] or import "
                            "the module that declares it",
                        )
        return used


def _check_worker(merged: Merged, loaded_needs_kafka: bool, issues: Issues) -> None:
    worker = merged.worker
    file = merged.worker_file or (merged.files[0].file if merged.files else "<config>")
    env_fields = merged.from_env.get(file, set())
    if loaded_needs_kafka and not worker.bootstrap_servers:
        issues.add(
            file,
            "worker.bootstrap_servers",
            "required: accumulators read Kafka topics "
            'or sinks write to Kafka; e.g. bootstrap_servers = "${KAFKA_BOOTSTRAP_SERVERS}"',
        )
    token = worker.http.token.get_secret_value() if worker.http.token else ""
    if worker.http.enabled and not worker.http.is_loopback and not token:
        issues.add(
            file,
            "worker.http.token",
            f"required when worker.http.host "
            f"({worker.http.host}) is not a loopback address; "
            'e.g. token = "${HEADRACE_TOKEN}"',
        )
    if token and "worker.http.token" not in env_fields:
        issues.add(
            file,
            "worker.http.token",
            "secrets must come from the environment, not the "
            'file: write token = "${HEADRACE_TOKEN}"',
        )
    for section in ("kafka", "consumer", "producer"):
        for key, value in getattr(worker, section).items():
            path = field_path("worker", section, key)
            if isinstance(value, SecretStr) and value.get_secret_value() and path not in env_fields:
                issues.add(
                    file,
                    path,
                    "secrets must come from the environment, not the file: "
                    f'write "{key}" = "${{VAR}}"',
                )
    if worker.state_store.enabled:
        try:
            from sqlalchemy.engine import make_url

            url = make_url(worker.state_store.url)
        except Exception as error:
            issues.add(file, "worker.state_store.url", f"not a database URL: {error}")
        else:
            if url.get_backend_name() not in ("sqlite", "postgresql"):
                issues.add(
                    file,
                    "worker.state_store.url",
                    f"unsupported database {url.get_backend_name()!r}: use sqlite:///FILE or "
                    "postgresql+psycopg://USER:${PASSWORD}@HOST/DB",
                )
            if url.password and "worker.state_store.url" not in env_fields:
                issues.add(
                    file,
                    "worker.state_store.url",
                    "the URL holds a password: take it "
                    'from the environment, e.g. url = "${HEADRACE_STATE_STORE_URL}"',
                )
    for parsed in merged.files:
        for name, (sink_file, sink) in merged.entries["sinks"].items():
            if sink_file != parsed.file:
                continue
            for key, value in sink.producer.items():
                path = field_path("sinks", name, "producer", key)
                if (
                    SECRET_KEY.search(key)
                    and isinstance(value, SecretStr)
                    and value.get_secret_value()
                    and path not in parsed.from_env
                ):
                    issues.add(
                        parsed.file,
                        path,
                        "secrets must come from the environment, not "
                        f'the file: write "{key}" = "${{VAR}}"',
                    )


def _resolve_groups(used: dict[str, AccumulatorSpec], merged: Merged) -> dict[str, AccumulatorSpec]:
    """Consumer group of each Kafka-backed accumulator: the file's ``group``, else the file's
    ``worker.group_id``, else the group its module declared, else ``worker.group_id``."""
    worker = merged.worker
    file_sets_group = "group_id" in worker.model_fields_set
    resolved = {}
    for name, spec in used.items():
        if spec.topic:
            entry = merged.entries["accumulators"].get(name)
            group = entry[1].group if entry is not None else None
            if group is None:
                group = worker.group_id if file_sets_group else (spec.group or worker.group_id)
            if group != spec.group:
                spec = dataclasses.replace(spec, group=group)
                register_accumulator(spec)
        resolved[name] = spec
    return resolved


# -- entry point --------------------------------------------------------------------------


def load_config(
    paths: Iterable[str | Path], *, environ: Mapping[str, str] | None = None
) -> LoadedConfig:
    """Parse, check and register everything the files declare; raise ``ConfigError``."""
    issues = Issues()
    files = [str(p) for p in paths]
    if not files:
        raise ConfigError([ConfigIssue("<command line>", "FILE", "give at least one config file")])
    _ensure_on_path(os.getcwd())
    parsed = [parse_file(path, issues, environ) for path in files]
    merged = merge(parsed, issues)

    resolver = Resolver(merged, issues)
    resolver.import_modules()
    resolver.build_accumulators()
    resolver.build_reactors()
    resolver.check_sinks(merged.worker)
    resolver.build_graphs()
    graphs = registered_graphs()
    used = resolver.check_wiring(graphs)
    needs_kafka = any(spec.topic for spec in used.values()) or any(
        s.type == "kafka"
        for name, (_, s) in merged.entries["sinks"].items()
        if any(name in sinks for sinks in resolver.graph_sinks.values())
    )
    _check_worker(merged, needs_kafka, issues)
    issues.raise_if_any()
    used = _resolve_groups(used, merged)

    reactors = {g.reactor_name: resolver._reactor(g.reactor_name) for g in graphs.values()}
    return LoadedConfig(
        files=files,
        worker=merged.worker,
        worker_file=merged.worker_file,
        accumulators=used,
        reactors={k: v for k, v in reactors.items() if v is not None},
        graphs=graphs,
        graph_sinks={name: resolver.graph_sinks.get(name, []) for name in graphs},
        sinks={name: entry for name, (_, entry) in merged.entries["sinks"].items()},
        origins=resolver.origins,
    )


def validate_files(
    paths: Iterable[str | Path], *, environ: Mapping[str, str] | None = None
) -> list[ConfigIssue]:
    """Every problem of ``paths`` (empty when they are fine)."""
    try:
        load_config(paths, environ=environ)
    except ConfigError as error:
        return error.issues
    return []
