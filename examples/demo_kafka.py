"""``make demo``: a real worker on the price-signal example, against a real Kafka broker.

1. starts a local single-node Kafka broker (docker/local-kafka/kafka-local.sh; the first run
   downloads the jars from Maven Central), unless KAFKA_BOOTSTRAP_SERVERS names one;
2. runs ``headrace run examples/price_signal.toml`` in a subprocess (its logs are shown
   prefixed with ``worker |``);
3. produces sample order books (plus a crossed book the accumulator drops and a message
   that is not JSON, which goes to the dead-letter topic);
4. shows the price signals on the output topic and the graph's health over HTTP;
5. stops the worker with SIGTERM (it drains, commits and exits 0), then the broker, also
   when something failed.

Run it: ``make demo`` or ``python -m examples.demo_kafka``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

ROOT = Path(__file__).resolve().parents[1]
KAFKA_LOCAL = ROOT / "docker" / "local-kafka" / "kafka-local.sh"
CONFIG = ROOT / "examples" / "price_signal.toml"

BOOKS: list[Any] = [
    {"best_bid": 100.10, "best_ask": 100.15},
    {"best_bid": 100.12, "best_ask": 100.20},
    {"best_bid": 100.30, "best_ask": 100.25},  # crossed: the accumulator drops it
    b"this is not JSON",  # poison: dead-lettered to <topic>.dlq, the worker keeps going
    {"best_bid": 99.95, "best_ask": 100.05},
    {"best_bid": 100.40, "best_ask": 100.44},
]
EXPECTED_SIGNALS = 4


def say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Broker:
    """The local broker of docker/local-kafka, or the one KAFKA_BOOTSTRAP_SERVERS names."""

    def __init__(self) -> None:
        self.bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
        self.state: str | None = None

    def start(self) -> str:
        if self.bootstrap:
            say(f"using the Kafka broker at {self.bootstrap} (KAFKA_BOOTSTRAP_SERVERS)")
            return self.bootstrap
        say("starting a local Kafka broker (first run: jars from Maven Central, a few minutes)")
        subprocess.run(["bash", str(KAFKA_LOCAL), "fetch"], check=True, stdin=subprocess.DEVNULL)
        self.state = tempfile.mkdtemp(prefix="headrace-demo-kafka.")
        out = subprocess.run(
            ["bash", str(KAFKA_LOCAL), "start", "--owner-pid", str(os.getpid())],
            env={**os.environ, "HEADRACE_KAFKA_STATE": self.state},
            check=True,
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        ).stdout
        line = next(x for x in out.splitlines() if x.startswith("KAFKA_BOOTSTRAP_SERVERS="))
        self.bootstrap = line.split("=", 1)[1].strip()
        return self.bootstrap

    def stop(self) -> None:
        if self.state is None:
            return
        say("stopping the local Kafka broker")
        subprocess.run(
            ["bash", str(KAFKA_LOCAL), "stop"],
            env={**os.environ, "HEADRACE_KAFKA_STATE": self.state},
            check=False,
            stdin=subprocess.DEVNULL,
        )
        shutil.rmtree(self.state, ignore_errors=True)
        self.state = None


class Worker:
    """``headrace run`` in a subprocess, its log lines echoed with a prefix."""

    def __init__(self, env: dict[str, str]) -> None:
        headrace = Path(sys.executable).parent / "headrace"
        command = (
            [str(headrace)] if headrace.exists() else [sys.executable, "-m", "headrace.engine.cli"]
        )
        self.proc = subprocess.Popen(
            [*command, "run", str(CONFIG), "--log-format", "console"],
            cwd=ROOT,
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._echo = threading.Thread(target=self._pump, daemon=True)
        self._echo.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            print(f"  worker | {line.rstrip()}", flush=True)

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._echo.join(5)
        return self.proc.returncode


def create_topics(bootstrap: str, *names: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics(
        [NewTopic(n, num_partitions=1, replication_factor=1) for n in names]
    )
    for future in futures.values():
        future.result(timeout=30)


def http_json(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def wait_ready(base: str, worker: Worker, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.proc.poll() is not None:
            raise RuntimeError(f"the worker exited with {worker.proc.returncode} during start")
        try:
            if "price_signal" in http_json(f"{base}/v1/health/graphs", timeout=1):
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"the worker did not answer on {base} within {timeout}s")


def graph_health(base: str) -> dict[str, Any]:
    health: dict[str, Any] = http_json(f"{base}/v1/health/graphs")["price_signal"]
    return health


def wait_for(predicate: Any, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def produce(bootstrap: str, topic: str, base: str) -> None:
    """Produce one message at a time and wait for the worker to handle it (a burst would
    be coalesced into fewer fires under the ``latest`` strategy)."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for book in BOOKS:
        value = book if isinstance(book, bytes) else json.dumps(book).encode()
        before = graph_health(base)
        orderbook = before["accumulators"]["orderbook"]
        print(f"  produce {value.decode(errors='replace')}", flush=True)
        producer.produce(topic, value=value)
        producer.flush(10)
        if isinstance(book, bytes):
            time.sleep(1.0)  # dead-lettered by the Kafka source: no fire, no event
        elif book["best_ask"] < book["best_bid"]:
            wait_for(
                lambda o=orderbook: (
                    graph_health(base)["accumulators"]["orderbook"]["filtered"] > o["filtered"]
                )
            )
        elif not wait_for(lambda b=before: graph_health(base)["fire_count"] > b["fire_count"]):
            raise RuntimeError("the graph did not fire within 30s")


