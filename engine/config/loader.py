"""Loading config files: the public entry points ``load_config`` and ``validate_files``.

``load_config(paths)`` either returns a ``LoadedConfig`` (accumulators, reactors and graphs
registered, everything checked) or raises ``ConfigError`` with every problem found, each
naming its file, its field path and the reason. Nothing is started here. The steps live in
``engine.config_files`` (read, interpolate, validate, merge), ``engine.config_imports``
(import modules, resolve ``module:attr`` references), ``engine.config_resolve`` (register
accumulators, reactors and graphs; check sinks and wiring) and ``engine.config_worker``
(worker-wide settings and secrets).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from headrace.accumulators import AccumulatorSpec
from headrace.engine.config.files import Issues, merge, parse_file
from headrace.engine.config.guarantee import check_guarantee
from headrace.engine.config.imports import ensure_on_path, import_module, resolve_ref
from headrace.engine.config.resolve import Resolver, resolve_groups
from headrace.engine.config.schema import ConfigError, ConfigIssue, SinkConfig, WorkerConfig
from headrace.engine.config.worker import apply_token_variable, check_worker
from headrace.engine.graph.builder import ComputationGraph
from headrace.engine.graph.registry import registered_graphs
from headrace.reactors import ReactorSpec

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
    notices: list[str] = field(default_factory=list)
    """Warnings found while loading, logged when the worker starts."""

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


# -- entry point --------------------------------------------------------------------------


def load_config(
    paths: Iterable[str | Path], *, environ: Mapping[str, str] | None = None
) -> LoadedConfig:
    """Parse, check and register everything the files declare; raise ``ConfigError``."""
    issues = Issues()
    files = [str(p) for p in paths]
    if not files:
        raise ConfigError([ConfigIssue("<command line>", "FILE", "give at least one config file")])
    ensure_on_path(os.getcwd())
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
    notices = apply_token_variable(merged, os.environ if environ is None else environ)
    check_worker(merged, needs_kafka, issues)
    notices += check_guarantee(merged, resolver.graph_sinks, issues)
    issues.raise_if_any()
    used = resolve_groups(used, merged)
    max_depth = merged.worker.limits.max_depth
    used = {
        name: spec
        if spec.max_depth == max_depth
        else dataclasses.replace(spec, max_depth=max_depth)
        for name, spec in used.items()
    }

    reactors = {g.reactor_name: resolver.reactor_spec(g.reactor_name) for g in graphs.values()}
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
        notices=notices,
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


__all__ = [
    "LoadedConfig",
    "import_module",
    "load_config",
    "resolve_ref",
    "validate_files",
]
