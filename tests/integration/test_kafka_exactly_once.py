"""Exactly-once Kafka to Kafka, proven through ``headrace run`` workers on a real broker.

Each test runs the chaos soak's app (tests/integration/chaos.py) with ``guarantee =
"exactly_once"``: 2 workers in one group, a producer of good books and poison, and reads
the output and dead-letter topics with ``isolation.level=read_committed``.

- crash: workers are SIGKILLed at random points and restarted; an at_least_once group on
  the same input, killed at the same moments, runs beside it. The exactly-once outputs
  hold every good input once (0 lost, 0 duplicates) and every poison message is
  dead-lettered once; the at_least_once duplicates are printed beside them.
- broker restart mid-stream: 0 lost, 0 duplicates.
- zombie: a worker is SIGSTOPped past its session timeout, its partitions move, it is
  SIGCONTed; its late transaction is fenced: its producer was fenced (it stops non-zero
  with a "transaction fenced" line) or its stale group generation made it abort; either
  way read_committed shows nothing twice and nothing lost.

``make test`` runs short versions; ``HEADRACE_SOAK=long`` (``make soak``) runs the crash
test with >= 20 SIGKILLs and >= 30,000 messages.
"""

from __future__ import annotations

import os
import random
import signal
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures.kafka_broker import create_topic, unique_topic
from tests.integration.chaos import (
    CliWorker,
    DeadLetterReader,
    MixedProducer,
    SignalReader,
    own_broker,
    wait_until,
)
from tests.integration.eos_harness import CommittedDeadLetters, CommittedSignals, write_eos_app


@dataclass(frozen=True)
class CrashSize:
    messages: int
    rate: float
    kills: int
    timeout: float


SIZES = {
    "short": CrashSize(messages=3_000, rate=150, kills=4, timeout=600),
    "long": CrashSize(messages=32_000, rate=140, kills=22, timeout=2_400),
}
SIZE = os.environ.get("HEADRACE_SOAK", "short").strip().lower() or "short"
CRASH = SIZES.get(SIZE, SIZES["short"])

ABORTED = "transaction aborted; partitions rewound to their last commit"
FENCED_PREFIX = "transaction fenced"

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


class Pipeline:
    """One consumer group of 2 worker slots over the shared input topic."""

    def __init__(
        self, name: str, guarantee: str, bootstrap: str, in_topic: str, tmp: Path, **env: str
    ) -> None:
        self.name = name
        self.out_topic = create_topic(bootstrap, unique_topic(f"{name}-out"), partitions=3)
        self.dlq = create_topic(bootstrap, f"{in_topic}.{name}.dlq", partitions=1)
        self.execution_dlq = create_topic(bootstrap, unique_topic(f"{name}-exec"), partitions=1)
        self.group = f"{name}-{uuid.uuid4().hex[:8]}"
        directory = tmp / name
        directory.mkdir()
        config = write_eos_app(directory)
        base = {
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "SOAK_GROUP": self.group,
            "SOAK_IN_TOPIC": in_topic,
            "SOAK_OUT_TOPIC": self.out_topic,
            "SOAK_EXECUTION_DLQ": self.execution_dlq,
            "SOAK_GUARANTEE": guarantee,
            "SOAK_SESSION_TIMEOUT_MS": "6000",
            "SOAK_DLQ_SUFFIX": f".{name}.dlq",
            **env,
        }
        self.slots = [
            CliWorker(
                f"{name}-{slot}", config, {**base, "SOAK_TXN_ID": f"{self.group}-{slot}"}, directory
            )
            for slot in ("a", "b")
        ]

    def start(self) -> None:
        for slot in self.slots:
            slot.start()
        for slot in self.slots:
            slot.wait_ready(120)

    def kill_and_restart(self, index: int) -> None:
        slot = self.slots[index]
        if slot.alive():
            slot.kill()
        slot.start()

    def stop(self) -> list[int | None]:
        codes: list[int | None] = []
        for slot in self.slots:
            if slot.alive():
                slot.signal(signal.SIGTERM)
        for slot in self.slots:
            incarnation = slot.current
            if incarnation is not None:
                try:
                    codes.append(incarnation.proc.wait(120))
                except Exception:
                    codes.append(None)
        return codes

    def close(self) -> None:
        for slot in self.slots:
            slot.close()

    def events(self, name: str) -> int:
        return sum(len(slot.events(name)) for slot in self.slots)


