"""Dead letters on Kafka: bad messages beside their topic, failed executions on one topic."""

from __future__ import annotations

import json
from typing import Any

import orjson

from headrace.connectors.dead_letters import DeadLetter
from headrace.connectors.kafka.producer import DeliveryProducer, FatalHandler


def _jsonable(value: Any) -> Any:
    dump = getattr(value, "model_dump", None)
    if dump is not None:
        return dump(mode="json")
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return repr(value)


def _plain(value: Any) -> Any:
    """Plain JSON data for the standard library's encoder (it writes ints of any size)."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, dict):
        return {k if isinstance(k, str) else repr(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(item) for item in value]
    return _jsonable(value)


def _raw(payload: Any) -> bytes | None:
    if payload is None or isinstance(payload, bytes):
        return payload
    if isinstance(payload, str):
        return payload.encode()
    try:
        return orjson.dumps(payload, default=_jsonable, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:  # orjson refuses ints beyond 64 bits (and a few other values)
        return json.dumps(_plain(payload), separators=(",", ":"), default=repr).encode()


class KafkaDeadLetters:
    """A ``DeadLetterSink`` on Kafka; ``send`` returns once the broker confirmed the letter.

    Message letters go to ``<source topic><topic_suffix>`` with the original bytes as the
    value and headers ``error`` (the reason), ``source.topic``, ``source.partition``,
    ``source.offset`` and ``accumulator``. Execution letters go to ``execution_topic`` as
    JSON: graph, node, reason, inputs, at.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        topic_suffix: str = ".dlq",
        execution_topic: str = "headrace.dead_letters",
        producer_config: dict[str, Any] | None = None,
        close_timeout: float = 10.0,
    ) -> None:
        self.topic_suffix = topic_suffix
        self.execution_topic = execution_topic
        self.close_timeout = close_timeout
        self.producer = DeliveryProducer(bootstrap_servers, producer_config, name="dead-letters")
        self.sent = 0

    @property
    def on_fatal(self) -> FatalHandler | None:
        return self.producer.on_fatal

    @on_fatal.setter
    def on_fatal(self, handler: FatalHandler | None) -> None:
        self.producer.on_fatal = handler

    async def start(self) -> None:
        self.producer.start()

    def topic_for(self, letter: DeadLetter) -> str:
        if letter.kind == "message" and letter.topic:
            return f"{letter.topic}{self.topic_suffix}"
        return self.execution_topic

    @staticmethod
    def headers_for(letter: DeadLetter) -> list[tuple[str, bytes]]:
        headers = [("error", letter.reason.encode("utf-8", "backslashreplace"))]
        fields = (
            ("source.topic", letter.topic),
            ("source.partition", letter.partition),
            ("source.offset", letter.offset),
            ("accumulator", letter.accumulator),
            ("graph", letter.graph),
            ("node", letter.node),
        )
        headers += [(name, str(value).encode()) for name, value in fields if value is not None]
        return headers

    async def send(self, letter: DeadLetter) -> None:
        if not self.producer.started:
            self.producer.start()
        topic = self.topic_for(letter)
        if topic == self.execution_topic:
            value = _raw(
                {
                    "kind": letter.kind,
                    "graph": letter.graph,
                    "node": letter.node,
                    "accumulator": letter.accumulator,
                    "reason": letter.reason,
                    "inputs": letter.payload,
                    "at": letter.at,
                }
            )
        else:
            value = _raw(letter.payload)
        await self.producer.produce(topic, value, None, self.headers_for(letter))
        self.sent += 1

    async def close(self) -> None:
        await self.producer.close(self.close_timeout)

    def health(self) -> dict[str, Any]:
        return {"sent": self.sent, **self.producer.health()}
