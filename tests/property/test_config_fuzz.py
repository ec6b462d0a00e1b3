"""Fuzzed config files never crash the loader: only ``ConfigError`` of FILE: FIELD: REASON.

Hypothesis writes TOML files that look valid and files that are broken: wrong types,
unknown keys and sections, bad durations, missing sections and fields, references to
unset variables, weird unicode in keys and values, truncated or garbled text and bytes
that are not UTF-8. ``load_config`` must either load the file or raise ``ConfigError``
whose every issue names this file, a field path and a reason; any other exception is a
crash. Registries, ``sys.path`` and ``sys.modules`` are restored after every example.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from headrace.engine.config.loader import LoadedConfig, load_config
from headrace.engine.config.schema import ConfigError
from headrace.registry import default_registry

NODES = """
from pydantic import BaseModel


class Book(BaseModel):
    bid: float
    ask: float


def echo(books):
    return books


def poll():
    return {"n": 1}
"""
MODULE = f"hr_fuzz_nodes_{uuid.uuid4().hex[:8]}"
"""The one importable module the fuzzed files may name (besides names that do not exist)."""

# -- values --------------------------------------------------------------------------------

weird_text = st.text(
    st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12
) | st.sampled_from(
    ["", " ", "\u202e", "\u200b", "é", "名前", "🦀", "\x00", "\\", '"', "a.b", "${"]
)
durations = (
    st.sampled_from(
        ["1s", "200ms", "1.5m", "2h", "0s", "-1s", "fast", "1x", "", "1e400s", "nan", "ms", "10 s"]
    )
    | st.integers(-5, 10**6)
    | st.floats(allow_nan=True, allow_infinity=True)
)
env_refs = st.sampled_from(
    ["${SET}", "${UNSET}", "${UNSET:-fallback}", "${SET:-x}", "$$", "${", "${1BAD}", "${}"]
)
scalars = st.one_of(
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    weird_text,
    durations,
    env_refs,
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(weird_text, inner, max_size=3),
    max_leaves=6,
)


def anything_or(*good: Any) -> st.SearchStrategy[Any]:
    """Mostly a well-typed value, sometimes anything at all."""
    return st.one_of(*[st.just(g) for g in good], values)


# -- sections --------------------------------------------------------------------------------

NAMES = ["books", "ticks", "rx", "g", "out", "名前", "a b", ""]
name = st.sampled_from(NAMES) | weird_text
topic = anything_or("in-topic", "out.topic", "${SET}")

worker = st.fixed_dictionaries(
    {},
    optional={
        "bootstrap_servers": anything_or("127.0.0.1:9092", "${SET}", "${UNSET}"),
        "group_id": anything_or("g", ""),
        "commit_interval": durations,
        "drain_timeout": durations,
        "batch_size": anything_or(1, 500, 0, -1),
        "channel_size": anything_or(None, 1, 0),
        "kafka": st.dictionaries(weird_text, values, max_size=3),
        "consumer": st.dictionaries(
            st.sampled_from(["session.timeout.ms", "sasl.password", "x"]), values, max_size=2
        ),
        "producer": st.dictionaries(st.sampled_from(["message.timeout.ms", "token"]), values),
        "http": st.fixed_dictionaries(
            {},
            optional={
                "enabled": anything_or(True, False),
                "host": anything_or("127.0.0.1", "0.0.0.0", "::1", ""),
                "port": anything_or(0, 8080, 70000, -1),
                "token": anything_or("${SET}", "literal-secret", ""),
                "nope": values,
            },
        ),
        "state_store": st.fixed_dictionaries(
            {},
            optional={
                "enabled": anything_or(True, False),
                "url": anything_or(
                    "sqlite:///x.db", "postgresql://u:pw@h/db", "mysql://h/db", "::", ""
                ),
                "prune_interval": durations,
                "retention_results": anything_or(1, 0),
            },
        ),
        "dead_letters": st.dictionaries(
            st.sampled_from(["kafka", "topic_suffix", "execution_topic", "state_store", "zzz"]),
            values,
            max_size=3,
        ),
        "log": st.dictionaries(st.sampled_from(["format", "level", "colour"]), values),
        "unknown_worker_key": values,
    },
)
accumulator = st.fixed_dictionaries(
    {},
    optional={
        "kind": anything_or("stream", "batch", "polling", "passthrough", "nope"),
        "topic": topic,
        "group": anything_or("g2"),
        "model": anything_or(f"{MODULE}:Book", "no.such:Thing", "bad ref", f"{MODULE}:echo"),
        "function": anything_or(f"{MODULE}:echo", f"{MODULE}:poll", "x:y", "nocolon"),
        "interval": durations,
        "flush_interval": durations,
        "max_buffer_size": anything_or(1, 1000, 0),
        "channel_size": anything_or(4, 0),
        "surprise": values,
    },
)
reactor = st.fixed_dictionaries(
    {},
    optional={
        "accumulators": anything_or(["books"], "books", [], ["books", "ticks"], ["missing"]),
        "mode": anything_or("when_any", "when_all", "sometimes"),
        "strategy": anything_or("latest", "sequential", 3),
    },
)
node = st.fixed_dictionaries(
    {},
    optional={
        "inputs": anything_or(["books"], "books", ["nothing"]),
        "next": anything_or([], "echo", ["ghost"]),
        "routes": anything_or({"A": "echo"}, {}),
        "function": anything_or("echo", "poll", "not-an-identifier", "missing_fn"),
        "thread": anything_or(True, "yes"),
    },
)
graph = st.fixed_dictionaries(
    {},
    optional={
        "module": anything_or(MODULE, "no_such_module_hr", "bad name"),
        "reactor": anything_or("rx", "missing"),
        "topology": st.dictionaries(
            st.sampled_from(["echo", "poll", "ghost", "名前"]), node, max_size=2
        )
        | values,
        "retry": st.dictionaries(
            st.sampled_from(["attempts", "backoff", "max_backoff", "jitter"]),
            st.one_of(durations, values),
        ),
        "on_error": anything_or("dead_letter", "stop", "retry"),
        "sinks": anything_or(["out"], "out", [], ["ghost"]),
    },
)
sink = st.fixed_dictionaries(
    {},
    optional={
        "type": anything_or("kafka", "log", "callback", "state_store", "s3"),
        "topic": topic,
        "key": anything_or("echo.id", ""),
        "function": anything_or(f"{MODULE}:echo", "x"),
        "producer": st.dictionaries(st.sampled_from(["acks", "sasl.password"]), values),
    },
)
module_entry = st.one_of(
    st.sampled_from([MODULE, "no_such_module_hr", "bad name", "", "名前"]),
    st.fixed_dictionaries(
        {"name": st.sampled_from([MODULE, "no_such_module_hr", ""])},
        optional={"path": anything_or(".", "./nowhere", ""), "extra": values},
    ),
    values,
)
config = st.fixed_dictionaries(
    {},
    optional={
        "modules": st.lists(module_entry, max_size=2) | values,
        "worker": worker | values,
        "accumulators": st.dictionaries(name, accumulator | values, max_size=2) | values,
        "reactors": st.dictionaries(name, reactor | values, max_size=2) | values,
        "graphs": st.dictionaries(name, graph | values, max_size=2) | values,
        "sinks": st.dictionaries(name, sink | values, max_size=2) | values,
        "not_a_section": values,
    },
)

# -- writing TOML ---------------------------------------------------------------------------


def toml_key(key: str) -> str:
    return json.dumps(key, ensure_ascii=False)


def toml_value(value: Any) -> str:
    """Inline TOML for ``value`` (JSON string escapes are TOML's; nan/inf are spelled out)."""
    if value is None:
        return '""'  # TOML has no null; the field gets an empty string
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)  # beyond 64 bits: invalid TOML, reported as such
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value))


