"""Black-box chaos soak: ``headrace run`` workers in one group survive a seeded storm.

Through the CLI only: 2-3 real ``headrace run`` subprocesses (JSON logs, the default off a
terminal) in one consumer group on a broker of the test's own; a producer runs throughout,
mixing good books with poison (not JSON, null value, wrong schema); a chaos loop seeded
with ``random.Random(seed)`` SIGKILLs and SIGTERMs workers, starts new ones and restarts
the broker once. Afterwards: every good message has an output (0 lost), every poison
message is dead-lettered, every SIGTERM exited 0, and the group commits to the end within
a stated bound after the producer stops. Duplicates, kills, rebalances and exit codes are
printed on one ``SOAK ...`` line.

The short size runs in ``make test``; ``make soak`` runs the long one (HEADRACE_SOAK=long:
>= 20 SIGKILLs, >= 30,000 messages). HEADRACE_SOAK_SEED replays a run.
"""

from __future__ import annotations

import os
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures.kafka_broker import create_topic, unique_topic
from tests.integration.chaos import (
    Chaos,
    ChaosPlan,
    CliWorker,
    DeadLetterReader,
    MixedProducer,
    SignalReader,
    log_figures,
    own_broker,
    wait_committed_to_end,
    write_soak_app,
)
from tests.integration.kafka_harness import assert_committed_to_end, end_offsets


@dataclass(frozen=True)
class SoakSize:
    messages: int
    rate: float  # messages per second, so the producer runs messages / rate seconds
    min_kills: int
    broker_restart_after: float  # seconds into the chaos
    commit_bound: float  # seconds after the producer stops until committed to the end
    timeout: float  # the whole test


SIZES = {
    "short": SoakSize(
        messages=3_000, rate=75, min_kills=3, broker_restart_after=14, commit_bound=120, timeout=480
    ),
    "long": SoakSize(
        messages=36_000,
        rate=100,
        min_kills=20,
        broker_restart_after=150,
        commit_bound=120,
        timeout=2_400,
    ),
}
SIZE = os.environ.get("HEADRACE_SOAK", "short").strip().lower() or "short"
if SIZE not in SIZES:
    raise pytest.UsageError(f"HEADRACE_SOAK must be one of {', '.join(SIZES)}, got {SIZE!r}")

pytestmark = [
    pytest.mark.kafka,
    pytest.mark.slow,
    pytest.mark.timeout(SIZES[SIZE].timeout),
]