def consume(bootstrap: str, topic: str, count: int, timeout: float = 30.0) -> list[dict[str, Any]]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"demo-reader-{uuid.uuid4().hex[:6]}",
            "enable.auto.commit": False,
        }
    )
    values: list[dict[str, Any]] = []
    try:
        consumer.assign([TopicPartition(topic, 0, 0)])
        deadline = time.monotonic() + timeout
        while len(values) < count and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None or msg.error() is not None:
                continue
            values.append(json.loads(msg.value()))
    finally:
        consumer.close()
    return values


def main() -> int:
    run_id = uuid.uuid4().hex[:6]
    books_topic = f"price.orderbook.demo-{run_id}"
    signals_topic = f"price.signals.demo-{run_id}"
    state_dir = tempfile.mkdtemp(prefix="headrace-demo-state.")
    broker = Broker()
    worker: Worker | None = None
    started = time.monotonic()
    try:
        bootstrap = broker.start()
        create_topics(bootstrap, books_topic, signals_topic)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        say(f"headrace run {CONFIG.relative_to(ROOT)}   (HTTP {base})")
        worker = Worker(
            {
                "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
                "HEADRACE_GROUP_ID": f"headrace-demo-{run_id}",
                "HEADRACE_HTTP_PORT": str(port),
                "HEADRACE_STATE_STORE_URL": f"sqlite:///{state_dir}/state.db",
                "PRICE_ORDERBOOK_TOPIC": books_topic,
                "PRICE_SIGNAL_TOPIC": signals_topic,
            }
        )
        wait_ready(base, worker)
        say(f"producing {len(BOOKS)} order book messages to {books_topic}")
        produce(bootstrap, books_topic, base)

        say(f"price signals on {signals_topic}")
        signals = consume(bootstrap, signals_topic, EXPECTED_SIGNALS)
        for value in signals:
            print(f"  {value['emit']['text']}")
        if len(signals) < EXPECTED_SIGNALS:
            raise RuntimeError(f"expected {EXPECTED_SIGNALS} signals, got {len(signals)}")

        say(f"GET {base}/v1/health/graphs")
        health = graph_health(base)
        accumulator = health["accumulators"]["orderbook"]
        print(
            f"  price_signal: state={health['state']} fire_count={health['fire_count']} "
            f"executions={health['executions']} failures={health['failures']} "
            f"paused={health['paused']}"
        )
        print(
            f"  orderbook: events_in={accumulator['events_in']} "
            f"delivered={accumulator['delivered']} filtered={accumulator['filtered']} "
            f"channel_depth={accumulator['channel_depth']}"
        )

        say("stopping the worker with SIGTERM (drain, commit, leave the group)")
        code = worker.stop()
        worker = None
        print(f"  worker exit code: {code}")
        if code != 0:
            raise RuntimeError(f"the worker exited with {code}")
        say(f"demo done in {time.monotonic() - started:.1f}s")
        return 0
    except (subprocess.CalledProcessError, KafkaException, OSError, RuntimeError) as error:
        print(f"\ndemo failed: {error}", file=sys.stderr)
        return 1
    finally:
        if worker is not None:
            worker.stop()
        broker.stop()
        shutil.rmtree(state_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
