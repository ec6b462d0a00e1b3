"""Resolving one package's manifest with the config-file pipeline, under its own namespace.

``resolve_package`` imports the package's modules as ``<namespace>.<module>``, validates and
registers its accumulators, reactors, graphs and sinks exactly as ``load_config`` does for
files, and sorts its graphs into ready ones and pending ones (bound to a reactor nobody has
loaded yet). It changes the process registry: the caller snapshots and restores it when
the package is not applied.
"""

from __future__ import annotations

import dataclasses
import sys
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from headrace.accumulators import AccumulatorSpec
from headrace.engine.config.files import Issues, merge, parse_data
from headrace.engine.config.resolve import Resolver
from headrace.engine.config.schema import ConfigError, SinkConfig, WorkerConfig
from headrace.engine.graph.builder import ComputationGraph
from headrace.engine.packages.manifest import Manifest, namespaced, own_modules
from headrace.reactors import ReactorSpec
from headrace.registry import RegistrySnapshot, default_registry

NAMESPACE_ROOT = "headrace_packages"

KINDS = ("accumulators", "reactors", "graphs")


@dataclass
class ResolvedPackage:
    """What one package declares, checked and registered, ready to start."""

    manifest: Manifest
    namespace: str
    accumulators: dict[str, AccumulatorSpec] = field(default_factory=dict)
    reactors: dict[str, ReactorSpec] = field(default_factory=dict)
    graphs: dict[str, ComputationGraph] = field(default_factory=dict)
    graph_sinks: dict[str, list[str]] = field(default_factory=dict)
    sinks: dict[str, SinkConfig] = field(default_factory=dict)
    pending: dict[str, str] = field(default_factory=dict)
    """Graph -> why it waits (its reactor is not loaded)."""

    def declares(self) -> dict[str, list[str]]:
        return {
            "accumulators": sorted(self.accumulators),
            "reactors": sorted(self.reactors),
            "graphs": sorted(set(self.graphs) | set(self.pending)),
            "sinks": sorted(self.sinks),
        }


def install_namespace(namespace: str, manifest: Manifest) -> None:
    """Make ``namespace`` an importable package whose submodules are the package's files."""
    root = sys.modules.get(NAMESPACE_ROOT)
    if root is None:
        root = types.ModuleType(NAMESPACE_ROOT, "Namespaces of loaded Headrace packages.")
        root.__path__ = []
        sys.modules[NAMESPACE_ROOT] = root
    module = types.ModuleType(namespace, f"Headrace package {manifest.label}")
    module.__path__ = [str(manifest.directory)]
    module.__package__ = namespace
    sys.modules[namespace] = module


def drop_namespace(namespace: str) -> None:
    """Forget the package's modules, so nothing of their state outlives it."""
    for name in [n for n in sys.modules if n == namespace or n.startswith(namespace + ".")]:
        del sys.modules[name]


def _changed(before: Mapping[str, Any], after: Mapping[str, Any]) -> set[str]:
    return {name for name, value in after.items() if before.get(name) is not value}


