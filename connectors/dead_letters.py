"""Dead letters: inputs that could not be handled, kept with the reason instead of dropped."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Protocol

import structlog

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

PREVIEW_CHARS = 1024
"""A cut-down payload keeps this much (bytes of a raw value, characters of a repr)."""


class DeadLetterError(RuntimeError):
    """No destination took a dead letter (each was also tried with the payload cut down)."""


def preview(payload: Any, limit: int = PREVIEW_CHARS) -> Any:
    """The payload cut down: raw bytes to ``limit`` bytes, anything else to a ``repr`` of
    at most ``limit`` characters (plain strings, so it always serializes)."""
    if isinstance(payload, bytes | bytearray):
        return bytes(payload[:limit])
    try:
        text = payload if isinstance(payload, str) else repr(payload)
    except Exception as error:
        text = f"<{type(payload).__name__}: repr failed: {type(error).__name__}>"
    return text if len(text) <= limit else text[:limit] + "..."


def shortened(letter: DeadLetter, limit: int = PREVIEW_CHARS) -> DeadLetter | None:
    """The letter with its payload cut down, or None when that would change nothing."""
    cut = preview(letter.payload, limit)
    if type(cut) is type(letter.payload) and cut == letter.payload:
        return None
    return dataclasses.replace(letter, payload=cut, reason=f"{letter.reason} (payload cut down)")


def where(letter: DeadLetter) -> dict[str, Any]:
    """The letter's fields but the payload, for a log line."""
    return {name: value for name in _LOGGED_FIELDS if (value := getattr(letter, name)) is not None}


async def send_with_fallback(destination: DeadLetterSink, letter: DeadLetter) -> DeadLetter:
    """Send ``letter``; if that fails, send it once more with the payload cut down (too
    large, not serializable, ...). Returns the letter that was sent; raises the last error."""
    try:
        await destination.send(letter)
        return letter
    except Exception as error:
        cut = shortened(letter)
        if cut is None:
            raise
        log.warning(
            "dead letter not sent; retrying with the payload cut down",
            destination=type(destination).__name__,
            error=f"{type(error).__name__}: {error}",
            **where(letter),
        )
        await destination.send(cut)
        return cut


class DeadLetterSink(Protocol):
    """Where dead letters go; ``send`` returns once the letter is durable."""

    async def send(self, letter: DeadLetter) -> None: ...


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
    """Sends each dead letter to every destination in turn, each falling back to a cut-down
    payload; the letter is kept when at least one destination took it (the others are the
    fallback: store and Kafka for each other). Raises ``DeadLetterError`` when none did."""

    def __init__(self, *destinations: DeadLetterSink) -> None:
        self.destinations = destinations
        self.failures = 0

    async def send(self, letter: DeadLetter) -> None:
        errors: list[str] = []
        for destination in self.destinations:
            try:
                await send_with_fallback(destination, letter)
            except Exception as error:
                self.failures += 1
                errors.append(f"{type(destination).__name__}: {type(error).__name__}: {error}")
                log.warning("dead letter destination failed", error=errors[-1], **where(letter))
        if len(errors) == len(self.destinations):
            raise DeadLetterError("no dead-letter destination took it: " + "; ".join(errors))
