"""The Headrace pytest plugin (entry point ``pytest11``: ``headrace``).

Fixtures: ``headrace_registry``, ``kafka_broker``, ``kafka_bootstrap``, ``kafka_topic``,
``headrace_worker``, ``fake_clock``. A missing broker skips the test, or fails it under
``CI=true`` with the reason. Disable the plugin with ``-p no:headrace``.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from headrace.registry import Registry, default_registry
from headrace.testing.clock import FakeClock
from headrace.testing.infra import unavailable

if TYPE_CHECKING:
    from headrace.testing.kafka import Broker
    from headrace.testing.worker import HeadraceWorker, InProcessWorker


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "kafka: needs a real Kafka broker")


@pytest.fixture
def headrace_registry() -> Iterator[Registry]:
    """The process registry; declarations the test makes are undone after it."""
    with default_registry.isolated() as registry:
        yield registry


@pytest.fixture
def fake_clock() -> FakeClock:
    """A clock for ``Runtime(clock=...)``: polling and batch intervals pass on ``advance``."""
    return FakeClock()


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[Broker]:
    """A real Kafka broker for the session: ``$KAFKA_BOOTSTRAP_SERVERS``, else testcontainers
    (Docker), else the packaged local broker (Java 17 + Maven)."""
    from headrace.testing.kafka import NoBrokerError, choose_broker

    try:
        broker = choose_broker()
    except NoBrokerError as exc:
        unavailable(str(exc))
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker: Broker) -> str:
    """``host:port`` of the session's Kafka broker."""
    return kafka_broker.bootstrap


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:40] or "test"


@pytest.fixture
def kafka_topic(
    kafka_bootstrap: str, request: pytest.FixtureRequest
) -> Iterator[Callable[..., str]]:
    """Factory: ``kafka_topic(partitions=1, *, prefix=None, config=None)`` creates a fresh
    topic (leaders ready) and returns its name; the topics are deleted after the test."""
    from headrace.testing.kafka import create_topic, delete_topics, unique_topic

    created: list[str] = []

    def make(
        partitions: int = 1, *, prefix: str | None = None, config: dict[str, str] | None = None
    ) -> str:
        name = unique_topic(prefix or _slug(request.node.name))
        create_topic(kafka_bootstrap, name, partitions, config=config)
        created.append(name)
        return name

    yield make
    with contextlib.suppress(Exception):
        delete_topics(kafka_bootstrap, created, timeout=10)


@pytest.fixture
def headrace_worker(
    request: pytest.FixtureRequest,
) -> Iterator[Callable[..., HeadraceWorker | InProcessWorker]]:
    """Factory: ``headrace_worker(*toml_files, env=None, cwd=None, token=None, kafka=True,
    in_process=False, args=())`` starts ``headrace run`` in a subprocess (a
    ``HeadraceWorker``; ``args`` follow the files), or the same worker in this process (an
    ``InProcessWorker``). With ``kafka`` (default) it gets the session broker as
    ``KAFKA_BOOTSTRAP_SERVERS``. Workers still running at the end are killed; in-process
    declarations are undone."""
    from headrace.testing.worker import HeadraceWorker, InProcessWorker

    started: list[HeadraceWorker | InProcessWorker] = []

    def start(
        *files: str | Path,
        env: dict[str, str] | None = None,
        cwd: str | Path | None = None,
        token: str | None = None,
        kafka: bool = True,
        in_process: bool = False,
        args: Sequence[str] = (),
    ) -> HeadraceWorker | InProcessWorker:
        env = dict(env or {})
        bootstrap = env.get("KAFKA_BOOTSTRAP_SERVERS")
        if kafka and bootstrap is None:
            bootstrap = request.getfixturevalue("kafka_bootstrap")
        worker: HeadraceWorker | InProcessWorker
        if in_process:
            worker = InProcessWorker(files, env=env, bootstrap=bootstrap, token=token)
        else:
            worker = HeadraceWorker(
                files, env=env, cwd=cwd, bootstrap=bootstrap, token=token, args=args
            )
        started.append(worker)
        return worker

    with default_registry.isolated():
        yield start
        for worker in started:
            worker.kill()
    for worker in started:
        if isinstance(worker, InProcessWorker):
            worker.forget_modules()
