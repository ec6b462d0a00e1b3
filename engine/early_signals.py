"""Signals that arrive before the worker's event loop handles them.

``headrace run`` calls ``install()`` first thing; a SIGTERM or SIGINT that arrives while
the config loads and the worker is built is remembered instead of killing the process.
The worker asks ``take()`` once its own handlers are in place and then drains at once
(exit 0). A second early signal exits at once with 128 + the signal number, as a second
signal does later on.
"""

from __future__ import annotations

import os
import signal
from types import FrameType

_received: list[int] = []


def _remember(signum: int, _frame: FrameType | None) -> None:
    if _received:
        os._exit(128 + signum)
    _received.append(signum)


def install() -> None:
    """Remember SIGTERM/SIGINT from now on (main thread only)."""
    _received.clear()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _remember)


def take() -> int | None:
    """The first signal that arrived since ``install()``, if any; forgets it."""
    return _received.pop(0) if _received else None


__all__ = ["install", "take"]
