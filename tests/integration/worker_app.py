"""A Kafka worker for the fault tests: order books in, price signals out, until SIGTERM.

    python -m tests.integration.worker_app BOOTSTRAP INPUT_TOPIC OUTPUT_TOPIC GROUP

Settings come from HEADRACE_TEST_* environment variables (see ``Settings``). SIGTERM stops
the runtime (drain, commit, leave the group) and exits 0. With HEADRACE_TEST_HEALTH set, the
runtime's health is written there as JSON every 100 ms.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any

import orjson
import psutil
from pydantic import BaseModel

from headrace.accumulators import stream_accumulator
from headrace.connectors import KafkaDeadLetters, KafkaSink, KafkaSource
from headrace.engine import ComputationGraphBuilder, Runtime, node
from headrace.reactors import reactor


class OrderBook(BaseModel):
    id: int
    symbol: str
    bid: float
    ask: float
    bid_size: float
    ask_size: float


@dataclass(frozen=True)
class Settings:
    commit_interval: float = 0.5
    batch_size: int = 500
    channel_size: int = 1024
    slow_ms: float = 0.0
    max_rate: float = 0.0
    max_message_bytes: int = 1_000_000
    pause_after: float = 0.2
    consumer_config: dict[str, Any] | None = None
    health_file: str | None = None

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ
        prefix = "HEADRACE_TEST_"
        config = env.get(prefix + "CONSUMER_CONFIG")
        return cls(
            commit_interval=float(env.get(prefix + "COMMIT_INTERVAL", cls.commit_interval)),
            batch_size=int(env.get(prefix + "BATCH_SIZE", cls.batch_size)),
            channel_size=int(env.get(prefix + "CHANNEL_SIZE", cls.channel_size)),
            slow_ms=float(env.get(prefix + "SLOW_MS", cls.slow_ms)),
            max_rate=float(env.get(prefix + "MAX_RATE", cls.max_rate)),
            max_message_bytes=int(env.get(prefix + "MAX_MESSAGE_BYTES", cls.max_message_bytes)),
            pause_after=float(env.get(prefix + "PAUSE_AFTER", cls.pause_after)),
            consumer_config=orjson.loads(config) if config else None,
            health_file=env.get(prefix + "HEALTH"),
        )


def declare(input_topic: str, settings: Settings) -> None:
    """The accumulator, reactor and 2-node graph of the price-signal pipeline."""

    @stream_accumulator(topic=input_topic, name="orderbook", channel_size=settings.channel_size)
    def orderbook(event: OrderBook) -> OrderBook:
        if event.ask < event.bid:
            raise ValueError(f"crossed book: ask {event.ask} < bid {event.bid}")
        return event

    @reactor(name="signal_rx", accumulators=["orderbook"], strategy="sequential")
    class SignalReactor:
        pass

    pace = 1.0 / settings.max_rate if settings.max_rate else 0.0
    clock = {"next": 0.0}

    with ComputationGraphBuilder(
        "price_signal",
        reactor="signal_rx",
        graph={"mid": {"inputs": ["orderbook"], "next": "signal"}, "signal": {}},
    ):
        if settings.slow_ms:

            @node
            async def mid(orderbook: OrderBook) -> tuple[OrderBook, float]:
                await asyncio.sleep(settings.slow_ms / 1000)  # a slow downstream call
                return orderbook, (orderbook.bid + orderbook.ask) / 2

        else:

            @node
            def mid(orderbook: OrderBook) -> tuple[OrderBook, float]:
                if pace:  # cap the rate, so the crash test's duplicate bound means something
                    now = time.monotonic()
                    clock["next"] = max(clock["next"] + pace, now)
                    if clock["next"] - now > 0.005:
                        time.sleep(clock["next"] - now)
                return orderbook, (orderbook.bid + orderbook.ask) / 2

        @node
        def signal(book_mid: tuple[OrderBook, float]) -> dict[str, Any]:
            book, price = book_mid
            return {
                "id": book.id,
                "symbol": book.symbol,
                "mid": price,
                "spread": book.ask - book.bid,
                "side": "buy" if book.bid_size > book.ask_size else "sell",
            }


async def write_health(runtime: Runtime, path: str, source: KafkaSource) -> None:
    process = psutil.Process()
    tmp = path + ".tmp"
    while True:
        health = runtime.health()
        acc = health["accumulators"]["orderbook"]
        high_water = max(
            (ch.high_water for r in runtime.accumulators.values() for ch in r.channels), default=0
        )
        snapshot = {
            "pid": os.getpid(),
            "at": time.time(),
            "rss": process.memory_info().rss,
            "source": source.health(),
            "channel_depth": acc["channel_depth"],
            "channel_high_water": high_water,
            "delivered": acc["delivered"],
            "failed": runtime.failed(),
        }
        with open(tmp, "wb") as file:
            file.write(orjson.dumps(snapshot))
        os.replace(tmp, path)
        await asyncio.sleep(0.1)


async def main(bootstrap: str, input_topic: str, output_topic: str, group: str) -> int:
    settings = Settings.from_env()
    declare(input_topic, settings)
    source = KafkaSource(
        bootstrap,
        group,
        consumer_config=settings.consumer_config,
        commit_interval=settings.commit_interval,
        batch_size=settings.batch_size,
        max_message_bytes=settings.max_message_bytes,
        pause_after=settings.pause_after,
    )
    sink = KafkaSink(bootstrap, output_topic, key="signal.id")
    dead_letters = KafkaDeadLetters(bootstrap)
    runtime = Runtime(sources=[source], sinks=[sink], dead_letters=dead_letters)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await runtime.start()
    reporter = None
    if settings.health_file:
        reporter = asyncio.create_task(write_health(runtime, settings.health_file, source))
    print(f"worker {os.getpid()} started", flush=True)
    await stop.wait()
    print(f"worker {os.getpid()} stopping", flush=True)
    await runtime.stop()
    await dead_letters.close()
    if reporter is not None:
        reporter.cancel()
    print(f"worker {os.getpid()} stopped: {orjson.dumps(source.health()).decode()}", flush=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    sys.exit(asyncio.run(main(*sys.argv[1:])))