def resolve_package(
    manifest: Manifest,
    namespace: str,
    *,
    owners: Mapping[tuple[str, str], str],
    worker: WorkerConfig | None = None,
    environ: Mapping[str, str] | None = None,
) -> ResolvedPackage:
    """Resolve ``manifest``; raise ``ConfigError`` (FILE: FIELD: REASON) on any problem.

    ``owners`` maps (section, name) to the package (or ``<config>``) that owns that name
    now; a package may only redeclare names it owns itself (an upgrade).
    """
    worker = worker or WorkerConfig()
    issues = Issues()
    file = manifest.file
    config = namespaced(manifest.config, namespace, own_modules(manifest.directory))
    before: RegistrySnapshot = default_registry.snapshot()
    install_namespace(namespace, manifest)

    pending: dict[str, str] = {}
    graphs_table = config.get("graphs")
    own_reactors = set(
        config.get("reactors", {}) if isinstance(config.get("reactors"), dict) else ()
    )
    if isinstance(graphs_table, dict):
        kept = {}
        for name, entry in graphs_table.items():
            reactor = entry.get("reactor") if isinstance(entry, dict) else None
            if (
                isinstance(reactor, str)
                and reactor not in own_reactors
                and default_registry.find_reactor(reactor) is None
            ):
                pending[name] = f"graph {name!r}: reactor {reactor!r} not loaded"
            else:
                kept[name] = entry
        config["graphs"] = kept

    parsed = parse_data(file, manifest.directory, config, issues, environ)
    merged = merge([parsed], issues)
    merged.worker = worker
    resolver = Resolver(merged, issues)
    resolver.import_modules()
    resolver.build_accumulators()
    resolver.build_reactors()
    resolver.check_sinks(worker)
    resolver.build_graphs()

    after = default_registry.snapshot()
    accumulators = set(resolver.accumulators) | _changed(before.accumulators, after.accumulators)
    reactors = set(resolver.reactors) | _changed(before.reactors, after.reactors)
    graph_names = (resolver.config_graphs | _changed(before.graphs, after.graphs)) - set(pending)
    for section, names in (
        ("accumulators", accumulators),
        ("reactors", reactors),
        ("graphs", graph_names | set(pending)),
    ):
        for name in sorted(names):
            owner = owners.get((section, name))
            if owner is not None and owner != manifest.name:
                issues.add(
                    file,
                    (section, name),
                    f"{section[:-1]} {name!r} already belongs to "
                    + ("the worker's config files" if owner == "<config>" else f"package {owner!r}")
                    + ": rename it",
                )

    ready: dict[str, ComputationGraph] = {}
    for name in sorted(graph_names):
        graph = after.graphs.get(name)
        if graph is None:
            continue  # the resolver reported why
        if default_registry.find_reactor(graph.reactor_name) is None:
            pending[name] = f"graph {name!r}: reactor {graph.reactor_name!r} not loaded"
        else:
            ready[name] = graph
    resolver.check_wiring(ready)
    issues.raise_if_any()

    max_depth = worker.limits.max_depth
    specs = {}
    for name in sorted(accumulators):
        spec = default_registry.get_accumulator(name)
        if spec.max_depth != max_depth:
            spec = dataclasses.replace(spec, max_depth=max_depth)
            default_registry.register_accumulator(spec)
        specs[name] = spec
    return ResolvedPackage(
        manifest=manifest,
        namespace=namespace,
        accumulators=specs,
        reactors={n: default_registry.get_reactor(n) for n in sorted(reactors)},
        graphs=ready,
        graph_sinks={n: resolver.graph_sinks.get(n, []) for n in ready},
        sinks={n: entry for n, (_, entry) in merged.entries["sinks"].items()},
        pending=pending,
    )


def validate_package(manifest: Manifest, environ: Mapping[str, str] | None = None) -> list[str]:
    """Every problem of a package, without keeping anything it registers or imports.

    Graphs bound to reactors of other packages are fine here (they wait at load time)."""
    saved = default_registry.snapshot()
    namespace = f"{NAMESPACE_ROOT}._validate_{manifest.name.replace('-', '_')}"
    try:
        resolve_package(manifest, namespace, owners={}, environ=environ)
    except ConfigError as error:
        return [str(issue) for issue in error.issues]
    finally:
        default_registry.restore(saved)
        drop_namespace(namespace)
    return []


def new_namespace(manifest: Manifest, serial: int) -> str:
    safe = manifest.name.replace("-", "_")
    version = "".join(c if c.isalnum() else "_" for c in manifest.version)
    return f"{NAMESPACE_ROOT}.{safe}_v{version}_{serial}"


__all__ = [
    "KINDS",
    "ResolvedPackage",
    "drop_namespace",
    "new_namespace",
    "resolve_package",
    "validate_package",
]
