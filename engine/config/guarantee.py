"""Checks of ``[worker] guarantee = "exactly_once"``: which parts cannot join a transaction.

Kafka sinks, Kafka dead letters and keyed reactors' changelogs are written inside the
worker's Kafka transaction. Any other sink (state_store, log, callback) and the state
store's dead letters are written outside it: a crash can repeat them. Each is named in a
warning at load time; with ``[worker.transactions] strict = true`` each is an error instead.
"""

from __future__ import annotations

from collections.abc import Mapping

from headrace.engine.config.files import Issues, Merged
from headrace.engine.config.schema import field_path


def check_guarantee(
    merged: Merged,
    graph_sinks: Mapping[str, list[str]],
    issues: Issues,
) -> list[str]:
    """Warnings (returned) or errors (``strict``, added to ``issues``) for every part that
    stays outside the transactions under exactly_once; nothing under at_least_once."""
    worker = merged.worker
    if worker.guarantee != "exactly_once":
        return []
    file = merged.worker_file or (merged.files[0].file if merged.files else "<config>")
    strict = worker.transactions.strict
    outside: list[tuple[str, str, str]] = []
    users: dict[str, list[str]] = {}
    for graph, names in graph_sinks.items():
        for name in names:
            users.setdefault(name, []).append(graph)
    for name in sorted(users):
        entry = merged.entries["sinks"].get(name)
        if entry is None:
            continue
        sink_file, sink = entry
        graphs = ", ".join(sorted(users[name]))
        if sink.type != "kafka":
            outside.append(
                (
                    sink_file,
                    field_path("sinks", name, "type"),
                    f"sink {name!r} ({sink.type}, used by {graphs}) cannot join a Kafka "
                    "transaction: under exactly_once its writes may repeat after a crash",
                )
            )
        elif sink.producer:
            outside.append(
                (
                    sink_file,
                    field_path("sinks", name, "producer"),
                    f"sink {name!r}: its producer settings are ignored under exactly_once "
                    "(every Kafka sink writes through the worker's transactional producer, "
                    "configured by worker.producer)",
                )
            )
    if worker.state_store.enabled and worker.dead_letters.state_store:
        outside.append(
            (
                file,
                "worker.dead_letters.state_store",
                "dead letters kept in the state store cannot join a Kafka transaction: under "
                "exactly_once they may repeat after a crash (Kafka dead letters do not)",
            )
        )
    notices: list[str] = []
    for where, path, reason in outside:
        if strict:
            issues.add(where, path, reason + " (worker.transactions.strict = true)")
        else:
            notices.append(f"{where}: {path}: {reason}")
    return notices
