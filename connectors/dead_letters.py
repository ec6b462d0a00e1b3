"""Dead letters: inputs that could not be handled, kept with the reason instead of dropped."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import structlog

from headrace.connectors.base import DeadLetterSink

log = structlog.get_logger("headrace.dead_letters")


@dataclass(frozen=True)
class DeadLetter:
    """One input that was given up on, and why.

    ``kind`` is ``"message"`` (undecodable or invalid input), ``"batch"`` (a batch whose
    function raised) or ``"execution"`` (a graph execution that kept failing).
    """

    kind: str
    reason: str
    payload: Any
    accumulator: str | None = None
    graph: str | None = None
    node: str | None = None
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    at: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_LOGGED_FIELDS = tuple(f.name for f in fields(DeadLetter) if f.name != "payload")


class MemoryDeadLetters:
    """Keeps dead letters in memory (default for in-process runtimes and tests)."""

    def __init__(self, limit: int = 10_000) -> None:
        self.letters: list[DeadLetter] = []
        self.limit = limit

    async def send(self, letter: DeadLetter) -> None:
        # Not as_dict(): it would deep-copy the payload (a whole batch, say) only to drop it.
        log.warning("dead letter", **{name: getattr(letter, name) for name in _LOGGED_FIELDS})
        self.letters.append(letter)
        del self.letters[: -self.limit]


class FanOutDeadLetters:
    """Sends each dead letter to every destination in turn."""

    def __init__(self, *destinations: DeadLetterSink) -> None:
        self.destinations = destinations

    async def send(self, letter: DeadLetter) -> None:
        for destination in self.destinations:
            await destination.send(letter)


__all__ = ["DeadLetter", "DeadLetterSink", "FanOutDeadLetters", "MemoryDeadLetters"]
