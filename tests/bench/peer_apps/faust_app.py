"""faust-streaming: an agent over the raw input topic -> orjson, valid, signal -> send.

Run as ``python faust_app.py worker`` in its own venv. The app id is the consumer group.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator

import faust
import orjson

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pipeline import settings, signal, valid

run = settings()
app = faust.App(
    run.group,
    broker=f"kafka://{run.bootstrap}",
    broker_commit_interval=run.commit_interval,
    consumer_auto_offset_reset="earliest",
    web_enabled=False,
    datadir=os.path.join(run.state_dir, "faust-data"),
    store="memory://",
)
source = app.topic(run.input_topic, value_serializer="raw")
output = app.topic(run.output_topic, value_serializer="raw")


@app.agent(source)
async def books(stream: AsyncIterator[bytes]) -> None:
    async for value in stream:
        book = orjson.loads(value)
        if valid(book):
            await output.send(value=orjson.dumps(signal(book)))


if __name__ == "__main__":
    app.main()
