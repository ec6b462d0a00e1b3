"""Quix Streams: JSON topic -> filter(valid) -> apply(signal) -> JSON topic (its own venv)."""

from __future__ import annotations

import os
import sys

from quixstreams import Application

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pipeline import settings, signal, valid


def main() -> None:
    run = settings()
    app = Application(
        broker_address=run.bootstrap,
        consumer_group=run.group,
        auto_offset_reset="earliest",
        commit_interval=run.commit_interval,
        state_dir=os.path.join(run.state_dir, "quix-state"),
        loglevel="WARNING",
        consumer_extra_config=run.consumer_config or None,
    )
    source = app.topic(run.input_topic, value_deserializer="json")
    output = app.topic(run.output_topic, value_serializer="json")
    sdf = app.dataframe(source)
    sdf = sdf.filter(valid).apply(signal)
    sdf.to_topic(output)
    app.run()


if __name__ == "__main__":
    main()
