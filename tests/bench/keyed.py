"""Keyed reactor concurrency benchmark, in process; not a test.

    python -m tests.bench.keyed [--keys 1000] [--rounds 2] [--await-ms 5]

A keyed ``latest`` reactor over ``--keys`` keys whose async graph awaits ``--await-ms``
per fire (an HTTP or database call). Each round pushes one value per key; the run ends
when the reactor is idle. Run with ``max_concurrency = 16`` and ``= 1``; prints fires/s of
both and their ratio. Figures depend on the machine's load (printed with them).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import time
from dataclasses import dataclass

import structlog

from headrace.accumulators import passthrough_accumulator
from headrace.engine import ComputationGraphBuilder, Runtime
from headrace.reactors import reactor


@dataclass(frozen=True)
class Result:
    max_concurrency: int
    deliveries: int
    fires: int
    seconds: float

    @property
    def fires_per_second(self) -> float:
        return self.fires / self.seconds


async def measure(max_concurrency: int, keys: int, rounds: int, await_ms: float) -> Result:
    name = f"bench_keyed_{max_concurrency}"
    passthrough_accumulator(name=f"{name}_in", key="key", channel_size=4096)(lambda e: e)
    reactor(
        name=f"{name}_rx",
        accumulators=[f"{name}_in"],
        keyed=True,
        max_concurrency=max_concurrency,
        max_keys=keys,
    )(type("Rx", (), {}))
    delay = await_ms / 1000

    async def call_out(**_inputs: object) -> None:
        await asyncio.sleep(delay)

    with ComputationGraphBuilder(
        name, reactor=f"{name}_rx", graph={"call_out": {"inputs": [f"{name}_in"]}}
    ) as builder:
        builder.add_node("call_out", call_out)
    runtime = Runtime(graphs=[name])
    async with runtime:
        started = time.perf_counter()
        for round_ in range(rounds):
            for key in range(keys):
                await runtime.push(f"{name}_in", {"key": f"k{key}", "round": round_})
        await runtime.wait_idle(timeout=600)
        seconds = time.perf_counter() - started
        fires = runtime.reactors[f"{name}_rx"].fire_count
    return Result(max_concurrency, keys * rounds, fires, seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--await-ms", type=float, default=5.0)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    print(
        f"keyed latest, {args.keys} keys x {args.rounds} rounds, graph awaits "
        f"{args.await_ms:g} ms per fire; Python {platform.python_version()}, "
        f"{os.cpu_count()} cores, load average {load} (shared machine: figures are "
        "indicative only)"
    )
    results = {}
    for concurrency in (16, 1):
        result = asyncio.run(measure(concurrency, args.keys, args.rounds, args.await_ms))
        results[concurrency] = result
        print(
            f"max_concurrency={concurrency:>2}: {result.fires} fires of {result.deliveries} "
            f"deliveries in {result.seconds:.2f} s = {result.fires_per_second:,.0f} fires/s"
        )
    ratio = results[16].fires_per_second / results[1].fires_per_second
    print(f"max_concurrency 16 / 1 fires/s ratio: {ratio:.1f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
