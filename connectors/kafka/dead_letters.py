"""Dead letters on Kafka: bad messages beside their topic, failed executions on one topic."""

from __future__ import annotations

from typing import Any

import orjson

from headrace.connectors.dead_letters import DeadLetter
from headrace.connectors.kafka.producer import DeliveryProducer


def _jsonable(value: Any) -> Any:
    dump = getattr(value, "model_dump", None)
    if dump is not None:
        return dump(mode="json")
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return repr(value)


def _raw(payload: Any) -> bytes | None:
    if payload is None or isinstance(payload, bytes):
        return payload
    if isinstance(payload, str):
        return payload.encode()
    return orjson.dumps(payload, default=_jsonable, option=orjson.OPT_NON_STR_KEYS)


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
    ) -> None:
        self.topic_suffix = topic_suffix
        self.execution_topic = execution_topic
        self.producer = DeliveryProducer(bootstrap_servers, producer_config, name="dead-letters")
        self.sent = 0

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
        await self.producer.close()

    def health(self) -> dict[str, Any]:
        return {"sent": self.sent, **self.producer.health()}