def _unexpected_exits(pipeline: Pipeline) -> list[str]:
    return [
        f"{slot.name}#{i.number} exited {i.exit_code}"
        for slot in pipeline.slots
        for i in slot.incarnations
        if i.signalled is None and i.exit_code is not None
    ]


@pytest.mark.timeout(CRASH.timeout)
def test_sigkills_leave_every_input_exactly_once(tmp_path: Path) -> None:
    seed = int(os.environ.get("HEADRACE_SOAK_SEED") or random.SystemRandom().randrange(1 << 31))
    rng = random.Random(seed)
    with own_broker() as broker:
        bootstrap = broker.bootstrap
        in_topic = create_topic(bootstrap, unique_topic("eos-in"), partitions=3)
        eos = Pipeline("eos", "exactly_once", bootstrap, in_topic, tmp_path)
        alo = Pipeline("alo", "at_least_once", bootstrap, in_topic, tmp_path)
        feed = MixedProducer(bootstrap, in_topic, CRASH.messages, CRASH.rate, random.Random(seed))
        kills = 0
        try:
            eos.start()
            alo.start()
            feed.start()
            spacing = CRASH.messages / CRASH.rate / (CRASH.kills + 1)
            while kills < CRASH.kills:
                time.sleep(rng.uniform(0.4, 1.6) * spacing)
                index = rng.randrange(2)
                eos.kill_and_restart(index)  # at once, the same slot of both pipelines
                alo.kill_and_restart(index)
                kills += 1
            feed.finish(timeout=600)
            for pipeline in (eos, alo):
                for slot in pipeline.slots:
                    slot.wait_ready(120)
            committed = CommittedSignals(bootstrap, eos.out_topic)
            plain = SignalReader(bootstrap, alo.out_topic)
            letters = CommittedDeadLetters(bootstrap, eos.dlq)
            plain_letters = DeadLetterReader(bootstrap, alo.dlq)
            committed.wait_for(feed.good_ids, timeout=180)
            plain.wait_for(feed.good_ids, timeout=180)
            codes = eos.stop() + alo.stop()
            committed.poll(2.0)
            plain.poll(1.0)
            letters.wait_for(set(feed.poison), timeout=60)
            plain_letters.wait_for(set(feed.poison), timeout=60)
            letters.poll(1.0)
            plain_letters.poll(1.0)
        finally:
            eos.close()
            alo.close()
            feed.join(5)
    good = feed.good_ids
    eos_dups, alo_dups = committed.duplicates(), plain.duplicates()
    print(
        f"\nEOS CRASH {SIZE} seed={seed}: sent={feed.sent} good={len(good)} "
        f"poison={len(feed.poison)} kills={kills} (per pipeline) | exactly_once: "
        f"lost={len(good - committed.ids.keys())} duplicates={eos_dups} "
        f"aborts={eos.events(ABORTED)} "
        f"| at_least_once: lost={len(good - plain.ids.keys())} duplicates={alo_dups} "
        f"| dead letters: exactly_once {letters.records} (repeated "
        f"{letters.records - len(letters.sources)}), at_least_once {plain_letters.records} "
        f"(repeated {plain_letters.records - len(plain_letters.sources)}) "
        f"| SIGTERM exit codes {codes}"
    )
    assert good <= committed.ids.keys(), "exactly_once lost inputs"
    assert eos_dups == 0, f"exactly_once: {eos_dups} duplicates under read_committed"
    assert set(committed.ids) <= good
    assert set(letters.sources) == set(feed.poison), "exactly_once: poison not dead-lettered"
    repeated = {where: n for where, n in letters.sources.items() if n > 1}
    assert not repeated, f"exactly_once: poison dead-lettered more than once: {repeated}"
    assert codes == [0, 0, 0, 0], f"SIGTERM exit codes {codes}"
    assert not _unexpected_exits(eos) and not _unexpected_exits(alo)


def _read_all(bootstrap: str, pipeline: Pipeline, feed: MixedProducer) -> CommittedSignals:
    committed = CommittedSignals(bootstrap, pipeline.out_topic)
    committed.wait_for(feed.good_ids, timeout=180)
    committed.poll(2.0)
    return committed


