"""Hooks through which metrics and the state store watch the runtime."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from headrace.connectors.dead_letters import DeadLetter


@dataclass(frozen=True)
class ExecutionRecord:
    """One graph execution, finished."""

    graph: str
    reactor: str
    fire: int
    started_at: float
    duration: float
    status: str  # "ok" | "failed"
    attempts: int
    error: str | None = None
    node: str | None = None


@dataclass(slots=True)
class ExecutionBatch:
    """Successful executions of one graph, one attempt each, reported together.

    Fire numbers ``fires``; ``started_at`` is the first one's start (Unix seconds) and
    ``durations`` their durations in order. An observer without ``on_executions`` is told
    about each of them as an ``ExecutionRecord``.
    """

    graph: str
    reactor: str
    fires: list[int]
    started_at: float
    durations: list[float]

    def records(self) -> list[ExecutionRecord]:
        return [
            ExecutionRecord(self.graph, self.reactor, fire, self.started_at, duration, "ok", 1)
            for fire, duration in zip(self.fires, self.durations, strict=True)
        ]


class RuntimeObserver(Protocol):
    """Everything is optional; observers must not raise and must be quick."""

    def on_execution(self, record: ExecutionRecord) -> None: ...

    def on_executions(self, batch: ExecutionBatch) -> None: ...

    def on_dead_letter(self, letter: DeadLetter) -> None: ...

    def on_delivered(self, accumulator: str, value: Any) -> None: ...

    def wants_delivered(self, accumulator: str) -> bool:
        """Whether ``on_delivered`` wants ``accumulator``'s values (absent: all of them)."""
        ...


class Observers:
    """Calls every observer that implements a hook, shielding the runtime from their errors."""

    def __init__(self, observers: list[Any] | None = None) -> None:
        self.observers = list(observers or [])

    def _call(self, hook: str, *args: Any) -> None:
        for observer in self.observers:
            method = getattr(observer, hook, None)
            if method is not None:
                try:
                    method(*args)
                except Exception:  # an observer must never break processing
                    structlog.get_logger("headrace.runtime").exception(
                        "observer failed", observer=type(observer).__name__, hook=hook
                    )

    def on_execution(self, record: ExecutionRecord) -> None:
        self._call("on_execution", record)

    def on_executions(self, batch: ExecutionBatch) -> None:
        """Report a batch: ``on_executions`` where an observer has it, else ``on_execution``
        once per execution."""
        records: list[ExecutionRecord] | None = None
        for observer in self.observers:
            if getattr(observer, "on_executions", None) is not None:
                self._call_one(observer, "on_executions", batch)
            elif getattr(observer, "on_execution", None) is not None:
                records = records if records is not None else batch.records()
                for record in records:
                    self._call_one(observer, "on_execution", record)

    def _call_one(self, observer: Any, hook: str, *args: Any) -> None:
        try:
            getattr(observer, hook)(*args)
        except Exception:  # an observer must never break processing
            structlog.get_logger("headrace.runtime").exception(
                "observer failed", observer=type(observer).__name__, hook=hook
            )

    def on_dead_letter(self, letter: DeadLetter) -> None:
        self._call("on_dead_letter", letter)

    def on_delivered(self, accumulator: str, value: Any) -> None:
        self._call("on_delivered", accumulator, value)

    def delivered_hook(self, accumulator: str) -> Callable[[str, Any], None] | None:
        """The ``on_delivered`` for ``accumulator``'s runner, or None when no observer
        wants its values (an observer may say so with ``wants_delivered(name) -> bool``):
        a stream accumulator's values then cost no call per message. The runtime asks
        when it starts and when a runner is added, so attach observers before that."""
        for observer in self.observers:
            if getattr(observer, "on_delivered", None) is None:
                continue
            wants = getattr(observer, "wants_delivered", None)
            if wants is None or wants(accumulator):
                return self.on_delivered
        return None
