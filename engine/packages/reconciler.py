"""The reconciler: loads, upgrades and unloads packages in a running ``Runtime``.

Pipeline order on load: accumulators, then reactors, then graphs bound to reactors (each
checked by the config-file pipeline). A package whose graph binds to a reactor nobody has
loaded stays ``pending`` with that reason and is retried whenever another package loads.
A package that fails is ``failed`` with the reason; the worker and the other packages keep
running.

Unloading stops the package's graphs, waits for their running fires and redeliveries, then
stops its reactors and accumulators. The guard refuses to unload (or to upgrade away) a
reactor or accumulator that parts of other packages still use, naming them.

A package's modules are imported (and its sections resolved) in a worker thread, so a slow
import never stalls the event loop. The process registry needs no lock of its own: only
the reconciler changes it at run time, always under ``_lock``, one package at a time.

Upgrading to a new version swaps graphs in one step on each reactor that keeps its name,
accumulators and settings: fires from then on run the new graphs, running fires finish on
the old ones, so no value is processed by neither and the reactor's ``latest`` /
``when_all`` cache carries over. Accumulators that keep their name and kind keep running
(with the new version's functions). A changed reactor is unloaded and loaded again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import structlog

from headrace.connectors.sinks import Sink
from headrace.engine.config.schema import ConfigError, SinkConfig, WorkerConfig
from headrace.engine.graph_runner import GraphRunner
from headrace.engine.packages.manifest import Manifest
from headrace.engine.packages.resolve import (
    ResolvedPackage,
    drop_namespace,
    new_namespace,
    resolve_package,
)
from headrace.engine.runtime import Runtime
from headrace.registry import default_registry

log = structlog.get_logger("headrace.packages")

Status = Literal["pending", "loaded", "failed"]
CONFIG_OWNER = "<config>"

SinkFactory = Callable[[str, SinkConfig], Sink]
SubscriptionHook = Callable[[list[str], list[str]], Awaitable[None]]
"""``(added, removed)`` accumulator names whose Kafka topics the worker must (un)subscribe."""


class PackageInUse(RuntimeError):
    """Unloading would take a reactor or accumulator from graphs of other packages."""

    def __init__(self, message: str, bound_graphs: list[str]) -> None:
        super().__init__(message)
        self.bound_graphs = bound_graphs


class UnknownPackage(KeyError):
    pass


@dataclass
class Candidate:
    """One uploaded version and how its load went."""

    manifest: Manifest
    status: Status = "pending"
    error: str | None = None
    reasons: list[str] = field(default_factory=list)
    declares: dict[str, list[str]] = field(default_factory=dict)
    uploaded_at: float = field(default_factory=time.time)
    loaded_at: float | None = None
    digest: str | None = None


@dataclass
class Loaded:
    """The version of a package that runs now, and the parts it started."""

    resolved: ResolvedPackage
    sinks: dict[str, Sink]

    @property
    def version(self) -> str:
        return self.resolved.manifest.version


@dataclass
class PackageState:
    name: str
    latest: Candidate
    loaded: Loaded | None = None

    def view(self) -> dict[str, Any]:
        latest = self.latest
        return {
            "name": self.name,
            "version": latest.manifest.version,
            "description": latest.manifest.description,
            "status": latest.status,
            "error": latest.error,
            "reasons": latest.reasons,
            "declares": latest.declares or latest.manifest.declares(),
            "loaded_version": self.loaded.version if self.loaded else None,
            "uploaded_at": latest.uploaded_at,
            "loaded_at": latest.loaded_at,
        }


class Reconciler:
    """Brings a running ``Runtime`` to the set of packages it was given."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        build_sink: SinkFactory,
        worker: WorkerConfig | None = None,
        environ: Mapping[str, str] | None = None,
        subscriptions: SubscriptionHook | None = None,
    ) -> None:
        self.runtime = runtime
        self.build_sink = build_sink
        self.worker = worker or WorkerConfig()
        self.environ = environ
        self.subscriptions = subscriptions
        self.packages: dict[str, PackageState] = {}
        self._lock = asyncio.Lock()
        self._serial = 0
        self._task: asyncio.Task[None] | None = None

    # -- queries --------------------------------------------------------------------------
    def owners(self) -> dict[tuple[str, str], str]:
        """(section, name) -> owning package; running parts no package owns are the files'."""
        owners: dict[tuple[str, str], str] = {}
        for name in self.runtime.accumulators:
            owners[("accumulators", name)] = CONFIG_OWNER
        for name in self.runtime.reactors:
            owners[("reactors", name)] = CONFIG_OWNER
        for name in self.runtime.graphs:
            owners[("graphs", name)] = CONFIG_OWNER
        for state in self.packages.values():
            if state.loaded is None:
                continue
            resolved = state.loaded.resolved
            for section, names in (
                ("accumulators", resolved.accumulators),
                ("reactors", resolved.reactors),
                ("graphs", resolved.graphs),
            ):
                for part in names:
                    owners[(section, part)] = state.name
        return owners

    def get(self, name: str) -> PackageState:
        try:
            return self.packages[name]
        except KeyError:
            known = ", ".join(sorted(self.packages)) or "none"
            raise UnknownPackage(f"unknown package {name!r} (packages: {known})") from None

    def versions(self) -> dict[str, str]:
        """Package -> the version running in this worker."""
        return {n: s.loaded.version for n, s in sorted(self.packages.items()) if s.loaded}

    def waiting_for_uploads(self) -> bool:
        """No graph runs (none in the files, none loaded from a package yet)."""
        return not self.runtime.graphs

    def health(self) -> dict[str, Any]:
        """Per package the version last given, its status and error, and the version that
        runs (``loaded_version``: the old one while an upgrade is pending or failed)."""
        states = [s.latest.status for s in self.packages.values()]
        return {
            "waiting_for_uploads": self.waiting_for_uploads(),
            "packages": [
                {
                    "name": name,
                    "version": state.latest.manifest.version,
                    "status": state.latest.status,
                    "error": state.latest.error,
                    "loaded_version": state.loaded.version if state.loaded else None,
                }
                for name, state in sorted(self.packages.items())
            ],
            "running": self.versions(),
            "counts": {k: states.count(k) for k in ("pending", "loaded", "failed")},
        }

    def guard(self, name: str, keep: ResolvedPackage | None = None) -> list[tuple[str, str]]:
        """``(graph, owner)`` of other owners that need what package ``name`` runs (and
        ``keep``, its next version, would no longer provide)."""
        state = self.packages.get(name)
        if state is None or state.loaded is None:
            return []
        resolved = state.loaded.resolved
        owners = self.owners()
        reactors = set(resolved.reactors) - set(keep.reactors if keep else ())
        accumulators = set(resolved.accumulators) - set(keep.accumulators if keep else ())
        users: set[tuple[str, str]] = set()
        for reactor, bound in self.runtime.bound.items():
            loop = self.runtime.reactors.get(reactor)
            watches = set(loop.spec.accumulators) if loop is not None else set()
            if reactor in reactors or (
                owners.get(("reactors", reactor)) != name and accumulators & watches
            ):
                for graph in bound.names:
                    owner = owners.get(("graphs", graph), "?")
                    if owner != name:
                        users.add((graph, owner))
        return sorted(users)

    def refusal(self, name: str, users: list[tuple[str, str]], what: str) -> PackageInUse:
        described = ", ".join(
            f"{g} ({'config files' if o == CONFIG_OWNER else 'package ' + o})" for g, o in users
        )
        return PackageInUse(
            f"package {name!r} cannot be {what}: graphs of other packages are bound to its "
            f"reactors or accumulators: {described}; delete those first",
            [g for g, _ in users],
        )

    # -- changes --------------------------------------------------------------------------
    def add(self, manifest: Manifest, digest: str | None = None) -> PackageState:
        """Queue ``manifest`` for loading (the caller checked it is new); returns its state."""
        candidate = Candidate(manifest, declares=manifest.declares(), digest=digest)
        state = self.packages.get(manifest.name)
        if state is None:
            state = self.packages[manifest.name] = PackageState(manifest.name, candidate)
        else:
            state.latest = candidate
        self.kick()
        return state

    def has_version(self, name: str, version: str) -> bool:
        state = self.packages.get(name)
        if state is None:
            return False
        if state.loaded is not None and state.loaded.version == version:
            return True
        return state.latest.manifest.version == version and state.latest.status != "failed"

    def kick(self) -> None:
        """Reconcile soon (in a task of its own; ``settle`` waits for it)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self.reconcile(), name="packages:reconcile")

    async def settle(self) -> None:
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    async def reconcile(self) -> None:
        """Load every pending package; repeat while loads succeed (reactors arrived)."""
        async with self._lock:
            progress = True
            while progress:
                progress = False
                for state in list(self.packages.values()):
                    if state.latest.status != "pending":
                        continue
                    if await self._load(state):
                        progress = True

    async def delete(self, name: str) -> dict[str, Any]:
        """Unload package ``name`` (``PackageInUse`` when others still need it)."""
        async with self._lock:
            state = self.get(name)
            users = self.guard(name)
            if users:
                raise self.refusal(name, users, "unloaded")
            version = state.loaded.version if state.loaded else state.latest.manifest.version
            if state.loaded is not None:
                await self._unload(state.loaded)
            del self.packages[name]
            log.info("package unloaded", package=name, version=version)
            return {"name": name, "version": version, "status": "unloaded"}

    # -- loading --------------------------------------------------------------------------
    async def _load(self, state: PackageState) -> bool:
        candidate = state.latest
        manifest = candidate.manifest
        saved = default_registry.snapshot()
        self._serial += 1
        namespace = new_namespace(manifest, self._serial)
        try:  # in a thread: a slow import (or a module that sleeps) must not stall the loop
            resolved = await asyncio.to_thread(
                resolve_package,
                manifest,
                namespace,
                owners=self.owners(),
                worker=self.worker,
                environ=self.environ,
            )
        except ConfigError as error:
            default_registry.restore(saved)
            drop_namespace(namespace)
            self._failed(candidate, [str(i).replace(f"{namespace}.", "") for i in error.issues])
            return False
        except Exception as error:  # a module's import side effects, say
            default_registry.restore(saved)
            drop_namespace(namespace)
            self._failed(candidate, [f"{manifest.file}: <load>: {type(error).__name__}: {error}"])
            return False
        candidate.declares = resolved.declares()
        if resolved.pending:
            default_registry.restore(saved)
            drop_namespace(namespace)
            reasons = sorted(resolved.pending.values())
            if candidate.reasons != reasons:
                log.info("package pending", package=manifest.label, reasons=reasons)
            candidate.status, candidate.reasons = "pending", reasons
            candidate.error = "waiting: " + "; ".join(reasons)
            return False
        old = state.loaded
        try:
            if old is None:
                state.loaded = await self._start(resolved)
            else:
                users = self.guard(state.name, keep=resolved)
                if users:
                    raise self.refusal(state.name, users, f"upgraded to {manifest.version}")
                state.loaded = await self._upgrade(old, resolved)
        except Exception as error:
            default_registry.restore(saved)
            drop_namespace(namespace)
            reason = (
                str(error)
                if isinstance(error, PackageInUse)
                else f"{type(error).__name__}: {error}"
            )
            self._failed(candidate, [f"{manifest.file}: <start>: {reason}"])
            return False
        candidate.status, candidate.error, candidate.reasons = "loaded", None, []
        candidate.loaded_at = time.time()
        log.info(
            "package loaded",
            package=manifest.label,
            upgraded_from=old.version if old else None,
            **resolved.declares(),
        )
        return True

    def _failed(self, candidate: Candidate, reasons: list[str]) -> None:
        candidate.status, candidate.reasons = "failed", reasons
        candidate.error = "; ".join(reasons)
        log.error("package failed to load", package=candidate.manifest.label, reasons=reasons)

    async def _sinks(self, resolved: ResolvedPackage) -> dict[str, Sink]:
        used = {s for names in resolved.graph_sinks.values() for s in names}
        sinks = {name: self.build_sink(name, resolved.sinks[name]) for name in sorted(used)}
        for sink in sinks.values():
            await sink.start()
        return sinks

    def _graph_sinks(
        self, resolved: ResolvedPackage, sinks: dict[str, Sink]
    ) -> dict[str, list[Sink]]:
        return {g: [sinks[s] for s in names] for g, names in resolved.graph_sinks.items()}

    async def _start(self, resolved: ResolvedPackage) -> Loaded:
        """Fresh load: accumulators, reactors, then graphs; undone on failure."""
        rt = self.runtime
        sinks = await self._sinks(resolved)
        per_graph = self._graph_sinks(resolved, sinks)
        added_acc: list[str] = []
        added_rx: list[str] = []
        bound: list[tuple[str, str]] = []
        try:
            for name, spec in resolved.accumulators.items():
                await rt.add_accumulator(spec)
                added_acc.append(name)
            for name, spec in resolved.reactors.items():
                rt.add_reactor(spec)
                added_rx.append(name)
            for name, graph in resolved.graphs.items():
                rt.swap_graphs(graph.reactor_name, [], [graph], per_graph)
                bound.append((graph.reactor_name, name))
            if self.subscriptions is not None:  # last: every value has a graph to reach
                await self.subscriptions(added_acc, [])
        except BaseException:
            for reactor, graph in bound:
                await rt.drain_graphs(reactor, rt.swap_graphs(reactor, [graph], []))
            for name in reversed(added_rx):
                await rt.remove_reactor(name)
            if self.subscriptions is not None and added_acc:
                await self.subscriptions([], added_acc)
            for name in reversed(added_acc):
                await rt.remove_accumulator(name)
            await _close(sinks)
            raise
        return Loaded(resolved, sinks)

    async def _unload(self, loaded: Loaded) -> None:
        rt = self.runtime
        resolved = loaded.resolved
        if self.subscriptions is not None:
            # first: the revoke waits for in-flight values (graphs still run) and commits
            await self.subscriptions([], list(resolved.accumulators))
        removed: list[tuple[str, list[GraphRunner]]] = []
        for name, graph in resolved.graphs.items():
            if graph.reactor_name in rt.bound:
                removed.append((graph.reactor_name, rt.swap_graphs(graph.reactor_name, [name], [])))
        for reactor, runners in removed:
            await rt.drain_graphs(reactor, runners)
        for name in resolved.reactors:
            if name in rt.reactors:
                await rt.remove_reactor(name)
        for name in resolved.accumulators:
            if name in rt.accumulators:
                await rt.remove_accumulator(name)
        await _close(list(loaded.sinks.values()))
        for name in resolved.graphs:
            if default_registry.find_graph(name) is not None:
                default_registry.unregister_graph(name)
        for name in resolved.reactors:
            if default_registry.find_reactor(
                name
            ) is not None and not default_registry.bound_graphs(name):
                default_registry.unregister_reactor(name)
        for name in resolved.accumulators:
            if default_registry.find_accumulator(name) is not None:
                default_registry.unregister_accumulator(name)
        drop_namespace(resolved.namespace)

    async def _upgrade(self, old: Loaded, new: ResolvedPackage) -> Loaded:
        """Swap ``old`` for ``new`` without losing input (see the module docstring)."""
        rt = self.runtime
        before = old.resolved
        changed_acc = [
            n
            for n in set(before.accumulators) & set(new.accumulators)
            if rt.accumulators[n].spec.kind is not new.accumulators[n].kind
        ]
        changed_rx = [
            n
            for n in set(before.reactors) & set(new.reactors)
            if rt.reactors[n].spec != new.reactors[n]
        ]
        if changed_acc or changed_rx:
            log.info(
                "package upgrade restarts its parts",
                package=new.manifest.label,
                changed_accumulators=sorted(changed_acc),
                changed_reactors=sorted(changed_rx),
            )
            await self._unload_keeping_registry(old)
            return await self._start(new)
        sinks = await self._sinks(new)
        per_graph = self._graph_sinks(new, sinks)
        added_acc = [n for n in new.accumulators if n not in before.accumulators]
        for name in set(before.accumulators) & set(new.accumulators):
            rt.accumulators[name].spec = new.accumulators[name]
        gone_acc = [n for n in before.accumulators if n not in new.accumulators]
        if self.subscriptions is not None and gone_acc:
            await self.subscriptions([], gone_acc)
        for name in added_acc:
            await rt.add_accumulator(new.accumulators[name])
        for name, spec in new.reactors.items():
            if name not in before.reactors:
                rt.add_reactor(spec)
            else:
                rt.reactors[name].spec = spec
        # one step per reactor: old graphs out, new graphs in
        reactors = {g.reactor_name for g in before.graphs.values()} | {
            g.reactor_name for g in new.graphs.values()
        }
        removed: list[tuple[str, list[GraphRunner]]] = []
        for reactor in sorted(reactors):
            if reactor not in rt.bound:
                continue
            out = [n for n, g in before.graphs.items() if g.reactor_name == reactor]
            into = [g for g in new.graphs.values() if g.reactor_name == reactor]
            removed.append((reactor, rt.swap_graphs(reactor, out, into, per_graph)))
        for reactor, runners in removed:
            await rt.drain_graphs(reactor, runners)
        for name in before.reactors:
            if name not in new.reactors and name in rt.reactors:
                await rt.remove_reactor(name)
        if self.subscriptions is not None and added_acc:
            await self.subscriptions(added_acc, [])
        for name in gone_acc:
            await rt.remove_accumulator(name)
        await _close(list(old.sinks.values()))
        for section, old_names, new_names in (
            ("graphs", before.graphs, new.graphs),
            ("reactors", before.reactors, new.reactors),
            ("accumulators", before.accumulators, new.accumulators),
        ):
            for name in set(old_names) - set(new_names):
                _unregister(section, name)
        drop_namespace(before.namespace)
        return Loaded(new, sinks)

    async def _unload_keeping_registry(self, old: Loaded) -> None:
        """Unload ``old``'s running parts; the registry already holds the new version's."""
        saved = default_registry.snapshot()
        await self._unload(old)
        default_registry.restore(saved)


def _unregister(section: str, name: str) -> None:
    if section == "graphs" and default_registry.find_graph(name) is not None:
        default_registry.unregister_graph(name)
    elif section == "reactors" and default_registry.find_reactor(name) is not None:
        if not default_registry.bound_graphs(name):
            default_registry.unregister_reactor(name)
    elif section == "accumulators" and default_registry.find_accumulator(name) is not None:
        default_registry.unregister_accumulator(name)


async def _close(sinks: Any) -> None:
    for sink in sinks.values() if isinstance(sinks, dict) else sinks:
        try:
            await sink.close()
        except Exception:
            log.exception("closing a package sink failed")


__all__ = [
    "Candidate",
    "PackageInUse",
    "PackageState",
    "Reconciler",
    "UnknownPackage",
]
