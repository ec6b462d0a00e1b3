"""Parse human durations such as "250ms", "5s", "1m", "1h" into seconds."""

from __future__ import annotations

import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*$")


class DurationError(ValueError):
    """A duration could not be parsed; the message names its owner."""


def parse_duration(value: str | float | int, owner: str) -> float:
    """Return ``value`` in seconds; ``owner`` names the thing it configures in errors."""
    if isinstance(value, bool):
        raise DurationError(
            f"{owner}: duration must be a number or a string like '5s', got {value!r}"
        )
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _PATTERN.match(value)):
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    else:
        raise DurationError(
            f"{owner}: invalid duration {value!r}; use a number of seconds or "
            "a string like '250ms', '5s', '1m', '1h'"
        )
    if seconds <= 0:
        raise DurationError(f"{owner}: duration must be positive, got {value!r}")
    return seconds
