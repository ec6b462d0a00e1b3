"""A sink that produces graph results to a Kafka topic, durable once the broker confirmed."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import orjson

from headrace.connectors.kafka.deliveries import GroupDone, ReportGroup
from headrace.connectors.kafka.producer import (
    Delivered,
    DeliveryProducer,
    FatalHandler,
    error_kind,
)
from headrace.connectors.sinks import SinkClosedError
from headrace.reactors.keyed import current_fire_key

KeyFunction = Callable[[str, dict[str, Any]], bytes | str | None]


def _default(value: Any) -> Any:
    dump = getattr(value, "model_dump", None)  # pydantic models
    if dump is not None:
        return dump(mode="json")
    if isinstance(value, set | frozenset):
        return list(value)
    raise TypeError(f"cannot serialize {type(value).__name__} to JSON")


def plain(value: Any) -> Any:
    """``value`` as plain JSON data for the standard library's encoder (any size of int)."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, dict):
        return {k if isinstance(k, str) else str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    return plain(_default(value))


def json_serializer(value: Any) -> bytes:
    """JSON with orjson; pydantic models and sets are converted, non-string keys written
    as strings. Integers beyond 64 bits (which orjson refuses) go through the standard
    library's encoder instead. ``OPT_NON_STR_KEYS`` doubles orjson's time, so it is only
    used once a plain encode refused the value."""
    try:
        return orjson.dumps(value, default=_default)
    except orjson.JSONEncodeError:
        pass
    try:
        return orjson.dumps(value, default=_default, option=orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError as error:
        if "Integer exceeds 64-bit range" not in str(error):
            raise
        return json.dumps(plain(value), separators=(",", ":"), ensure_ascii=False).encode()


def key_from_path(path: str) -> KeyFunction:
    """A key function reading ``path`` (``"node.field.sub"``) from the outputs; None if absent."""
    parts = path.split(".")

    def key(_graph: str, outputs: dict[str, Any]) -> bytes | str | None:
        value: Any = outputs
        for part in parts:
            value = value.get(part) if isinstance(value, dict) else getattr(value, part, None)
            if value is None:
                return None
        return value if isinstance(value, bytes | str) else str(value)

    return key


class KafkaSink:
    """Produces each graph execution's outputs (``{terminal node: output}``) as one message.

    ``key`` is a dotted path into the outputs (``"signal.symbol"``), a function
    ``key(graph, outputs)``, or None: then a keyed reactor's fire key (``None`` outside
    keyed reactors) is the message key. The graph name travels in the ``graph`` header.
    ``send`` returns once the broker acknowledged the message (``acks=all``, idempotent
    producer by default); ``submit`` hands the message over and reports durability later,
    so a reactor can fire again while earlier results are still in flight.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        *,
        key: str | KeyFunction | None = None,
        serializer: Callable[[Any], bytes] = json_serializer,
        producer_config: dict[str, Any] | None = None,
        max_in_flight: int = 100_000,
        close_timeout: float = 10.0,
    ) -> None:
        self.topic = topic
        self.key = key_from_path(key) if isinstance(key, str) else key
        self.serializer = serializer
        self.close_timeout = close_timeout
        self.producer = DeliveryProducer(
            bootstrap_servers, producer_config, max_in_flight=max_in_flight, name="sink"
        )
        self._headers: dict[str, list[tuple[str, bytes]]] = {}
        self._closed = False

    @property
    def on_fatal(self) -> FatalHandler | None:
        """Told about a fatal producer error (the runtime fails the sink's component)."""
        return self.producer.on_fatal

    @on_fatal.setter
    def on_fatal(self, handler: FatalHandler | None) -> None:
        self.producer.on_fatal = handler

    @staticmethod
    def classify(error: BaseException) -> str:
        """``fatal``, ``retriable`` (Kafka away: send again) or ``permanent``."""
        return error_kind(error)

    async def start(self) -> None:
        self._closed = False
        self.producer.start()

    def _check_open(self) -> None:
        if self._closed:
            raise SinkClosedError(
                f"kafka sink for topic {self.topic!r} is closed: it takes no results after "
                "close() (the worker is shutting down)"
            )

    def _encode(self, graph: str, outputs: dict[str, Any]) -> tuple[Any, ...]:
        """One result's value, key and headers (``_encode_many`` raising its error)."""
        values, keys, headers, error = self._encode_many(graph, [outputs], 0)
        if error is not None:
            raise error
        return values[0], keys[0], headers

    def _encode_many(
        self, graph: str, results: list[dict[str, Any]], start: int
    ) -> tuple[list[Any], list[Any], list[tuple[str, bytes]], Exception | None]:
        """Values and keys of ``results[start:]``, in order, up to the first that cannot be
        encoded (its error comes back, None when all could), and the graph's headers."""
        headers = self._headers.get(graph)
        if headers is None:
            headers = self._headers[graph] = [("graph", graph.encode())]
        key_of, serializer = self.key, self.serializer
        fire_key = current_fire_key() if key_of is None else None
        values: list[Any] = []
        keys: list[Any] = []
        try:
            for index in range(start, len(results)):
                outputs = results[index]
                key = key_of(graph, outputs) if key_of is not None else fire_key
                values.append(serializer(outputs))
                keys.append(key)
        except Exception as error:
            return values, keys, headers, error
        return values, keys, headers, None

    def submit(self, graph: str, outputs: dict[str, Any], delivered: Delivered) -> bool:
        """Produce now; ``delivered(error)`` follows on the loop. False: too busy, ``send``."""
        self._check_open()
        value, key, headers = self._encode(graph, outputs)
        return self.producer.produce_nowait(self.topic, value, key, headers, delivered)

    def open_group(self, graph: str, on_done: GroupDone) -> SinkGroup | None:
        """Results of one batch of ``graph`` whose reports come back together: ``on_done``
        hears the delivered tokens and the failed ones once the group is sealed and every
        report is in. None when this sink's producer is not its own (exactly-once)."""
        if not isinstance(self.producer, DeliveryProducer) or not self.producer.started:
            return None
        return SinkGroup(self, graph, self.producer.group(on_done))

    async def send(self, graph: str, outputs: dict[str, Any]) -> None:
        self._check_open()
        if not self.producer.started:
            await self.start()
        value, key, headers = self._encode(graph, outputs)
        await self.producer.produce(self.topic, value, key, headers)

    async def close(self) -> None:
        """Wait (up to ``close_timeout``) for every result in flight to be confirmed, then
        close the producer; later ``send``/``submit`` calls raise ``SinkClosedError``."""
        self._closed = True
        await self.producer.close(self.close_timeout)

    def health(self) -> dict[str, Any]:
        return {"topic": self.topic, **self.producer.health()}


class SinkGroup:
    """One batch's results for a ``KafkaSink`` (``KafkaSink.open_group``)."""

    __slots__ = ("_graph", "_group", "_sink")

    def __init__(self, sink: KafkaSink, graph: str, group: ReportGroup) -> None:
        self._sink = sink
        self._graph = graph
        self._group = group

    def submit_many(
        self, results: list[dict[str, Any]], tokens: list[Any], start: int = 0
    ) -> tuple[int, Exception | None]:
        """``KafkaSink.submit`` of ``results[start:]`` into the group, in order, each with
        its token (it comes back in ``on_done``). Stops at the first result not taken:
        returns its index (``len(results)`` when all were) and, when it could not be
        encoded or produced, the error (None: the producer is too busy; ``send`` it)."""
        sink = self._sink
        sink._check_open()
        values, keys, headers, error = sink._encode_many(self._graph, results, start)
        taken, failure = sink.producer.produce_many(
            sink.topic, values, keys, headers, self._group, tokens, start
        )
        if taken < len(values):
            return start + taken, failure
        return start + taken, error

    def seal(self) -> None:
        """The batch is over: ``on_done`` follows once its last report is in."""
        self._group.seal()
