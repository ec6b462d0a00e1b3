"""The key of a boundary value: a field of it, a function of it, or the message's key."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from headrace.accumulators.spec import AccumulatorInputError

MESSAGE_KEY = "@message"
"""``key="@message"``: the key of the Kafka message that carried the value, decoded as UTF-8."""

KeySetting = str | Callable[[Any], str]
"""What an accumulator's ``key=`` takes: a field name, ``"@message"`` or ``value -> str``."""

_MISSING = object()


def check_key_setting(owner: str, key: Any, kind: str) -> None:
    """Reject a ``key=`` that can never work; ``owner`` names the accumulator."""
    if key is None or callable(key):
        return
    if not isinstance(key, str) or not key:
        raise ValueError(
            f"{owner}: key must be a field name, '@message' or a function value -> str, got {key!r}"
        )
    if key == MESSAGE_KEY and kind in ("polling", "batch"):
        raise ValueError(
            f"{owner}: key='@message' needs a value that arrives in a message; a {kind} "
            "accumulator's value does not (use a field name or a function)"
        )


def key_of(accumulator: str, setting: KeySetting, value: Any, message_key: Any = None) -> str:
    """The key of ``value`` per ``setting``; ``AccumulatorInputError`` says why there is none."""
    if setting == MESSAGE_KEY:
        return _message_key(accumulator, message_key)
    if callable(setting):
        try:
            key = setting(value)
        except Exception as error:
            raise AccumulatorInputError(accumulator, f"key function raised {error!r}") from error
        if not isinstance(key, str):
            raise AccumulatorInputError(
                accumulator, f"key function returned {type(key).__name__}, not str"
            )
        return key
    field = setting
    if isinstance(value, Mapping):
        found = value.get(field, _MISSING)
    else:
        found = getattr(value, field, _MISSING)
    if found is _MISSING:
        raise AccumulatorInputError(accumulator, f"key field {field!r} is missing from the value")
    if isinstance(found, bool) or not isinstance(found, str | int):
        raise AccumulatorInputError(
            accumulator,
            f"key field {field!r} is {type(found).__name__}, not a string (or an integer)",
        )
    return str(found)


def _message_key(accumulator: str, message_key: Any) -> str:
    if message_key is None:
        raise AccumulatorInputError(accumulator, "key='@message' but the message has no key")
    if isinstance(message_key, str):
        return message_key
    if isinstance(message_key, bytes | bytearray | memoryview):
        try:
            return bytes(message_key).decode("utf-8")
        except UnicodeDecodeError as error:
            raise AccumulatorInputError(
                accumulator, f"message key is not UTF-8: {error}"
            ) from error
    raise AccumulatorInputError(
        accumulator, f"message key is {type(message_key).__name__}, not bytes or str"
    )
