"""Keyed reactors in config files: accumulator ``key``, reactor ``keyed`` and its bounds."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from headrace.engine.config.loader import load_config
from tests.unit.engine.config.test_config import (  # noqa: F401 (an autouse fixture)
    _restore_import_state,
    assert_issue,
    errors,
    write,
)

KEY_FUNCTIONS = """
def symbol_of(value):
    return value["symbol"]


def evaluate(book, ref, key):
    return {"key": key, "spread": book["ask"] - book["bid"], "ref": ref["price"]}


NOT_CALLABLE = 1
"""


@pytest.fixture
def mod() -> str:
    """A unique module name; each test writes the module next to its file."""
    return f"hr_keyed_{uuid.uuid4().hex[:8]}"


def keyed_file(mod: str, book_key: str = 'key = "symbol"', extra: str = "") -> str:
    return f"""
    modules = [{{ name = "{mod}", path = "." }}]

    [accumulators.book]
    kind = "passthrough"
    {book_key}
    [accumulators.ref]
    kind = "passthrough"
    key = "{mod}:symbol_of"

    [reactors.rx]
    accumulators = ["book", "ref"]
    mode = "when_all"
    keyed = true
    max_concurrency = 4
    max_keys = 500
    key_ttl = "5m"
    {extra}

    [graphs.signal]
    module = "{mod}"
    reactor = "rx"
    [graphs.signal.topology.evaluate]
    inputs = ["book", "ref"]
    """


def test_a_keyed_reactor_and_keyed_accumulators_load(tmp_path: Path, mod: str) -> None:
    (tmp_path / f"{mod}.py").write_text(KEY_FUNCTIONS)
    config = load_config([write(tmp_path, "k.toml", keyed_file(mod))], environ={})
    spec = config.reactors["rx"]
    assert (spec.keyed, spec.max_concurrency, spec.max_keys, spec.key_ttl) == (True, 4, 500, 300.0)
    assert config.accumulators["book"].key == "symbol"
    assert config.accumulators["ref"].key({"symbol": "BTC"}) == "BTC"
    graph = config.graphs["signal"]
    outputs = graph.execute({"book": {"bid": 1.0, "ask": 1.5}, "ref": {"price": 2.0}}, key="BTC")
    assert outputs == {"evaluate": {"key": "BTC", "spread": 0.5, "ref": 2.0}}


def test_message_key_loads(tmp_path: Path, mod: str) -> None:
    (tmp_path / f"{mod}.py").write_text(KEY_FUNCTIONS)
    file = write(tmp_path, "k.toml", keyed_file(mod, 'key = "@message"'))
    assert load_config([file], environ={}).accumulators["book"].key == "@message"


def test_an_accumulator_without_a_key_names_the_reactor_field(tmp_path: Path, mod: str) -> None:
    (tmp_path / f"{mod}.py").write_text(KEY_FUNCTIONS)
    file = write(tmp_path, "k.toml", keyed_file(mod, book_key=""))
    issue = assert_issue(
        errors(file), file, "reactors.rx.accumulators[0]", "'book' has no key", "keyed"
    )
    assert "[accumulators.book] key" in issue.reason


def test_bad_keys_are_reported_at_the_key_field(tmp_path: Path, mod: str) -> None:
    (tmp_path / f"{mod}.py").write_text(KEY_FUNCTIONS)
    for setting, words in (
        ('key = "not a field"', ("must be a field name",)),
        (f'key = "{mod}:missing"', ("missing",)),
        (f'key = "{mod}:NOT_CALLABLE"', ("not callable",)),
    ):
        file = write(tmp_path, "k.toml", keyed_file(mod, setting))
        assert_issue(errors(file), file, "accumulators.book.key", *words)
    polling = write(
        tmp_path,
        "p.toml",
        f"""
        [accumulators.tick]
        kind = "polling"
        function = "{mod}:symbol_of"
        key = "@message"
        """,
    )
    assert_issue(errors(polling), polling, "accumulators.tick.key", "polling accumulator")


def test_keyed_settings_on_an_unkeyed_reactor(tmp_path: Path, mod: str) -> None:
    (tmp_path / f"{mod}.py").write_text(KEY_FUNCTIONS)
    text = keyed_file(mod).replace("keyed = true", "keyed = false")
    file = write(tmp_path, "k.toml", text)
    issues = errors(file)
    for field in ("max_concurrency", "max_keys", "key_ttl"):
        assert_issue(issues, file, f"reactors.rx.{field}", "only applies to keyed reactors")


def test_key_is_reserved_as_an_accumulator_of_a_keyed_reactor(tmp_path: Path, mod: str) -> None:
    (tmp_path / f"{mod}.py").write_text(KEY_FUNCTIONS)
    text = (
        keyed_file(mod).replace('accumulators = ["book", "ref"]', 'accumulators = ["book", "key"]')
        + '\n[accumulators.key]\nkind = "passthrough"\n'
    )
    file = write(tmp_path, "k.toml", text)
    assert_issue(errors(file), file, "reactors.rx.accumulators[1]", "'key' is reserved")


def test_bad_max_concurrency_is_a_schema_error(tmp_path: Path, mod: str) -> None:
    (tmp_path / f"{mod}.py").write_text(KEY_FUNCTIONS)
    file = write(
        tmp_path, "k.toml", keyed_file(mod).replace("max_concurrency = 4", "max_concurrency = 0")
    )
    assert_issue(errors(file), file, "reactors.rx.max_concurrency", "greater than or equal to 1")


def table_file(mod: str, table: str) -> str:
    return f"""
    modules = [{{ name = "{mod}", path = "." }}]
    [worker]
    bootstrap_servers = "127.0.0.1:9"

    [accumulators.book]
    kind = "stream"
    topic = "books"
    key = "symbol"
    [accumulators.instrument]
    {table}

    [reactors.rx]
    accumulators = ["book", "instrument"]
    keyed = true

    [graphs.signal]
    module = "{mod}"
    reactor = "rx"
    [graphs.signal.topology.evaluate]
    inputs = ["book", "instrument"]
    """


def test_a_global_table_accumulator_loads(tmp_path: Path, mod: str) -> None:
    (tmp_path / f"{mod}.py").write_text("def evaluate(book, instrument):\n    return 1\n")
    table = 'kind = "stream"\n    topic = "instruments"\n    key = "symbol"\n    scope = "global"'
    config = load_config([write(tmp_path, "t.toml", table_file(mod, table))], environ={})
    assert config.accumulators["instrument"].scope == "global"
    assert config.accumulators["book"].scope == "group"


@pytest.mark.parametrize(
    ("table", "words"),
    [
        ('kind = "stream"\n    topic = "instruments"\n    scope = "global"', ["give it key="]),
        (
            'kind = "batch"\n    topic = "instruments"\n    key = "symbol"\n    scope = "global"',
            ["scope"],
        ),
        (
            'kind = "stream"\n    topic = "instruments"\n    key = "symbol"\n    scope = "world"',
            ["global"],
        ),
    ],
)
def test_a_bad_scope_is_refused_naming_the_field(
    tmp_path: Path, mod: str, table: str, words: list[str]
) -> None:
    (tmp_path / f"{mod}.py").write_text("def evaluate(book, instrument):\n    return 1\n")
    path = write(tmp_path, "t.toml", table_file(mod, table))
    issues = errors(path)
    assert any(
        "accumulators.instrument" in issue.field and all(w in str(issue) for w in words)
        for issue in issues
    ), "\n".join(map(str, issues))
