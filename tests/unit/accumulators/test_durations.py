"""Durations: "250ms", "5s", "1m", "1h" and numbers of seconds; errors name the owner."""

from __future__ import annotations

import pytest

from headrace.accumulators import (
    DurationError,
    batch_accumulator,
    parse_duration,
    polling_accumulator,
)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("250ms", 0.25),
        ("5s", 5.0),
        ("1m", 60.0),
        ("1h", 3600.0),
        ("1.5s", 1.5),
        (" 10 ms ", 0.01),
        (2, 2.0),
        (0.5, 0.5),
    ],
)
def test_valid_durations(value, seconds):
    assert parse_duration(value, "owner") == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value",
    [
        "5",  # no unit
        "5 sec",  # unknown unit
        "1d",  # unknown unit
        "ms",  # no number
        "",  # empty
        "abc",
        "-1s",  # negative
        "0s",  # zero
        "1e3s",
        "5S",  # units are lower case
        0,
        -3,
        -0.5,
        True,  # bools are not numbers of seconds
        None,
        [1],
        {"s": 1},
    ],
)
def test_invalid_durations_are_clear_errors_naming_the_owner(value):
    with pytest.raises(DurationError, match=r"the owner"):
        parse_duration(value, "the owner")


def test_duration_error_is_a_value_error():
    assert issubclass(DurationError, ValueError)


@pytest.mark.parametrize("bad", ["5", "soon", "-1s", 0, True])
def test_polling_interval_error_names_the_accumulator(bad):
    with pytest.raises(DurationError, match=r"accumulator 'my_poller' interval"):

        @polling_accumulator(interval=bad)
        def my_poller():
            return 1


@pytest.mark.parametrize("bad", ["1 minute", "0ms", -2])
def test_batch_flush_interval_error_names_the_accumulator(bad):
    with pytest.raises(DurationError, match=r"accumulator 'my_batch' flush_interval"):

        @batch_accumulator(flush_interval=bad)
        def my_batch(events):
            return events


def test_explicit_name_is_the_one_named_in_errors():
    with pytest.raises(DurationError, match=r"accumulator 'renamed'"):

        @polling_accumulator(interval="often", name="renamed")
        def poller():
            return 1


def test_invalid_declaration_registers_nothing():
    from headrace.accumulators import registered_accumulators

    with pytest.raises(DurationError):

        @polling_accumulator(interval="nope")
        def never_registered():
            return 1

    assert "never_registered" not in registered_accumulators()


def test_polling_and_batch_without_an_interval_are_rejected() -> None:
    from headrace.accumulators import DurationError, batch_accumulator, polling_accumulator

    def no_interval() -> int:
        return 1

    def no_flush(events: list[int]) -> int:
        return len(events)

    with pytest.raises(DurationError, match="accumulator 'no_interval' interval"):
        polling_accumulator(interval=None)(no_interval)  # type: ignore[arg-type]
    with pytest.raises(DurationError, match="accumulator 'no_flush' flush_interval"):
        batch_accumulator(flush_interval=None)(no_flush)  # type: ignore[arg-type]
