"""Hooks through which metrics and the state store watch the runtime."""

from __future__ import annotations

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


class RuntimeObserver(Protocol):
    """Everything is optional; observers must not raise and must be quick."""

    def on_execution(self, record: ExecutionRecord) -> None: ...

    def on_dead_letter(self, letter: DeadLetter) -> None: ...

    def on_delivered(self, accumulator: str, value: Any) -> None: ...


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

    def on_dead_letter(self, letter: DeadLetter) -> None:
        self._call("on_dead_letter", letter)

    def on_delivered(self, accumulator: str, value: Any) -> None:
        self._call("on_delivered", accumulator, value)
