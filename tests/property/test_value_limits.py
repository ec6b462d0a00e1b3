"""The shared value limit: the iterative depth count agrees with the obvious recursive one,
and a value at ``ENCODER_DEPTH`` is written by both JSON encoders, one level more is not."""

from __future__ import annotations

from typing import Any

import orjson
import pydantic_core
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headrace.accumulators.limits import ENCODER_DEPTH, depth_problem, nesting_depth

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=40,
)


def reference_depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((reference_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((reference_depth(v) for v in value.values()), default=0)
    return 0


@settings(max_examples=300, deadline=None)
@given(json_values, st.integers(min_value=0, max_value=40))
def test_depth_matches_the_recursive_definition(value: Any, wrap: int) -> None:
    for _ in range(wrap):
        value = [value]
    depth = reference_depth(value)
    assert nesting_depth(value, stop_after=10_000) == depth
    limit = max(depth - 1, 1)
    assert (depth_problem(value, limit) is None) == (depth <= limit)


@settings(max_examples=50, deadline=None)
@given(json_values)
def test_both_encoders_write_values_at_the_encoder_depth(value: Any) -> None:
    for _ in range(ENCODER_DEPTH - reference_depth(value)):
        value = [value]
    assert reference_depth(value) == ENCODER_DEPTH
    assert depth_problem(value, ENCODER_DEPTH) is None
    pydantic_core.to_json(value)  # the state store's encoder
    orjson.dumps(value)  # the Kafka sink's
    with pytest.raises(TypeError, match="Recursion limit"):
        orjson.dumps([value])


@settings(max_examples=300, deadline=None)
@given(json_values, st.integers(min_value=0, max_value=70), st.integers(min_value=0, max_value=80))
def test_few_enough_brackets_in_the_json_is_never_too_deep(
    value: Any, wrap: int, limit: int
) -> None:
    """The Kafka source skips the depth walk when ``{`` plus ``[`` in the raw message are at
    most the limit: then the parsed value is never deeper than the limit."""
    for _ in range(wrap):
        value = [value]
    raw = orjson.dumps(value)
    if raw.count(b"{") + raw.count(b"[") <= limit:
        assert nesting_depth(orjson.loads(raw), limit) <= limit


@settings(max_examples=300, deadline=None)
@given(
    json_values,
    st.integers(min_value=0, max_value=70),
    st.integers(min_value=0, max_value=80),
    st.sampled_from([b"", b" ", b"   "]),
)
def test_a_json_document_short_enough_is_never_too_deep(
    value: Any, wrap: int, limit: int, padding: bytes
) -> None:
    """The Kafka source skips even the bracket count for a message of at most
    ``2 * limit + 1`` bytes: every level of nesting takes two bytes, so the parsed value is
    never deeper than the limit (whitespace only makes a document longer)."""
    for _ in range(wrap):
        value = [value]
    raw = orjson.dumps(value).replace(b",", b"," + padding)
    depth = nesting_depth(orjson.loads(raw), 10_000)
    assert 2 * depth <= len(raw)
    if len(raw) <= 2 * limit + 1:
        assert depth <= limit
