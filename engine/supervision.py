"""Supervision of long-lived parts: a task or callback that fails marks its component failed.

A ``Supervisor`` watches asyncio tasks (reactor loops, runner tasks, the fetch loop, the
HTTP server, ...) and takes failure reports from callbacks (fatal librdkafka errors).
A watched task that raises, is cancelled, or simply ends while the owner is not stopping
is a failure: it is logged as ``"component failed"`` with its cause, recorded for the
health endpoints, and the listeners (the worker, which then drains and exits 1) are told.
``fail`` may be called from any thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import structlog

log = structlog.get_logger("headrace.runtime")

FailureListener = Callable[["ComponentFailure"], None]


@dataclass(frozen=True)
class ComponentFailure:
    """Why one component stopped working."""

    component: str
    reason: str
    at: float


def describe(reason: BaseException | str) -> str:
    if isinstance(reason, BaseException):
        text = str(reason)
        return f"{type(reason).__name__}: {text}" if text else type(reason).__name__
    return reason if isinstance(reason, str) else str(reason)


class Supervisor:
    """Records component failures and tells listeners; see the module docstring."""

    def __init__(self) -> None:
        self.failures: dict[str, ComponentFailure] = {}
        self.stopping = False
        self._listeners: list[FailureListener] = []
        self._watched: set[int] = set()
        self._released: set[int] = set()
        self._reported: set[str] = set()
        self.repeats = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Remember the event loop that listeners run on (reports from threads hop to it)."""
        self._loop = loop
        self._loop_thread = threading.get_ident()

    def add_listener(self, listener: FailureListener) -> None:
        self._listeners.append(listener)

    @property
    def failed(self) -> bool:
        return bool(self.failures)

    def supervise(
        self,
        task: asyncio.Task[Any],
        component: str,
        *,
        explain: Callable[[], str | None] | None = None,
    ) -> None:
        """Fail ``component`` when ``task`` raises, or ends at all while not stopping.

        ``explain`` gives the reason for a task that ended without raising (say, the
        error a reactor recorded before its loop returned).
        """
        if id(task) in self._watched:
            return  # already watched (a part may supervise itself and be supervised too)
        self._watched.add(id(task))
        if self._loop is None:
            self.bind(task.get_loop())
        task.add_done_callback(partial(self._task_done, component, explain))

    def release(self, task: asyncio.Task[Any]) -> None:
        """``task`` may end from now on (a part removed at run time): not a failure."""
        self._released.add(id(task))

    def _task_done(
        self, component: str, explain: Callable[[], str | None] | None, task: asyncio.Task[Any]
    ) -> None:
        self._watched.discard(id(task))
        if id(task) in self._released:
            self._released.discard(id(task))
            if not task.cancelled() and task.exception() is not None:
                self.fail(component, task.exception())  # type: ignore[arg-type]
            return
        if task.cancelled():
            if not self.stopping:
                self.fail(component, "task cancelled while running")
            return
        error = task.exception()
        if error is not None:
            self.fail(component, error)
        elif not self.stopping:
            self.fail(component, (explain() if explain else None) or "task ended while running")

    def fail(self, component: str, reason: BaseException | str) -> None:
        """Mark ``component`` failed with ``reason`` (an exception is logged with its trace)."""
        exc_info = reason if isinstance(reason, BaseException) else None
        if component in self.failures or component in self._reported:
            self.repeats += 1  # one line per component; later reports are only counted
            return
        self._reported.add(component)
        with contextlib.suppress(Exception):  # never raise into the caller (a librdkafka cb)
            log.error(
                "component failed", component=component, reason=describe(reason), exc_info=exc_info
            )
        failure = ComponentFailure(component, describe(reason), time.time())
        loop = self._loop
        if loop is not None and threading.get_ident() != self._loop_thread:
            try:
                loop.call_soon_threadsafe(self._record, failure)
                return
            except RuntimeError:  # loop closed: record here, nobody listens any more
                pass
        self._record(failure)

    def _record(self, failure: ComponentFailure) -> None:
        self.failures.setdefault(failure.component, failure)
        for listener in list(self._listeners):
            try:
                listener(failure)
            except Exception:
                log.exception("failure listener raised", component=failure.component)

    def health(self) -> dict[str, Any]:
        return {
            name: {"reason": failure.reason, "at": failure.at}
            for name, failure in sorted(self.failures.items())
        }


__all__ = ["ComponentFailure", "FailureListener", "Supervisor", "describe"]