@pytest.mark.parametrize("size", [SIZE])
def test_chaos_soak(size: str, tmp_path: Path) -> None:
    soak = SIZES[size]
    seed = int(os.environ.get("HEADRACE_SOAK_SEED") or random.SystemRandom().randrange(1 << 31))
    print(f"\nSOAK {size}: seed={seed} (HEADRACE_SOAK_SEED={seed} replays the chaos plan)")
    started = time.monotonic()
    with own_broker() as broker:
        bootstrap = broker.bootstrap
        in_topic = create_topic(bootstrap, unique_topic("soak-in"), partitions=3)
        out_topic = create_topic(bootstrap, unique_topic("soak-out"), partitions=3)
        dlq_topic = create_topic(bootstrap, f"{in_topic}.dlq", partitions=1)
        execution_dlq = create_topic(bootstrap, unique_topic("soak-exec-dlq"), partitions=1)
        group = f"soak-{uuid.uuid4().hex[:8]}"
        config = write_soak_app(tmp_path)
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "SOAK_GROUP": group,
            "SOAK_IN_TOPIC": in_topic,
            "SOAK_OUT_TOPIC": out_topic,
            "SOAK_EXECUTION_DLQ": execution_dlq,
        }
        plan = ChaosPlan(seed=seed, min_kills=soak.min_kills)
        chaos = Chaos(plan, broker, lambda name: CliWorker(name, config, env, tmp_path))
        feed = MixedProducer(bootstrap, in_topic, soak.messages, soak.rate, random.Random(seed))
        letters = DeadLetterReader(bootstrap, dlq_topic)
        signals = SignalReader(bootstrap, out_topic)
        failures: list[str] = []
        commit_seconds: float | None = None
        chaos_tail = 0.0
        final_codes: list[int | None] = []
        try:
            chaos.start_workers(2)
            feed.start()
            chaos.run(keep_going=feed.is_alive, broker_restart_after=soak.broker_restart_after)
            stopped_at = feed.finish(timeout=300)
            chaos.settle(workers=2)
            try:
                wait_committed_to_end(bootstrap, group, in_topic, soak.commit_bound)
                commit_seconds = time.monotonic() - stopped_at
                chaos_tail = max(0.0, (chaos.ended_at or stopped_at) - stopped_at)
            except AssertionError as error:
                failures.append(str(error))
            try:
                signals.wait_for(feed.good_ids, timeout=90)
            except AssertionError as error:
                failures.append(str(error))
            try:
                letters.wait_for(set(feed.poison), timeout=60)
            except AssertionError as error:
                failures.append(str(error))
            final_codes = chaos.stop_all()
            signals.poll(1.0)
            letters.poll(0.5)
            try:
                assert_committed_to_end(bootstrap, group, in_topic)
            except AssertionError as error:
                failures.append(f"after the final SIGTERMs, not committed to the end: {error}")
            execution_letters = sum(end_offsets(bootstrap, execution_dlq).values())
        finally:
            chaos.close()
            feed.join(5)
            signals.close()
            letters.close()

    figures = log_figures(chaos.slots)
    good = feed.good_ids
    lost = len(good - signals.ids.keys())
    strangers = set(signals.ids) - good
    wrongly_dead = set(feed.good) & set(letters.sources)
    undead = set(feed.poison) - set(letters.sources)
    codes = [code for _, code in chaos.log.sigterms]
    commit_text = (
        f"{commit_seconds:.1f}s (chaos went on {chaos_tail:.1f}s of it)"
        if commit_seconds is not None
        else "NOT REACHED"
    )
    print(
        f"SOAK {size} seed={seed}: sent={feed.sent} good={len(good)} poison={len(feed.poison)} "
        f"lost={lost} duplicates={signals.duplicates()} outputs={signals.records} "
        f"dead-lettered={len(set(feed.poison) & set(letters.sources))}/{len(feed.poison)} "
        f"(letters {letters.records}, execution letters {execution_letters}) "
        f"kills={chaos.log.kills} sigterms={len(codes)} exit-codes={dict(Counter(codes))} "
        f"joins={chaos.log.joins} incarnations={figures.incarnations} "
        f"rebalances: assigned={figures.assigned} revoked={figures.revoked} "
        f"lost={figures.lost} broker-down={chaos.log.broker_downtime:.1f}s "
        f"commit-to-end={commit_text} after the producer stopped (bound "
        f"{soak.commit_bound:.0f}s) unexpected-exits={chaos.log.unexpected_exits} "
        f"error-lines={dict(figures.errors)} wall={time.monotonic() - started:.0f}s"
    )
    print("chaos actions:\n  " + "\n  ".join(chaos.log.actions))

    if lost:
        failures.append(f"{lost} good messages have no output")
    if strangers:
        failures.append(f"outputs for ids never sent as good: {sorted(strangers)[:10]}")
    if undead:
        failures.append(f"{len(undead)} poison messages not dead-lettered: {sorted(undead)[:10]}")
    if wrongly_dead:
        failures.append(f"{len(wrongly_dead)} good messages dead-lettered: {sorted(wrongly_dead)}")
    if execution_letters:
        failures.append(f"{execution_letters} execution dead letters (outputs given up on)")
    if any(code != 0 for code in codes) or any(code != 0 for code in final_codes):
        failures.append(f"SIGTERM exit codes {chaos.log.sigterms}")
    if chaos.log.unexpected_exits:
        failures.append(f"workers exited without a signal: {chaos.log.unexpected_exits}")
    if figures.non_json_stdout:
        failures.append(f"stdout lines that are not JSON: {figures.non_json_stdout[:5]}")
    if chaos.log.kills < soak.min_kills:
        failures.append(f"only {chaos.log.kills} SIGKILLs, the plan asks >= {soak.min_kills}")
    if size == "long" and feed.sent < 30_000:
        failures.append(f"only {feed.sent} messages sent, the long soak asks >= 30,000")
    assert not failures, "\n".join(failures)
