"""Resolving merged config entries against the registries.

``Resolver`` imports the files' modules, then turns their accumulators, reactors, graphs
and sinks into registered specs (or issues naming file, field and reason), and checks that
every graph's reactor and every reactor's accumulators exist and fit together.
``resolve_groups`` settles the consumer group of each Kafka-backed accumulator.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable
from typing import Any

from pydantic import BaseModel

from headrace.accumulators import (
    AccumulatorKind,
    AccumulatorSpec,
    get_accumulator,
    register_accumulator,
    registered_accumulators,
)
from headrace.accumulators.keys import MESSAGE_KEY, KeySetting, check_key_setting
from headrace.accumulators.spec import DEFAULT_CHANNEL_SIZE, check_scope, find_model
from headrace.engine.config.files import Issues, Merged, Path_
from headrace.engine.config.imports import ensure_on_path, import_module, resolve_ref
from headrace.engine.config.schema import (
    AccumulatorConfig,
    GraphConfig,
    WorkerConfig,
    field_path,
)
from headrace.engine.errors import GraphDefinitionError
from headrace.engine.graph.builder import (
    ComputationGraph,
    ComputationGraphBuilder,
    OnError,
    RetryPolicy,
)
from headrace.engine.graph.registry import register_graph, registered_graphs
from headrace.engine.graph.topology import parse_topology
from headrace.reactors import ReactorSpec, find_reactor, register_reactor, registered_reactors
from headrace.reactors.declaration import make_reactor_spec
from headrace.reactors.keyed import KEY_PARAMETER

_KIND_FIELDS: dict[str, set[str]] = {
    "stream": {"topic", "group", "model", "function", "channel_size", "strict", "key", "scope"},
    "batch": {
        "topic",
        "group",
        "model",
        "function",
        "flush_interval",
        "max_buffer_size",
        "channel_size",
        "key",
    },
    "polling": {"function", "interval", "channel_size", "key"},
    "passthrough": {"model", "function", "channel_size", "strict", "key"},
}

_SINK_FIELDS: dict[str, set[str]] = {
    "kafka": {"topic", "key", "producer"},
    "log": set(),
    "callback": {"function"},
    "state_store": set(),
}

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


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
                ensure_on_path(directory)
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
        key = self._key(file, at, kind, cfg, existing)
        scope = cfg.scope or (existing.scope if existing is not None else "group")
        try:
            check_scope("accumulator", kind, scope, key)
        except ValueError as error:
            self.add(file, (*at, "scope"), str(error).removeprefix("accumulator: "))
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
            strict=bool(pick("strict", False)),
            key=key,
            scope=scope,
        )

    def _key(
        self,
        file: str,
        at: Path_,
        kind: str,
        cfg: AccumulatorConfig,
        existing: AccumulatorSpec | None,
    ) -> KeySetting | None:
        """The accumulator's key: the file's ``key`` (a field, '@message', 'module:function')."""
        if cfg.key is None:
            return existing.key if existing is not None else None
        where = (*at, "key")
        setting: KeySetting = cfg.key
        if ":" in cfg.key:
            target, reason = resolve_ref(cfg.key)
            if reason is not None:
                self.add(file, where, reason)
                return None
            if not callable(target):
                self.add(file, where, f"{cfg.key!r} is not callable")
                return None
            setting = target
        elif cfg.key != MESSAGE_KEY and not cfg.key.isidentifier():
            self.add(
                file,
                where,
                f"must be a field name, '@message' or 'module:function', got {cfg.key!r}",
            )
            return None
        try:
            check_key_setting("accumulator", setting, kind)
        except ValueError as error:
            self.add(file, where, str(error).removeprefix("accumulator: "))
            return None
        return setting

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
            if cfg.keyed and KEY_PARAMETER in cfg.accumulators:
                self.add(
                    file,
                    (*at, "accumulators", cfg.accumulators.index(KEY_PARAMETER)),
                    f"{KEY_PARAMETER!r} is reserved in keyed reactors (entry nodes receive the "
                    "fire's key under that name): rename the accumulator",
                )
                bad = True
            if not cfg.keyed:
                for setting in ("max_concurrency", "max_keys", "key_ttl"):
                    if setting in cfg.model_fields_set:
                        self.add(
                            file,
                            (*at, setting),
                            "only applies to keyed reactors: set keyed = true",
                        )
                        bad = True
            if bad:
                continue
            if cfg.keyed:
                self._check_keys(name, file, cfg.accumulators)
            spec = make_reactor_spec(
                name,
                cfg.accumulators,
                cfg.mode,
                cfg.strategy,
                keyed=cfg.keyed,
                max_concurrency=cfg.max_concurrency,
                max_keys=cfg.max_keys,
                key_ttl=cfg.key_ttl,
            )
            register_reactor(spec)
            _declared_reactors[name] = spec
            self.reactors[name] = spec
            self.origins[f"reactors.{name}"] = file

    def _check_keys(self, reactor: str, file: str, accumulators: list[str]) -> None:
        """Every accumulator of a keyed reactor has a key (those known by now)."""
        for index, acc in enumerate(accumulators):
            spec = self.accumulators.get(acc) or registered_accumulators().get(acc)
            if spec is not None and spec.key is None:
                self.add(
                    file,
                    ("reactors", reactor, "accumulators", index),
                    _keyless_reason(acc, reactor),
                )

    def reactor_spec(self, name: str) -> ReactorSpec | None:
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
            reactor = self.reactor_spec(cfg.reactor)
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
            reactor = self.reactor_spec(graph.reactor_name)
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
            for index, acc in enumerate(reactor.accumulators):
                try:
                    used[acc] = get_accumulator(acc)
                    if reactor.keyed and used[acc].key is None:
                        self._keyless(reactor, index, acc, file, where)
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

    def _keyless(self, reactor: ReactorSpec, index: int, acc: str, file: str, where: str) -> None:
        """Report an accumulator without a key that feeds a keyed reactor."""
        origin = self.origins.get(f"reactors.{reactor.name}")
        if origin is not None:
            file, where = origin, field_path("reactors", reactor.name, "accumulators", index)
        self.add(file, where, _keyless_reason(acc, reactor.name))  # Issues keeps one per field


def _keyless_reason(accumulator: str, reactor: str) -> str:
    return (
        f"accumulator {accumulator!r} has no key, but reactor {reactor!r} is keyed: set "
        f"[accumulators.{accumulator}] key = \"<field>\" (a field of the value, '@message' or "
        "'module:function'), or key= on its decorator"
    )


def resolve_groups(used: dict[str, AccumulatorSpec], merged: Merged) -> dict[str, AccumulatorSpec]:
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
