"""Accumulators: named inputs that turn raw events into boundary values for reactors."""

from headrace.accumulators.channel import Ack, Channel, ChannelClosedError, Envelope
from headrace.accumulators.decorators import (
    batch_accumulator,
    passthrough_accumulator,
    polling_accumulator,
    stream_accumulator,
)
from headrace.accumulators.durations import DurationError, parse_duration
from headrace.accumulators.registry import (
    clear_accumulators,
    get_accumulator,
    register_accumulator,
    registered_accumulators,
    unregister_accumulator,
)
from headrace.accumulators.runners import AccumulatorRunner, BatchRunner, PollingRunner, make_runner
from headrace.accumulators.spec import (
    AccumulatorInputError,
    AccumulatorKind,
    AccumulatorSpec,
)

__all__ = [
    "AccumulatorInputError",
    "AccumulatorKind",
    "AccumulatorRunner",
    "AccumulatorSpec",
    "Ack",
    "BatchRunner",
    "Channel",
    "ChannelClosedError",
    "DurationError",
    "Envelope",
    "PollingRunner",
    "batch_accumulator",
    "clear_accumulators",
    "get_accumulator",
    "make_runner",
    "parse_duration",
    "passthrough_accumulator",
    "polling_accumulator",
    "register_accumulator",
    "registered_accumulators",
    "stream_accumulator",
    "unregister_accumulator",
]
