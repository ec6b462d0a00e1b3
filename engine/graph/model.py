"""The graph model: ``ComputationGraph`` (a built, registered graph) and ``RetryPolicy``."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from headrace.engine.errors import GraphDefinitionError
from headrace.engine.graph.executor import GraphExecutor
from headrace.engine.graph.topology import Topology
from headrace.reactors import ReactorSpec
from headrace.reactors.keyed import KEY_PARAMETER


class OnError(StrEnum):
    DEAD_LETTER = "dead_letter"
    STOP = "stop"


@dataclass(frozen=True)
class RetryPolicy:
    """How often a failing execution is tried, and how long to wait between tries."""

    attempts: int = 1
    backoff: float = 0.1
    max_backoff: float = 5.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"retry attempts must be >= 1, got {self.attempts}")

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed ``attempt`` (1-based): exponential, capped."""
        return min(self.max_backoff, self.backoff * 2 ** (attempt - 1))


@dataclass
class ComputationGraph:
    """A registered graph: its topology, executor, reactor binding and error policy."""

    name: str
    reactor_name: str
    topology: Topology
    executor: GraphExecutor
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    on_error: OnError = OnError.DEAD_LETTER

    def check_reactor(self, spec: ReactorSpec) -> None:
        """Entry inputs must be accumulators the reactor watches; ``key`` needs ``keyed``."""
        if not spec.keyed and self.executor.key_required:
            node = sorted(self.executor.key_required)[0]
            raise GraphDefinitionError(
                self.name,
                f"takes a {KEY_PARAMETER!r} parameter, but reactor {spec.name!r} is not keyed "
                "(declare it with keyed=True, or drop the parameter)",
                node,
            )
        foreign = [i for i in self.topology.input_names if i not in spec.accumulators]
        if foreign:
            node = next(
                n
                for n in self.topology.entries
                if any(i in foreign for i in self.topology.shapes[n].inputs)
            )
            raise GraphDefinitionError(
                self.name,
                f"inputs {foreign} are not accumulators of reactor {spec.name!r} "
                f"(it watches {list(spec.accumulators)})",
                node,
            )

    async def execute_async(
        self, inputs: Mapping[str, Any], key: str | None = None
    ) -> dict[str, Any]:
        self.executor.check_inputs(inputs, key)
        return await self.executor.run(inputs, key)

    def execute(self, inputs: Mapping[str, Any], key: str | None = None) -> dict[str, Any]:
        """Run once; ``key`` is what a keyed reactor's fire passes to ``key`` parameters."""
        self.executor.check_inputs(inputs, key)
        if not self.executor.is_async:
            return self.executor.run_sync(inputs, key)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.executor.run(inputs, key))
        raise RuntimeError(
            f"graph {self.name!r}: execute() called inside a running event loop; "
            "use 'await builder.execute_async(inputs)'"
        )
