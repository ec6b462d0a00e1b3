"""Publisher: owns the ``PriceReactor`` reactor and the two feeds it watches.

Port of the ``pricing-publisher`` package of Cloacina's cross-package binding tutorial.
Any number of graphs, in any module, may bind to ``PriceReactor`` by name.

Run it: ``python -m examples.cross_module.publisher``.
"""

from __future__ import annotations

from typing import Any

from examples._support import quiet_logs
from headrace.accumulators import passthrough_accumulator
from headrace.reactors import bound_graphs, reactor

REACTOR = "PriceReactor"


@passthrough_accumulator
def raw_prices(event: dict[str, Any]) -> dict[str, Any]:
    return event


@passthrough_accumulator
def normalized_prices(event: dict[str, Any]) -> dict[str, Any]:
    return event


@reactor(name=REACTOR, accumulators=["raw_prices", "normalized_prices"], mode="when_any")
class PriceReactor:
    """Fires when either price feed delivers."""


def main() -> None:
    quiet_logs()
    spec = PriceReactor.__headrace_reactor__  # type: ignore[attr-defined]
    print(f"publisher: reactor {spec.name!r} watches {list(spec.accumulators)} [{spec.mode}]")
    graphs = bound_graphs(REACTOR)
    print(f"  graphs bound to it now: {graphs or 'none'}")
    if not graphs:
        print("  run examples.cross_module.subscriber to bind a graph to it by name")


if __name__ == "__main__":
    main()