@pytest.mark.timeout(600)
def test_broker_restart_mid_stream_loses_and_repeats_nothing(tmp_path: Path) -> None:
    with own_broker() as broker:
        bootstrap = broker.bootstrap
        in_topic = create_topic(bootstrap, unique_topic("eos-in"), partitions=3)
        eos = Pipeline("eos", "exactly_once", bootstrap, in_topic, tmp_path)
        feed = MixedProducer(bootstrap, in_topic, 2_400, 120, random.Random(7), poison_share=0.05)
        try:
            eos.start()
            feed.start()
            time.sleep(6)
            down = time.monotonic()
            broker.kill()
            time.sleep(3)
            broker.revive()
            downtime = time.monotonic() - down
            feed.finish(timeout=300)
            committed = _read_all(bootstrap, eos, feed)
            letters = CommittedDeadLetters(bootstrap, eos.dlq)
            letters.wait_for(set(feed.poison), timeout=60)
            codes = eos.stop()
        finally:
            eos.close()
            feed.join(5)
    good = feed.good_ids
    print(
        f"\nEOS BROKER RESTART: down {downtime:.1f}s sent={feed.sent} good={len(good)} "
        f"lost={len(good - committed.ids.keys())} duplicates={committed.duplicates()} "
        f"aborts={eos.events(ABORTED)} letters={letters.records}/{len(feed.poison)} "
        f"exit codes {codes} unexpected exits {_unexpected_exits(eos)}"
    )
    assert good <= committed.ids.keys() and committed.duplicates() == 0
    assert letters.records == len(feed.poison) == len(letters.sources)
    assert codes == [0, 0] and not _unexpected_exits(eos)


@pytest.mark.timeout(600)
def test_zombie_is_fenced_and_its_late_writes_stay_invisible(tmp_path: Path) -> None:
    with own_broker() as broker:
        bootstrap = broker.bootstrap
        in_topic = create_topic(bootstrap, unique_topic("eos-in"), partitions=3)
        eos = Pipeline("eos", "exactly_once", bootstrap, in_topic, tmp_path)
        feed = MixedProducer(bootstrap, in_topic, 3_000, 100, random.Random(11), poison_share=0.0)
        zombie, survivor = eos.slots
        try:
            eos.start()
            feed.start()
            time.sleep(5)
            assigned_before = len(survivor.events("partitions assigned"))
            zombie.current.proc.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
            # session.timeout.ms = 6 s: the group moves the zombie's partitions to the survivor
            wait_until(
                lambda: len(survivor.events("partitions assigned")) > assigned_before,
                90,
                "the survivor to take the zombie's partitions",
            )
            time.sleep(2)
            zombie.current.proc.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
            resumed_at = time.time()

            def zombie_reacted() -> bool:
                return any(
                    e["event"].startswith(FENCED_PREFIX)
                    or e["event"] in (ABORTED, "partitions lost")
                    for e in zombie.events()
                )

            wait_until(zombie_reacted, 90, "the zombie to be fenced or to abort")
            feed.finish(timeout=300)
            committed = _read_all(bootstrap, eos, feed)
            fenced = [e for e in zombie.events() if e["event"].startswith(FENCED_PREFIX)]
            if fenced:  # it stops by itself, non-zero
                zombie.current.proc.wait(120)  # type: ignore[union-attr]
            zombie_code = zombie.current.exit_code  # type: ignore[union-attr]
            codes = eos.stop()
        finally:
            zombie.close()
            eos.close()
            feed.join(5)
    good = feed.good_ids
    reactions = sorted(
        {
            e["event"][:40]
            for e in zombie.events()
            if e["event"].startswith(FENCED_PREFIX) or e["event"] in (ABORTED, "partitions lost")
        }
    )
    print(
        f"\nEOS ZOMBIE: resumed at {resumed_at:.0f}; zombie reactions {reactions}; zombie exit "
        f"{zombie_code}; lost={len(good - committed.ids.keys())} "
        f"duplicates={committed.duplicates()} exit codes {codes}"
    )
    assert good <= committed.ids.keys(), "inputs lost"
    assert committed.duplicates() == 0, "the zombie's late writes are visible"
    if fenced:
        assert zombie_code not in (0, None), "a fenced worker must stop non-zero"
