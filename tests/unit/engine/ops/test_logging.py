"""Logging never raises into the caller, and every field renders as JSON."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from headrace.engine.ops.logging import LOG_FAILURES, configure_logging, jsonable


class Unrepresentable:
    def __repr__(self) -> str:
        raise ValueError("no repr")


class Ambiguous:
    """Like a numpy array: comparing it with anything raises."""

    def __eq__(self, other: object) -> bool:
        raise ValueError("truth value is ambiguous")

    __hash__ = object.__hash__


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    out = io.StringIO()
    configure_logging("debug", "json", stream=out)
    before = LOG_FAILURES.count
    yield out
    LOG_FAILURES.count = before  # the fallbacks provoked here are this file's business


def lines(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_the_revoke_log_with_tuple_keyed_offsets_renders_topic_partitions(
    json_logs: io.StringIO,
) -> None:
    before = LOG_FAILURES.count
    structlog.get_logger("headrace.kafka").info(
        "partitions revoked", group="g", partitions=[("t", 0), ("t", 1)], committed={("t", 0): 5}
    )
    (line,) = lines(json_logs)
    assert line["event"] == "partitions revoked"
    assert line["committed"] == {"t[0]": 5}
    assert line["partitions"] == ["t[0]", "t[1]"]
    assert LOG_FAILURES.count == before  # rendered properly, not by the fallback


def test_the_commit_failed_warning_with_tuple_keyed_offsets_renders(json_logs: io.StringIO) -> None:
    structlog.get_logger("headrace.kafka").warning(
        "commit failed",
        error="KafkaError{code=ILLEGAL_GENERATION}",
        offsets={("t", 0): 5, ("t", 3): 9},
    )
    (line,) = lines(json_logs)
    assert line["level"] == "warning" and line["offsets"] == {"t[0]": 5, "t[3]": 9}


def test_the_source_final_commit_failing_during_a_rebalance_does_not_raise(
    json_logs: io.StringIO,
) -> None:
    from headrace.connectors.kafka.source import KafkaSource

    class Fenced:
        def commit(self, **_: Any) -> None:
            raise KafkaException(KafkaError(KafkaError.ILLEGAL_GENERATION))

    source = KafkaSource("127.0.0.1:1", "g")
    assert source._commit_sync(Fenced(), {("t", 0): 5}) == {}  # type: ignore[arg-type]
    (line,) = [line for line in lines(json_logs) if line["event"] == "commit failed"]
    assert line["offsets"] == {"t[0]": 5}


def test_kafka_objects_sets_bytes_and_odd_floats_become_json(json_logs: io.StringIO) -> None:
    structlog.get_logger().info(
        "odd fields",
        tps=[TopicPartition("t", 2), TopicPartition("t", 3, 17)],
        by_tp={TopicPartition("t", 2): 1, 7: "seven", None: 0},
        names={"b", "a"},
        raw=b"\xffok",
        ratio=float("nan"),
        big=2**70,
        error=KeyError("k"),
    )
    (line,) = lines(json_logs)
    assert line["tps"] == ["t[2]", "t[3]@17"]
    assert line["by_tp"] == {"t[2]": 1, "7": "seven", "null": 0}
    assert line["names"] == ["a", "b"] and line["raw"] == "\\xffok"
    assert line["ratio"] == "nan" and line["big"] == 2**70 and line["error"] == "KeyError: 'k'"


def test_a_value_whose_repr_raises_degrades_only_that_field(json_logs: io.StringIO) -> None:
    structlog.get_logger().info("bad repr", good=1, bad=Unrepresentable())
    (line,) = lines(json_logs)
    assert line["good"] == 1 and "repr failed" in line["bad"]


def test_a_processor_that_raises_still_logs_a_line(json_logs: io.StringIO) -> None:
    before = LOG_FAILURES.count
    structlog.get_logger().warning("secret compare", token=Ambiguous(), n=3)  # redact raises
    (line,) = lines(json_logs)
    assert line["event"] == "secret compare" and line["n"] == 3
    assert "redact_secrets" in line["log_processor_error"]
    assert LOG_FAILURES.count == before + 1


def test_the_renderer_falls_back_instead_of_raising(json_logs: io.StringIO) -> None:
    def broken(_logger: Any, _method: str, event: Any) -> Any:
        raise TypeError("keys must be str, int, float, bool or None, not tuple")

    config = structlog.get_config()
    renderer = config["processors"][-1]
    renderer.renderer = broken
    before = LOG_FAILURES.count
    structlog.get_logger().error("partitions revoked", committed={("t", 0): 5})
    (line,) = lines(json_logs)
    assert line["event"] == "partitions revoked" and "keys must be str" in line["log_render_error"]
    assert "('t', 0)" not in line["fields"] and "t[0]" in line["fields"]
    assert LOG_FAILURES.count == before + 1


def test_a_closed_stream_never_raises_into_the_caller() -> None:
    out = io.StringIO()
    configure_logging("info", "json", stream=out)
    out.close()
    before = LOG_FAILURES.count
    structlog.get_logger().info("after close", committed={("t", 0): 1})
    logging.getLogger("uvicorn.error").warning("stdlib after close")
    assert LOG_FAILURES.count == before + 2  # both sides write through one SafePrintLogger
    LOG_FAILURES.count = before


def test_console_logs_render_topic_partitions_too() -> None:
    out = io.StringIO()
    configure_logging("info", "console", stream=out)
    structlog.get_logger().info("partitions revoked", committed={("t", 0): 5})
    assert "committed={'t[0]': 5}" in out.getvalue()


def test_jsonable_bounds_depth_of_nested_values() -> None:
    nested: list[Any] = []
    nested.append(nested)
    rendered = jsonable({"loop": nested})
    assert json.dumps(rendered)  # a cyclic value still becomes finite JSON


async def test_a_final_commit_failing_in_a_rebalance_still_closes_the_consumer(
    json_logs: io.StringIO,
) -> None:
    """SIGTERM during a rebalance: the last commit fails with ILLEGAL_GENERATION. Its warning
    (tuple-keyed offsets) must render, and close() must go on to close the consumer (the
    LeaveGroup), instead of raising out of close() and leaving the group to time out."""
    from headrace.connectors.kafka.call_thread import CallThread
    from headrace.connectors.kafka.source import KafkaSource

    class Rebalancing:
        closed = False

        def commit(self, **_: Any) -> None:
            raise KafkaException(KafkaError(KafkaError.ILLEGAL_GENERATION))

        def close(self) -> None:
            self.closed = True

    source = KafkaSource("127.0.0.1:1", "g")
    consumer = Rebalancing()
    source._consumer = consumer  # type: ignore[assignment]
    source._loop = asyncio.get_running_loop()
    source._executor = CallThread("test-consumer")
    source.tracker.begin(("t", 0), 5)()  # offset 5 handled: 6 is committable
    await source.close()
    assert consumer.closed
    (line,) = [line for line in lines(json_logs) if line["event"] == "commit failed"]
    assert line["offsets"] == {"t[0]": 6} and "ILLEGAL_GENERATION" in line["error"]


class SlowStream(io.StringIO):
    """A stream that gives other threads the GIL inside every write, like a pipe that
    blocks: two writers without one lock interleave their pieces of a line here."""

    def write(self, text: str) -> int:
        written = super().write(text)
        time.sleep(0)  # yields the GIL
        return written


def test_structlog_and_stdlib_writers_share_one_lock_so_no_json_line_is_torn() -> None:
    """librdkafka's log callback logs through stdlib logging on its own thread while the
    event loop logs through structlog: both must write whole lines to the one stream."""
    out = SlowStream()
    configure_logging("info", "json", stream=out)
    native = logging.getLogger("headrace.kafka.librdkafka")
    engine = structlog.get_logger("headrace.test")
    start = threading.Barrier(2)

    def stdlib_writer() -> None:
        start.wait()
        for n in range(300):
            native.warning("librdkafka says %d", n)

    thread = threading.Thread(target=stdlib_writer)
    thread.start()
    start.wait()
    for n in range(300):
        engine.info("engine says", n=n)
    thread.join(10)
    parsed = lines(out)  # raises on a torn line
    assert len(parsed) == 600
    assert sum(1 for line in parsed if line["event"] == "engine says") == 300
