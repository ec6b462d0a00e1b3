"""The firing rules, free of I/O: dirty flags, the input cache and what each fire consumes."""

from __future__ import annotations

from collections.abc import Callable, Iterable, KeysView
from dataclasses import dataclass, field
from typing import Any

from headrace.accumulators.channel import Envelope
from headrace.reactors.declaration import InputStrategy, ReactionMode, ReactorSpec


@dataclass(slots=True)
class Fire:
    """One firing: the input snapshot the graphs see and the envelopes it consumes.

    The reactor settles a fire once its graphs returned. A sink whose outputs are still in
    flight takes a ``hold`` first; the envelopes settle when the last hold is released.
    """

    number: int
    inputs: dict[str, Any]
    envelopes: list[Envelope] = field(default_factory=list)
    holds: int = 1
    key: str | None = None
    """The key this fire is for (keyed reactors); ``None`` for unkeyed reactors."""

    def hold(self) -> Callable[[], None]:
        """Delay settling until the returned release is called (exactly once)."""
        self.holds += 1
        return self.settle

    def settle(self) -> None:
        """Release one hold; the envelopes settle when none is left."""
        self.holds -= 1
        if self.holds == 0:
            for envelope in self.envelopes:
                for ack in envelope.acks:  # Envelope.settle, inlined: once per message
                    ack()


def settle_fires(fires: Iterable[Fire]) -> None:
    """``Fire.settle`` of each fire, in order (one call per batch, not per fire)."""
    for fire in fires:
        fire.holds -= 1
        if fire.holds == 0:
            for envelope in fire.envelopes:
                for ack in envelope.acks:
                    ack()


class FiringPolicy:
    """Applies deliveries to the input cache and decides when and with what to fire.

    ``latest``: a delivery replaces the cached value; a value replaced before any fire
    consumed it is settled at once (superseded). ``sequential``: each envelope is its
    own fire (``fire_with``), the criterion does not apply.
    """

    def __init__(self, spec: ReactorSpec) -> None:
        self.spec = spec
        self.only: str | None = spec.accumulators[0] if len(spec.accumulators) == 1 else None
        """The reactor's accumulator when it has just one (a fire's snapshot is its value)."""
        self.cache: dict[str, Any] = {}
        self._unfired: dict[str, Envelope] = {}
        self.fires = 0
        self.required = len(spec.accumulators)
        """How many accumulators ``when_all`` waits for (tables are looked up, not awaited)."""

    @property
    def dirty(self) -> KeysView[str]:
        """The accumulators that delivered since the last fire (those with an unfired value)."""
        return self._unfired.keys()

    @property
    def sequential(self) -> bool:
        return self.spec.strategy is InputStrategy.SEQUENTIAL

    def apply(self, envelope: Envelope) -> None:
        """Take a delivery into the cache (``latest``)."""
        superseded = self._unfired.pop(envelope.accumulator, None)
        if superseded is not None:
            superseded.settle()
        self.cache[envelope.accumulator] = envelope.value
        self._unfired[envelope.accumulator] = envelope

    def ready(self) -> bool:
        """Whether the criterion holds now."""
        if self.spec.mode is ReactionMode.WHEN_ALL:
            return len(self._unfired) == self.required
        return bool(self._unfired)

    def snapshot(self) -> dict[str, Any]:
        return {name: self.cache.get(name) for name in self.spec.accumulators}

    def begin_fire(self) -> Fire:
        """Start a fire on the current cache; clears the dirty flags."""
        self.fires += 1
        fire = Fire(self.fires, self.snapshot(), list(self._unfired.values()))
        self._unfired.clear()
        return fire

    def fire_with(self, envelope: Envelope) -> Fire:
        """Start a ``sequential`` fire for exactly this envelope."""
        self.cache[envelope.accumulator] = envelope.value
        self.fires += 1
        if self.only is not None:  # one accumulator: the snapshot is this value
            return Fire(self.fires, {self.only: envelope.value}, [envelope])
        return Fire(self.fires, self.snapshot(), [envelope])

    def unfired(self) -> list[Envelope]:
        return list(self._unfired.values())
