"""Run every example in process and print what each one does: ``python -m examples.demo``.

This is what ``make demo`` runs until the Kafka-backed worker lands.
"""

from __future__ import annotations

from collections.abc import Callable

from examples import batch_vwap, market_maker, multi_source_alert, price_signal
from examples._support import quiet_logs
from examples.cross_module import publisher, subscriber

EXAMPLES: list[tuple[str, Callable[[], None]]] = [
    ("Price signal: mid price and spread from order books", price_signal.main),
    ("Two-source alert: order book + reference price, when_all", multi_source_alert.main),
    ("Batch VWAP: a batch accumulator flushes 5 trades at a time", batch_vwap.main),
    ("Market maker: routing to Signal / NoAction", market_maker.main),
    ("Cross-module binding, publisher side", publisher.main),
    ("Cross-module binding, subscriber side and the unload guard", subscriber.main),
]


def main() -> None:
    quiet_logs()
    print("Headrace examples, in process (no Kafka needed)")
    for number, (title, run) in enumerate(EXAMPLES, start=1):
        print()
        print(f"== {number}. {title}")
        run()
    print()
    print(f"All {len(EXAMPLES)} examples ran.")


if __name__ == "__main__":
    main()