def to_toml(data: dict[str, Any]) -> str:
    """Top-level scalars first, then one ``[table]`` per top-level dict (inline below it)."""
    lines = [f"{toml_key(k)} = {toml_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for key, table in data.items():
        if isinstance(table, dict):
            lines.append(f"[{toml_key(key)}]")
            lines += [f"{toml_key(k)} = {toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def valid_config() -> dict[str, Any]:
    """A config that loads: a passthrough accumulator, a reactor, a one-node graph, a sink."""
    return {
        "modules": [{"name": MODULE, "path": "."}],
        "worker": {"group_id": "fuzz", "commit_interval": "200ms", "http": {"port": 0}},
        "accumulators": {"books": {"kind": "passthrough"}},
        "reactors": {"rx": {"accumulators": ["books"]}},
        "graphs": {
            "g": {
                "module": MODULE,
                "reactor": "rx",
                "sinks": ["out"],
                "topology": {"echo": {"inputs": ["books"]}},
            }
        },
        "sinks": {"out": {"type": "log"}},
    }


@st.composite
def near_valid(draw: st.DrawFn) -> dict[str, Any]:
    """The valid config with up to three changes: a value replaced, a key dropped or added."""
    data = valid_config()
    for _ in range(draw(st.integers(0, 3))):
        path: list[Any] = [data]
        while isinstance(path[-1], dict) and path[-1] and draw(st.booleans()):
            path.append(path[-1][draw(st.sampled_from(sorted(path[-1])))])
        table = path[-1] if isinstance(path[-1], dict) else path[-2]
        change = draw(st.sampled_from(["replace", "drop", "add"]))
        if change == "add" or not table:
            table[draw(weird_text | st.sampled_from(["kind", "topic", "port", "inputs"]))] = draw(
                values
            )
        elif change == "drop":
            del table[draw(st.sampled_from(sorted(table)))]
        else:
            table[draw(st.sampled_from(sorted(table)))] = draw(values)
    return data


@st.composite
def config_files(draw: st.DrawFn) -> bytes:
    """A config file's bytes: well-formed TOML, or TOML garbled in one of a few ways."""
    text = to_toml(draw(near_valid() | config))
    damage = draw(st.sampled_from(["none"] * 6 + ["truncate", "insert", "bytes", "dup"]))
    if damage == "truncate" and text:
        text = text[: draw(st.integers(0, len(text) - 1))]
    elif damage == "insert":
        at = draw(st.integers(0, len(text)))
        junk = draw(st.sampled_from(["[", "]", "=", '"', "\n[worker]\n", "\x00", "é", "{"]))
        text = text[:at] + junk + text[at:]
    elif damage == "dup":
        text += text
    raw = text.encode("utf-8")
    if damage == "bytes":
        at = draw(st.integers(0, len(raw)))
        raw = raw[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80"])) + raw[at:]
    return raw


# -- isolation ------------------------------------------------------------------------------


@contextlib.contextmanager
def isolated() -> Iterator[None]:
    """Registries, sys.path and the fuzz's node module as they were before one example
    (only that module is dropped: re-importing libraries the loader imports lazily, such as
    SQLAlchemy, every example would be slow and leak memory)."""
    snapshot = default_registry.snapshot()
    path = list(sys.path)
    try:
        yield
    finally:
        default_registry.restore(snapshot)
        sys.path[:] = path
        sys.modules.pop(MODULE, None)


DIRECTORY = Path(tempfile.mkdtemp(prefix="headrace-config-fuzz."))
(DIRECTORY / f"{MODULE}.py").write_text(NODES)
ENVIRON = {"SET": "value-from-env", "EMPTY": ""}

VALID = f"""
modules = [{{ name = "{MODULE}", path = "." }}]
[accumulators.books]
kind = "passthrough"
[reactors.rx]
accumulators = ["books"]
[graphs.g]
module = "{MODULE}"
reactor = "rx"
sinks = ["out"]
topology = {{ echo = {{ inputs = ["books"] }} }}
[sinks.out]
type = "log"
""".encode()


@settings(
    max_examples=int(os.environ.get("HEADRACE_FUZZ_EXAMPLES", "100")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(config_files())
@example(VALID)
@example(b"")
@example(b"\xff\xfe")
@example(b"[worker]\ncommit_interval = '-1s'\ndrain_timeout = 1e400\n")
@example(b'[accumulators]\nbooks = 3\n[graphs."\\u202e"]\nreactor = 7\n')
@example(b"worker = 1\nsinks = []\nmodules = 2\n")
def test_fuzzed_config_files_only_raise_config_errors(raw: bytes) -> None:
    path = DIRECTORY / f"fuzz-{uuid.uuid4().hex[:8]}.toml"
    path.write_bytes(raw)
    try:
        with isolated():
            try:
                loaded = load_config([path], environ=ENVIRON)
            except ConfigError as error:
                caught = error
            else:
                assert isinstance(loaded, LoadedConfig)
                event("loaded")
                return
    finally:
        path.unlink()
    issues = caught.issues
    event("ConfigError at " + ("<toml>" if issues[0].field == "<toml>" else "a field"))
    assert issues, "a ConfigError with no issues"
    for issue in issues:
        assert issue.file == str(path), issue
        assert isinstance(issue.field, str) and issue.field.strip(), issue
        assert isinstance(issue.reason, str) and issue.reason.strip(), issue
        assert str(issue) == f"{path}: {issue.field}: {issue.reason}"
    assert str(caught) == "\n".join(map(str, issues))


def test_the_valid_example_loads() -> None:
    """The fuzz's anchor: its well-formed file really loads (so the property is not vacuous)."""
    path = DIRECTORY / "valid.toml"
    path.write_bytes(VALID)
    with isolated():
        loaded = load_config([path], environ=ENVIRON)
    assert set(loaded.graphs) == {"g"}
