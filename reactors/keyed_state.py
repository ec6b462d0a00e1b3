"""What a keyed reactor tells the log that backs its per-key state (a Kafka changelog).

The reactor package knows nothing about Kafka: a keyed loop with a ``KeyedStateLog``
reports each value it takes into a key's cache, each finished fire and each evicted key;
the log (``connectors.kafka.changelog.ChangelogWriter``) persists them and may ack a
value's offset early, once the value is durable.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from headrace.accumulators.channel import Envelope


class KeyedStateLog(Protocol):
    def recorded(self, envelope: Envelope) -> None:
        """A ``latest`` value entered its key's cache unfired (dirty)."""

    def fired(self, key: str, partition: int | None, values: Iterable[tuple[str, Any]]) -> None:
        """A fire of ``key`` returned: these ``(accumulator, value)`` are fired (clean)."""

    def forget(self, key: str, partition: int | None, accumulators: Iterable[str]) -> None:
        """``key`` was evicted: its entries go (tombstones)."""
