"""Runs a checked graph once: entry nodes get accumulator values, outputs flow along edges."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Mapping
from typing import Any

from headrace.engine.errors import GraphDefinitionError, NodeExecutionError, RoutingError
from headrace.engine.graph.nodes import NodeFunction
from headrace.engine.graph.topology import NodeShape, Topology
from headrace.reactors.keyed import KEY_PARAMETER

_SKIPPED = object()


class GraphExecutor:
    """Executes a topology with its node functions and returns ``{terminal: output}``.

    A node runs when it is an entry node, or when at least one parent passed it a value
    (through ``next`` or the route it chose). A node with one parent gets that value as
    its only argument; a node with several parents gets keyword arguments named after the
    parents (``None`` for a parent that did not pass it anything). All-sync graphs run in
    a plain loop; graphs with async nodes run independent branches concurrently.
    """

    def __init__(self, topology: Topology, functions: Mapping[str, NodeFunction]) -> None:
        self.topology = topology
        self.functions = dict(functions)
        self.graph = topology.graph
        self.key_nodes = self._find_key_nodes()
        """Entry nodes with a ``key`` parameter (not one of their inputs): they get the key."""
        self.key_required = frozenset(
            name
            for name in self.key_nodes
            if inspect.signature(self.functions[name].fn).parameters[KEY_PARAMETER].default
            is inspect.Parameter.empty
        )
        self._check_signatures()
        self.is_async = any(f.is_async or f.thread for f in self.functions.values())
        # run_sync's plan: (name, fn, shape, entry inputs or None, parents), in order.
        self._plan = [
            (
                name,
                self.functions[name].fn,
                topology.shapes[name],
                topology.shapes[name].inputs if topology.shapes[name].is_entry else None,
                topology.parents[name],
                name in self.key_nodes,
            )
            for name in topology.order
        ]
        self._lone = self._lone_node()

    def _lone_node(self) -> tuple[str, Any, str, bool] | None:
        """``(name, fn, input, positional)`` when the graph is one entry node of one input
        (no key, no edges): ``run_sync`` then calls it directly. ``positional``: its input
        is its first parameter and may be passed by position (no keyword dict per call)."""
        if len(self._plan) != 1:
            return None
        name, fn, shape, entry_inputs, _parents, takes_key = self._plan[0]
        if entry_inputs is None or len(entry_inputs) != 1 or takes_key:
            return None
        if shape.routes or shape.next:
            return None
        only = entry_inputs[0]
        parameters = list(inspect.signature(fn).parameters.values())
        positional = (
            bool(parameters)
            and parameters[0].name == only
            and parameters[0].kind
            in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        )
        return name, fn, only, positional

    def _find_key_nodes(self) -> frozenset[str]:
        found = set()
        for name in self.topology.entries:
            if KEY_PARAMETER in self.topology.shapes[name].inputs:
                continue
            parameters = inspect.signature(self.functions[name].fn).parameters
            if KEY_PARAMETER in parameters:
                found.add(name)
        return frozenset(found)

    def _check_signatures(self) -> None:
        for name in self.topology.order:
            shape = self.topology.shapes[name]
            signature = inspect.signature(self.functions[name].fn)
            try:
                if shape.is_entry:
                    extra = {KEY_PARAMETER: None} if name in self.key_nodes else {}
                    signature.bind(**dict.fromkeys(shape.inputs), **extra)
                elif len(self.topology.parents[name]) == 1:
                    signature.bind(None)
                else:
                    signature.bind(**dict.fromkeys(self.topology.parents[name]))
            except TypeError as error:
                expected = (
                    f"keyword parameters {list(shape.inputs)} (its inputs)"
                    if shape.is_entry
                    else "one argument (its parent's output)"
                    if len(self.topology.parents[name]) == 1
                    else f"keyword parameters {list(self.topology.parents[name])} (its parents)"
                )
                raise GraphDefinitionError(
                    self.graph,
                    f"function signature {signature} cannot take {expected}: {error}",
                    name,
                ) from None

    # -- arguments and routing ---------------------------------------------------------
    def _call_args(
        self,
        shape: NodeShape,
        inputs: Mapping[str, Any],
        received: dict[str, Any],
        key: str | None = None,
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        if shape.is_entry:
            kwargs = {name: inputs.get(name) for name in shape.inputs}
            if key is not None and shape.name in self.key_nodes:
                kwargs[KEY_PARAMETER] = key
            return (), kwargs
        parents = self.topology.parents[shape.name]
        if len(parents) == 1:
            return (received[parents[0]],), {}
        return (), {p: received.get(p) for p in parents}

    def _dispatch(
        self,
        shape: NodeShape,
        output: Any,
        edges: dict[str, dict[str, Any]],
        results: dict[str, Any],
    ) -> None:
        if shape.routes:
            if not (isinstance(output, tuple) and len(output) == 2 and output[0] in shape.routes):
                variants = sorted(shape.routes)
                raise RoutingError(
                    self.graph,
                    shape.name,
                    f"a routing node must return (variant, payload) with variant in {variants}, "
                    f"got {_preview(output)}",
                )
            variant, payload = output
            for target in shape.routes[variant]:
                edges.setdefault(target, {})[shape.name] = payload
        elif shape.next:
            for target in shape.next:
                edges.setdefault(target, {})[shape.name] = output
        else:
            results[shape.name] = output

    def check_inputs(self, inputs: Mapping[str, Any], key: str | None = None) -> None:
        unknown = sorted(set(inputs) - set(self.topology.input_names))
        if unknown:
            raise ValueError(
                f"graph {self.graph!r}: unknown inputs {unknown}; "
                f"expected some of {list(self.topology.input_names)}"
            )
        if key is None and self.key_required:
            raise ValueError(
                f"graph {self.graph!r}: nodes {sorted(self.key_required)} take a "
                f"{KEY_PARAMETER!r} parameter; pass execute(inputs, key=...)"
            )
        if key is not None and not isinstance(key, str):
            raise ValueError(f"graph {self.graph!r}: key must be a string, got {key!r}")

    # -- running -------------------------------------------------------------------------
    def run_sync(self, inputs: Mapping[str, Any], key: str | None = None) -> dict[str, Any]:
        """Run an all-sync graph in topological order, without an event loop.

        ``key`` (a keyed reactor's fire) goes to entry nodes with a ``key`` parameter.
        """
        lone = self._lone
        if lone is not None:  # one node: no plan loop, no edges
            name, fn, only, positional = lone
            try:
                output = fn(inputs.get(only)) if positional else fn(**{only: inputs.get(only)})
            except Exception as error:
                raise NodeExecutionError(self.graph, name, f"raised {error!r}") from error
            return {name: output}
        edges: dict[str, dict[str, Any]] = {}
        results: dict[str, Any] = {}
        for name, fn, shape, entry_inputs, parents, takes_key in self._plan:
            try:
                if entry_inputs is not None:
                    if len(entry_inputs) == 1:  # no comprehension (a frame each in 3.11)
                        only = entry_inputs[0]
                        kwargs = {only: inputs.get(only)}
                    else:
                        kwargs = {item: inputs.get(item) for item in entry_inputs}
                    if takes_key and key is not None:
                        kwargs[KEY_PARAMETER] = key
                    output = fn(**kwargs)
                else:
                    received = edges.get(name)
                    if not received:
                        continue
                    if len(parents) == 1:
                        output = fn(received[parents[0]])
                    else:
                        output = fn(**{p: received.get(p) for p in parents})
            except Exception as error:
                raise NodeExecutionError(self.graph, name, f"raised {error!r}") from error
            if shape.routes or shape.next:
                self._dispatch(shape, output, edges, results)
            else:
                results[name] = output
        return results

    async def run(self, inputs: Mapping[str, Any], key: str | None = None) -> dict[str, Any]:
        """Run the graph; independent async branches run concurrently."""
        if not self.is_async:
            return self.run_sync(inputs, key)
        edges: dict[str, dict[str, Any]] = {}
        results: dict[str, Any] = {}
        finished: dict[str, asyncio.Future[None]] = {
            name: asyncio.get_running_loop().create_future() for name in self.topology.order
        }

        async def run_node(name: str) -> None:
            try:
                parents = self.topology.parents[name]
                if parents:
                    await asyncio.gather(*(finished[p] for p in parents))
                shape = self.topology.shapes[name]
                received = edges.get(name)
                if shape.is_entry or received:
                    args, kwargs = self._call_args(shape, inputs, received or {}, key)
                    output = await self._call(name, args, kwargs)
                    self._dispatch(shape, output, edges, results)
                finished[name].set_result(None)
            except BaseException as error:
                finished[name].set_exception(error)
                raise

        tasks = [asyncio.create_task(run_node(name)) for name in self.topology.order]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        finally:  # a failed node fails the graph: its other branches are cancelled
            pending = [task for task in tasks if not task.done()]
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        for future in finished.values():
            if future.done() and not future.cancelled():
                future.exception()  # retrieved here; the first failure is raised below
        failures = [task.exception() for task in tasks if not task.cancelled()]
        for error in failures:  # topological order: the root failure comes first
            if error is not None:
                raise error
        return results

    async def _call(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        function = self.functions[name]
        try:
            if function.is_async:
                return await function.fn(*args, **kwargs)
            if function.thread:
                return await asyncio.to_thread(function.fn, *args, **kwargs)
            return function.fn(*args, **kwargs)
        except NodeExecutionError:
            raise
        except Exception as error:
            raise NodeExecutionError(self.graph, name, f"raised {error!r}") from error


def _preview(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
