"""observe_many counts a batch of durations exactly as one observe() per duration does."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from headrace.engine.ops.metrics import LATENCY_BUCKETS, observe_many

AMOUNTS = st.lists(
    st.one_of(
        st.floats(min_value=-1.0, max_value=120.0, allow_nan=False),
        st.sampled_from(LATENCY_BUCKETS),  # exactly on a bound: le is inclusive
    ),
    max_size=200,
)


def rendered(amounts: list[float], batched: bool) -> bytes:
    registry = CollectorRegistry()
    histogram = Histogram("d", "d", ["graph"], buckets=LATENCY_BUCKETS, registry=registry)
    child = histogram.labels("g")
    if batched:
        observe_many(child, amounts)
    else:
        for amount in amounts:
            child.observe(amount)
    return b"\n".join(
        line for line in generate_latest(registry).splitlines() if b"_created" not in line
    )


@given(AMOUNTS, AMOUNTS)
def test_observe_many_matches_observe(first: list[float], second: list[float]) -> None:
    assert rendered(first + second, batched=True) == rendered(first + second, batched=False)
    assert b'd_bucket{graph="g",le="+Inf"} ' + str(float(len(first + second))).encode() in (
        rendered(first + second, batched=True)
    )


def test_observe_many_without_the_private_fields_falls_back_to_observe() -> None:
    seen: list[float] = []

    class Plain:
        def observe(self, amount: float) -> None:
            seen.append(amount)

    observe_many(Plain(), [0.1, 0.2])
    assert seen == [0.1, 0.2]
