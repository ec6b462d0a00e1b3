"""Config files: every error names the file, the field path and the reason."""

from __future__ import annotations

import contextlib
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from headrace.connectors import StoreSink
from headrace.engine.config.loader import LoadedConfig, load_config
from headrace.engine.config.schema import ConfigError, ConfigIssue, interpolate
from headrace.engine.graph.registry import clear_graphs
from headrace.engine.store.state_store import (
    StateStore,
)  # imported once: the autouse fixture drops new modules
from headrace.engine.worker import Worker
from headrace.registry import default_registry
from tests.unit.support import imports_restored

EXAMPLES = Path(__file__).resolve().parents[4] / "examples"

NODES = """
from pydantic import BaseModel


class Book(BaseModel):
    bid: float
    ask: float


def identity(event):
    return event


def poll():
    return {"n": 1}


def evaluate(book, ref):
    mid = (book["bid"] + book["ask"]) / 2
    return ("Alert", mid) if ref is not None and abs(mid - ref) > 1 else ("Ok", mid)


def alert(mid):
    return {"alert": mid}


def record(mid):
    return {"ok": mid}


def double(book):
    return book["bid"] * 2


def keep(book):
    return book


def two_args(a, b, c):
    return a


NOT_CALLABLE = 42
"""


@pytest.fixture(autouse=True)
def _restore_import_state() -> Iterator[None]:
    """Modules and sys.path entries a config load adds do not outlive the test."""
    with imports_restored():
        yield


@pytest.fixture
def mod(tmp_path: Path) -> str:
    """A uniquely named module of node functions, importable through ``path = "."``."""
    name = f"hr_nodes_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(NODES)
    return name


def write(directory: Path, name: str, text: str) -> str:
    path = directory / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def errors(*files: str, env: dict[str, str] | None = None) -> list[ConfigIssue]:
    with pytest.raises(ConfigError) as caught:
        load_config(files, environ=env or {})
    return caught.value.issues


def find(issues: list[ConfigIssue], field: str) -> ConfigIssue:
    matches = [i for i in issues if i.field == field]
    assert matches, f"no issue at {field!r}; got:\n" + "\n".join(map(str, issues))
    return matches[0]


def assert_issue(issues: list[ConfigIssue], file: str, field: str, *words: str) -> ConfigIssue:
    issue = find(issues, field)
    assert issue.file == file
    text = str(issue)
    assert text.startswith(f"{file}: {field}: "), text
    for word in words:
        assert word in issue.reason, f"{word!r} not in {issue.reason!r}"
    return issue


def base(mod: str, sink: str = 'type = "log"') -> str:
    """A valid file: passthrough book/ref, a when_all reactor, a routed graph, a sink ``out``
    (the log sink unless ``sink`` gives its settings)."""
    return f"""
    modules = [{{ name = "{mod}", path = "." }}]

    [accumulators.book]
    kind = "passthrough"
    [accumulators.ref]
    kind = "passthrough"

    [reactors.rx]
    accumulators = ["book", "ref"]
    mode = "when_all"

    [graphs.signal]
    module = "{mod}"
    reactor = "rx"
    sinks = ["out"]
    [graphs.signal.topology.evaluate]
    inputs = ["book", "ref"]
    routes = {{ Alert = "alert", Ok = "record" }}
    [graphs.signal.topology.alert]
    [graphs.signal.topology.record]

    [sinks.out]
    {sink}
    """


# -- valid files -----------------------------------------------------------------------------


def test_valid_file_builds_a_runnable_graph(tmp_path: Path, mod: str) -> None:
    file = write(tmp_path, "a.toml", base(mod))
    config = load_config([file], environ={})
    assert isinstance(config, LoadedConfig)
    assert set(config.graphs) == {"signal"}
    assert config.reactors["rx"].mode.value == "when_all"
    assert config.graph_sinks == {"signal": ["out"]}
    graph = config.graphs["signal"]
    alert = graph.execute({"book": {"bid": 1.0, "ask": 3.0}, "ref": 10.0})
    assert alert == {"alert": {"alert": 2.0}}
    assert graph.execute({"book": {"bid": 1.0, "ask": 3.0}, "ref": 2.0}) == {"record": {"ok": 2.0}}
    assert not config.needs_kafka


def test_multi_file_merge_reactor_and_graph_in_different_files(tmp_path: Path, mod: str) -> None:
    reactors = write(
        tmp_path,
        "reactors.toml",
        f"""
        [[modules]]
        name = "{mod}"
        path = "."

        [worker]
        group_id = "team"
        [accumulators.book]
        kind = "passthrough"
        [reactors.rx]
        accumulators = ["book"]
        """,
    )
    graphs = write(
        tmp_path,
        "graphs.toml",
        f"""
        [graphs.doubler]
        module = "{mod}"
        reactor = "rx"
        retry = {{ attempts = 3, backoff = "50ms" }}
        on_error = "stop"
        topology = {{ double = {{ inputs = ["book"] }} }}
        """,
    )
    config = load_config([reactors, graphs], environ={})
    assert config.worker.group_id == "team"
    assert config.worker_file == reactors
    graph = config.graphs["doubler"]
    assert graph.reactor_name == "rx"
    assert (graph.retry.attempts, graph.retry.backoff) == (3, 0.05)
    assert graph.on_error.value == "stop"
    assert graph.execute({"book": {"bid": 2.0}}) == {"double": 4.0}
    assert config.origins["graphs.doubler"] == graphs
    assert config.origins["reactors.rx"] == reactors


def test_env_interpolation_values_defaults_and_escapes(tmp_path: Path, mod: str) -> None:
    file = write(
        tmp_path,
        "a.toml",
        base(mod)
        + """
        [worker]
        bootstrap_servers = "${BROKERS}"
        group_id = "${GROUP:-fallback-group}"
        commit_interval = "${COMMIT:-250ms}"
        http = { port = "${PORT}", token = "${TOKEN:-}" }
        [worker.log]
        level = "$${not_a_var}"
        """,
    )
    with pytest.raises(ConfigError) as caught:
        load_config([file], environ={"BROKERS": "k1:9092,k2:9092", "PORT": "9100"})
    # $$ is a literal $: the level is literally "${not_a_var}", which is not a level
    issue = assert_issue(caught.value.issues, file, "worker.log.level", "${not_a_var}")
    assert len(caught.value.issues) == 1, issue

    fixed = file.replace("a.toml", "b.toml")
    Path(fixed).write_text(Path(file).read_text().replace("$${not_a_var}", "${LEVEL:-WARNING}"))
    config = load_config([fixed], environ={"BROKERS": "k1:9092,k2:9092", "PORT": "9100"})
    worker = config.worker
    assert worker.bootstrap_servers == "k1:9092,k2:9092"
    assert worker.group_id == "fallback-group"
    assert worker.commit_interval == 0.25
    assert worker.http.port == 9100
    assert worker.log.level == "warning"
    assert worker.http.token is not None and worker.http.token.get_secret_value() == ""


def test_interpolate_reports_each_missing_variable_with_its_path() -> None:
    done = interpolate(
        {"a": {"b": ["x${ONE}y", "${TWO:-d}"], "c": "${THREE}"}, "k": "${bad-name}"},
        {"ONE": "1"},
    )
    assert done.data == {"a": {"b": ["x1y", "d"], "c": ""}, "k": "${bad-name}"}
    assert dict(done.problems)["a.c"].startswith("environment variable THREE is not set")
    assert "bad variable reference" in dict(done.problems)["k"]
    assert done.from_env == {"a.b[0]", "a.b[1]", "a.c"}


@contextlib.contextmanager
def fresh_process() -> Iterator[None]:
    """Registries and imported modules as they were before, like a new worker process."""
    saved = default_registry.snapshot()
    modules = set(sys.modules)
    try:
        yield
    finally:
        default_registry.restore(saved)
        for name in set(sys.modules) - modules:
            del sys.modules[name]


EXAMPLE_CONFIGS = {
    "price_signal.toml": {"price_signal"},
    "multi_source_alert.toml": {"multi_source_alert"},
    "batch_vwap.toml": {"batch_vwap"},
    "market_maker.toml": {"market_maker", "market_maker_strict"},
    "cross_module_publisher.toml cross_module_subscriber.toml": {"price_consumer"},
    "keyed_price_signal.toml": {"keyed_price_signal", "deviation_alert"},
}


@pytest.mark.parametrize("files", sorted(EXAMPLE_CONFIGS))
def test_examples_validate(files: str) -> None:
    with fresh_process():
        for name in list(sys.modules):
            if name == "examples" or name.startswith("examples."):
                del sys.modules[name]
        clear_graphs()
        config = load_config([str(EXAMPLES / f) for f in files.split()], environ={})
        assert set(config.graphs) == EXAMPLE_CONFIGS[files]


def test_every_example_config_is_covered() -> None:
    covered = {f for files in EXAMPLE_CONFIGS for f in files.split()}
    assert {p.name for p in EXAMPLES.glob("*.toml")} == covered


def test_loading_twice_in_one_process(tmp_path: Path, mod: str) -> None:
    file = write(tmp_path, "a.toml", base(mod))
    first = load_config([file], environ={})
    second = load_config([file], environ={})
    assert set(first.graphs) == set(second.graphs) == {"signal"}


def test_config_overrides_a_module_accumulator_and_graph(tmp_path: Path) -> None:
    file = write(
        tmp_path,
        "a.toml",
        """
        modules = ["examples.price_signal"]
        [worker]
        bootstrap_servers = "b:9092"
        group_id = "g1"
        [accumulators.orderbook]
        topic = "books.v2"
        channel_size = 8
        [graphs.price_signal]
        retry = { attempts = 4, backoff = "1s", max_backoff = "10s" }
        sinks = ["k"]
        [sinks.k]
        type = "kafka"
        topic = "signals"
        key = "emit.text"
        """,
    )
    config = load_config([file], environ={})
    spec = config.accumulators["orderbook"]
    assert (spec.kind.value, spec.topic, spec.channel_size, spec.group) == (
        "stream",
        "books.v2",
        8,
        "g1",
    )
    assert spec.model is not None and spec.model.__name__ == "OrderBook"
    assert config.kafka_groups() == {"g1": ["orderbook"]}
    assert config.graphs["price_signal"].retry.attempts == 4
    assert config.kafka_sinks() == ["k"]
    import examples.price_signal as module

    assert module.builder.graph is not None
    assert module.builder.graph.retry.attempts == 1, "the module's own graph is left as declared"


# -- syntax, unknown keys, types -------------------------------------------------------------


def test_toml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    file = write(tmp_path, "bad.toml", "[worker]\ngroup_id = \n")
    issue = assert_issue(errors(file), file, "<toml>", "invalid TOML", "line 2")
    assert issue.reason


def test_missing_file(tmp_path: Path) -> None:
    file = str(tmp_path / "absent.toml")
    assert_issue(errors(file), file, "<file>", "cannot read")


def test_unknown_keys_everywhere_are_reported_together(tmp_path: Path, mod: str) -> None:
    file = write(
        tmp_path,
        "a.toml",
        'color = "blue"\n'
        + base(mod)
        + """
        [worker]
        grup_id = "x"
        [worker.http]
        hots = "127.0.0.1"
        [accumulators.extra]
        kind = "passthrough"
        topik = "t"
        [graphs.other]
        module = "m"
        [graphs.other.topology.n]
        inputs = ["book"]
        nxt = "z"
        """,
    )
    issues = errors(file)
    assert_issue(issues, file, "color", "unknown section", "worker", "graphs")
    assert_issue(issues, file, "worker.grup_id", "unknown key", "group_id")
    assert_issue(issues, file, "worker.http.hots", "unknown key", "host")
    assert_issue(issues, file, "accumulators.extra.topik", "unknown key", "topic")
    assert_issue(issues, file, "graphs.other.topology.n.nxt", "unknown key", "next", "routes")


def test_wrong_types(tmp_path: Path, mod: str) -> None:
    file = write(
        tmp_path,
        "a.toml",
        base(mod)
        + """
        [worker]
        batch_size = "many"
        http = { port = 70000, enabled = "perhaps" }
        [reactors.rx2]
        accumulators = 5
        mode = "sometimes"
        [graphs.g2]
        module = "x"
        topology = { evaluate = { inputs = ["book"], routes = 5 } }
        """,
    )
    issues = errors(file)
    assert_issue(issues, file, "worker.batch_size", "valid integer", "'many'")
    assert_issue(issues, file, "worker.http.port", "less than or equal to 65535")
    assert_issue(issues, file, "worker.http.enabled", "valid boolean")
    assert_issue(issues, file, "reactors.rx2.accumulators", "valid list")
    assert_issue(issues, file, "reactors.rx2.mode", "'when_any' or 'when_all'", "sometimes")
    assert_issue(issues, file, "graphs.g2.topology.evaluate.routes", "expected a table", "int")


def test_bad_durations(tmp_path: Path, mod: str) -> None:
    file = write(
        tmp_path,
        "a.toml",
        f"""
        modules = [{{ name = "{mod}", path = "." }}]
        [worker]
        commit_interval = "5 sec"
        drain_timeout = -3
        [accumulators.p]
        kind = "polling"
        function = "{mod}:poll"
        interval = "fast"
        [accumulators.b]
        kind = "batch"
        flush_interval = "0s"
        [graphs.g]
        retry = {{ backoff = "1 minute" }}
        """,
    )
    issues = errors(file)
    assert_issue(issues, file, "worker.commit_interval", "invalid duration '5 sec'", "'250ms'")
    assert_issue(issues, file, "worker.drain_timeout", "must be positive")
    assert_issue(issues, file, "accumulators.p.interval", "invalid duration 'fast'")
    assert_issue(issues, file, "accumulators.b.flush_interval", "must be positive")
    assert_issue(issues, file, "graphs.g.retry.backoff", "invalid duration '1 minute'")


# -- environment -----------------------------------------------------------------------------


def test_missing_env_var_names_file_field_and_variable(tmp_path: Path, mod: str) -> None:
    file = write(
        tmp_path,
        "a.toml",
        base(mod)
        + """
        [worker]
        bootstrap_servers = "${KAFKA_BROKERS}"
        [worker.state_store]
        url = "postgresql+psycopg://app:${PG_PASSWORD}@db/app"
        """,
    )
    issues = errors(file, env={})
    assert_issue(issues, file, "worker.bootstrap_servers", "KAFKA_BROKERS is not set")
    assert_issue(issues, file, "worker.state_store.url", "PG_PASSWORD is not set")
    assert len(issues) == 2, "a missing variable is reported once, not again as a bad value"


def test_secrets_must_come_from_the_environment_and_are_never_shown(
    tmp_path: Path, mod: str
) -> None:
    literal = write(
        tmp_path,
        "a.toml",
        base(mod)
        + """
        [worker]
        http = { token = "hunter2" }
        kafka = { "sasl.password" = "pw", "client.id" = "w" }
        [worker.state_store]
        url = "postgresql+psycopg://app:plain@db/app"
        """,
    )
    issues = errors(literal)
    assert_issue(issues, literal, "worker.http.token", "from the environment")
    assert_issue(issues, literal, "worker.kafka['sasl.password']", "from the environment")
    assert_issue(issues, literal, "worker.state_store.url", "password", "environment")
    assert all("hunter2" not in str(i) and "plain@" not in str(i) for i in issues)

    from_env = write(
        tmp_path,
        "b.toml",
        base(mod)
        + """
        [worker]
        http = { host = "0.0.0.0", token = "${TOKEN}" }
        kafka = { "sasl.password" = "${PW}", "client.id" = "w" }
        """,
    )
    config = load_config([from_env], environ={"TOKEN": "hunter2", "PW": "s3cret"})
    worker = config.worker
    assert worker.http.token is not None and worker.http.token.get_secret_value() == "hunter2"
    assert worker.consumer_config() == {"sasl.password": "s3cret", "client.id": "w"}
    shown = repr(config.worker) + str(config.worker)
    assert "hunter2" not in shown and "s3cret" not in shown


def test_non_loopback_http_needs_a_token(tmp_path: Path, mod: str) -> None:
    file = write(
        tmp_path, "a.toml", base(mod) + '[worker]\nhttp = { host = "0.0.0.0", token = "${T:-}" }\n'
    )
    assert_issue(errors(file), file, "worker.http.token", "required", "0.0.0.0", "loopback")


# -- references between sections ---------------------------------------------------------------


def test_unknown_reactor(tmp_path: Path, mod: str) -> None:
    file = write(tmp_path, "a.toml", base(mod).replace('reactor = "rx"', 'reactor = "nope_rx"'))
    assert_issue(errors(file), file, "graphs.signal.reactor", "unknown reactor 'nope_rx'", "rx")


def test_graph_inputs_that_are_not_the_reactors_accumulators(tmp_path: Path, mod: str) -> None:
    text = base(mod).replace('accumulators = ["book", "ref"]', 'accumulators = ["book"]')
    file = write(tmp_path, "a.toml", text)
    assert_issue(
        errors(file),
        file,
        "graphs.signal.topology.evaluate.inputs",
        "'ref' is not an accumulator of reactor 'rx'",
        "watches book",
    )


def test_module_that_cannot_be_imported(tmp_path: Path, mod: str) -> None:
    broken = f"hr_broken_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{broken}.py").write_text("raise RuntimeError('no database here')\n")
    text = base(mod).replace(
        f'modules = [{{ name = "{mod}", path = "." }}]',
        f'modules = [{{ name = "{mod}", path = "." }}, "not_a_module_xyz", "{broken}"]',
    )
    text = text.replace(f'module = "{mod}"', 'module = "also.missing"')
    file = write(tmp_path, "a.toml", text)
    issues = errors(file)
    assert_issue(issues, file, "modules[1]", "cannot import module 'not_a_module_xyz'")
    assert_issue(issues, file, "modules[2]", f"cannot import module '{broken}'", "no database here")
    assert_issue(issues, file, "graphs.signal.module", "cannot import module 'also.missing'")


def test_module_path_must_exist(tmp_path: Path, mod: str) -> None:
    file = write(tmp_path, "a.toml", base(mod).replace('path = "."', 'path = "no/such/dir"'))
    assert_issue(errors(file), file, "modules[0].path", "no such directory")


def test_node_missing_from_module(tmp_path: Path, mod: str) -> None:
    text = base(mod).replace("[graphs.signal.topology.record]", "[graphs.signal.topology.recrod]")
    text = text.replace('Ok = "record"', 'Ok = "recrod"')
    file = write(tmp_path, "a.toml", text)
    assert_issue(
        errors(file), file, "graphs.signal.topology.recrod", f"module '{mod}' has no function"
    )


def test_node_function_option_and_not_callable(tmp_path: Path, mod: str) -> None:
    text = base(mod).replace(
        "[graphs.signal.topology.record]",
        '[graphs.signal.topology.record]\nfunction = "NOT_CALLABLE"',
    )
    file = write(tmp_path, "a.toml", text)
    assert_issue(
        errors(file), file, "graphs.signal.topology.record.function", "NOT_CALLABLE is not callable"
    )


def test_unknown_sink_names(tmp_path: Path, mod: str) -> None:
    file = write(tmp_path, "a.toml", base(mod).replace('sinks = ["out"]', 'sinks = ["out", "db"]'))
    assert_issue(errors(file), file, "graphs.signal.sinks[1]", "unknown sink 'db'", "out")


def test_topology_problems_name_the_node(tmp_path: Path, mod: str) -> None:
    text = base(mod).replace('Ok = "record"', 'Ok = "recorder"')
    text = text.replace(
        "[graphs.signal.topology.record]",
        '[graphs.signal.topology.record]\n[graphs.signal.topology.alert2]\nnext = "alert2"',
    )
    file = write(tmp_path, "a.toml", text)
    issues = errors(file)
    assert_issue(
        issues, file, "graphs.signal.topology.evaluate.routes.Ok", "unknown node 'recorder'"
    )


def test_cycles_and_signatures_are_checked(tmp_path: Path, mod: str) -> None:
    cyc = write(
        tmp_path,
        "cycle.toml",
        base(mod)
        .replace(
            "[graphs.signal.topology.alert]", '[graphs.signal.topology.alert]\nnext = "record"'
        )
        .replace(
            "[graphs.signal.topology.record]", '[graphs.signal.topology.record]\nnext = "alert"'
        ),
    )
    assert_issue(errors(cyc), cyc, "graphs.signal.topology", "cycle")
    sig = write(
        tmp_path,
        "sig.toml",
        base(mod).replace(
            "[graphs.signal.topology.alert]",
            '[graphs.signal.topology.alert]\nfunction = "two_args"',
        ),
    )
    assert_issue(errors(sig), sig, "graphs.signal.topology.alert", "signature", "one argument")


def test_graph_with_topology_needs_module_and_reactor(tmp_path: Path, mod: str) -> None:
    text = base(mod).replace(f'module = "{mod}"\n    reactor = "rx"\n', "")
    file = write(tmp_path, "a.toml", text)
    issues = errors(file)
    assert_issue(issues, file, "graphs.signal.module", "required")
    assert_issue(issues, file, "graphs.signal.reactor", "required")


def test_configured_graph_must_exist_and_keep_its_reactor(tmp_path: Path) -> None:
    file = write(
        tmp_path,
        "a.toml",
        """
        modules = ["examples.price_signal"]
        [worker]
        bootstrap_servers = "b:9092"
        [graphs.nowhere]
        sinks = []
        [graphs.price_signal]
        reactor = "other_rx"
        """,
    )
    issues = errors(file)
    assert_issue(issues, file, "graphs.nowhere", "no imported module declares graph 'nowhere'")
    assert_issue(issues, file, "graphs.price_signal.reactor", "bound to reactor 'price_signal_rx'")


def test_accumulator_kind_rules(tmp_path: Path, mod: str) -> None:
    file = write(
        tmp_path,
        "a.toml",
        f"""
        modules = [{{ name = "{mod}", path = "." }}]
        [accumulators.s]
        kind = "stream"
        [accumulators.p]
        kind = "polling"
        [accumulators.q]
        kind = "passthrough"
        interval = "1s"
        [accumulators.u]
        topic = "t"
        [accumulators.m]
        kind = "passthrough"
        model = "{mod}:identity"
        [accumulators.f]
        kind = "passthrough"
        function = "{mod}:nope"
        [accumulators.bad-name]
        kind = "passthrough"
        """,
    )
    issues = errors(file)
    assert_issue(issues, file, "accumulators.s.topic", "required for a stream accumulator")
    assert_issue(issues, file, "accumulators.p.function", "required for a polling accumulator")
    assert_issue(issues, file, "accumulators.q.interval", "not used by a passthrough accumulator")
    assert_issue(issues, file, "accumulators.u.kind", "required", "no imported module")
    assert_issue(issues, file, "accumulators.m.model", "not a pydantic model class")
    assert_issue(issues, file, "accumulators.f.function", f"module '{mod}' has no attribute 'nope'")
    assert_issue(issues, file, "accumulators.bad-name", "Python identifiers")


def test_accumulator_model_and_function_from_config(tmp_path: Path, mod: str) -> None:
    file = write(
        tmp_path,
        "a.toml",
        f"""
        modules = [{{ name = "{mod}", path = "." }}]
        [worker]
        bootstrap_servers = "b:9092"
        [accumulators.book]
        kind = "stream"
        topic = "books"
        group = "books-group"
        model = "{mod}:Book"
        [accumulators.ticks]
        kind = "polling"
        function = "{mod}:poll"
        interval = "250ms"
        [reactors.rx]
        accumulators = ["book", "ticks"]
        [graphs.g]
        module = "{mod}"
        reactor = "rx"
        topology = {{ keep = {{ inputs = ["book"] }} }}
        """,
    )
    config = load_config([file], environ={})
    book = config.accumulators["book"]
    assert book.model is not None and book.model.__name__ == "Book"
    assert book.validate({"bid": 1, "ask": 2}).ask == 2.0
    assert config.accumulators["ticks"].interval == 0.25
    assert config.kafka_groups() == {"books-group": ["book"]}


def test_reactor_problems(tmp_path: Path, mod: str) -> None:
    file = write(
        tmp_path,
        "a.toml",
        base(mod)
        + """
        [reactors.rx3]
        accumulators = ["book", "ghost"]
        [reactors.rx4]
        accumulators = []
        """,
    )
    issues = errors(file)
    assert_issue(issues, file, "reactors.rx3.accumulators[1]", "unknown accumulator 'ghost'")
    assert_issue(issues, file, "reactors.rx4.accumulators", "at least 1 item")


def test_sink_rules(tmp_path: Path, mod: str) -> None:
    file = write(
        tmp_path,
        "a.toml",
        base(mod)
        + f"""
        [sinks.k]
        type = "kafka"
        function = "{mod}:identity"
        [sinks.c]
        type = "callback"
        function = "{mod}:missing"
        [sinks.t]
        type = "carrier-pigeon"
        """,
    )
    issues = errors(file)
    assert_issue(issues, file, "sinks.k.topic", "required for a kafka sink")
    assert_issue(issues, file, "sinks.k.function", "not used by a kafka sink")
    assert_issue(issues, file, "sinks.c.function", "has no attribute 'missing'")
    assert_issue(issues, file, "sinks.t.type", "'kafka', 'log', 'callback' or 'state_store'")


def state_store_file(tmp_path: Path, mod: str, store: str = "") -> str:
    """``base`` with a second sink of type state_store on graph ``signal``."""
    text = base(mod).replace('sinks = ["out"]', 'sinks = ["out", "history"]')
    return write(
        tmp_path,
        "a.toml",
        text
        + f"""
        [sinks.history]
        type = "state_store"

        [worker]
        http = {{ enabled = false }}
        state_store = {{ url = "sqlite:///{tmp_path / "state.db"}"{store} }}
        """,
    )


def test_a_state_store_sink_parses(tmp_path: Path, mod: str) -> None:
    config = load_config([state_store_file(tmp_path, mod)], environ={})
    assert config.sinks["history"].type == "state_store"
    assert config.graph_sinks == {"signal": ["out", "history"]}
    assert not config.needs_kafka and config.kafka_sinks() == []


def test_a_state_store_sink_needs_the_state_store(tmp_path: Path, mod: str) -> None:
    file = state_store_file(tmp_path, mod, store=", enabled = false")
    assert_issue(errors(file), file, "sinks.history.type", "state store", "enabled = false", file)
    other = write(tmp_path, "b.toml", '[sinks.db]\ntype = "state_store"\ntopic = "t"\n')
    issues = errors(file, other)
    assert_issue(issues, other, "sinks.db.type", f"worker.state_store.enabled = false in {file}")
    assert_issue(issues, other, "sinks.db.topic", "not used by a state_store sink")


async def test_a_state_store_sink_keeps_results_of_a_config_loaded_worker(
    tmp_path: Path, mod: str
) -> None:
    config = load_config([state_store_file(tmp_path, mod)], environ={})
    worker = Worker(config, install_signals=False)
    runtime = worker.build()
    assert isinstance(worker.sinks["history"], StoreSink)
    assert worker.sinks["history"].store is worker.store
    await worker.start()
    try:
        await runtime.push("book", {"bid": 1.0, "ask": 3.0})
        await runtime.push("ref", 10.0)
        await runtime.wait_idle()
        await runtime.push("book", {"bid": 9.0, "ask": 11.0})
        await runtime.push("ref", 10.0)
        await runtime.wait_idle()
    finally:
        await worker.shutdown()
    assert worker.exit_code == 0
    with StateStore(f"sqlite:///{tmp_path / 'state.db'}") as store:
        rows = store.results(graph="signal")
    assert [r["outputs"] for r in rows] == [{"record": {"ok": 10.0}}, {"alert": {"alert": 2.0}}]


def test_kafka_use_needs_bootstrap_servers(tmp_path: Path, mod: str) -> None:
    text = base(mod).replace(
        '[accumulators.book]\n    kind = "passthrough"',
        '[accumulators.book]\n    kind = "stream"\n    topic = "books"',
    )
    file = write(tmp_path, "a.toml", text)
    assert_issue(errors(file), file, "worker.bootstrap_servers", "required", "Kafka")


def test_state_store_url_must_be_supported(tmp_path: Path, mod: str) -> None:
    file = write(tmp_path, "a.toml", base(mod) + '[worker.state_store]\nurl = "mysql://h/db"\n')
    assert_issue(errors(file), file, "worker.state_store.url", "unsupported database 'mysql'")


# -- several files -------------------------------------------------------------------------------


def test_duplicates_across_files_name_both_files(tmp_path: Path, mod: str) -> None:
    first = write(tmp_path, "first.toml", base(mod) + "[worker]\ngroup_id = 'a'\n")
    second = write(
        tmp_path,
        "second.toml",
        """
        [worker]
        group_id = "b"
        [accumulators.book]
        kind = "passthrough"
        [reactors.rx]
        accumulators = ["book"]
        [graphs.signal]
        sinks = []
        [sinks.out]
        type = "log"
        """,
    )
    issues = errors(first, second)
    for field, what in (
        ("accumulators.book", "accumulator 'book'"),
        ("reactors.rx", "reactor 'rx'"),
        ("graphs.signal", "graph 'signal'"),
        ("sinks.out", "sink 'out'"),
    ):
        issue = assert_issue(issues, second, field, what, "also declared in", first)
        assert issue.file == second
    assert_issue(issues, second, "worker", "also set in", first)


def test_every_error_of_every_file_is_collected(tmp_path: Path, mod: str) -> None:
    one = write(tmp_path, "one.toml", '[worker]\ncommit_interval = "x"\nbatch_size = 0\n')
    two = write(tmp_path, "two.toml", '[sinks.s]\ntype = "log"\ntopic = "t"\n[bogus]\n')
    issues = errors(one, two)
    assert {(i.file, i.field) for i in issues} >= {
        (one, "worker.commit_interval"),
        (one, "worker.batch_size"),
        (two, "sinks.s.topic"),
        (two, "bogus"),
    }
    assert str(ConfigError(issues)).count("\n") == len(issues) - 1


# -- the API token, HTTP limits, strict models ---------------------------------------------------


def test_headrace_token_always_applies_even_without_a_token_line(tmp_path: Path, mod: str) -> None:
    file = write(tmp_path, "a.toml", base(mod) + '[worker]\nhttp = { host = "0.0.0.0" }\n')
    config = load_config([file], environ={"HEADRACE_TOKEN": "from-env-123"})
    token = config.worker.http.token
    assert token is not None and token.get_secret_value() == "from-env-123"
    assert config.notices == []
    assert_issue(errors(file), file, "worker.http.token", "required", "set HEADRACE_TOKEN")


def test_unused_or_overridden_token_variables_are_reported(tmp_path: Path, mod: str) -> None:
    file = write(
        tmp_path, "a.toml", base(mod) + '[worker]\nhttp = { token = "${OTHER}", enabled = false }\n'
    )
    env = {"HEADRACE_TOKEN": "one-token", "OTHER": "another", "HEADRACE_HTTP_TOKEN": "x"}
    notices = load_config([file], environ=env).notices
    assert notices == [
        "HEADRACE_HTTP_TOKEN is set but nothing reads it: the API token is HEADRACE_TOKEN",
        "HEADRACE_TOKEN is set but unused: worker.http.enabled is false",
        f"HEADRACE_TOKEN overrides worker.http.token of {file}",
    ]


def test_http_settings_limits_and_strict_models(tmp_path: Path, mod: str) -> None:
    file = write(
        tmp_path,
        "a.toml",
        base(mod).replace(
            '[accumulators.ref]\n    kind = "passthrough"',
            '[accumulators.ref]\n    kind = "passthrough"\n    strict = true',
        )
        + """
        [worker.http]
        allowed_hosts = ["ops.example.com"]
        allowed_origins = ["https://ops.example.com"]
        max_connections = 50
        header_timeout = "2s"
        [worker.limits]
        max_depth = 10
        max_bytes = 2048
        """,
    )
    config = load_config([file], environ={})
    http = config.worker.http
    assert http.allowed_hosts == ["ops.example.com"] and http.header_timeout == 2.0
    assert http.max_connections == 50 and http.allow_unauthenticated is False
    assert config.accumulators["ref"].strict is True
    assert config.accumulators["book"].strict is False
    assert {spec.max_depth for spec in config.accumulators.values()} == {10}
    assert config.worker.limits.value_limits().max_bytes == 2048


def test_bad_http_settings_name_the_field(tmp_path: Path, mod: str) -> None:
    file = write(
        tmp_path,
        "a.toml",
        base(mod)
        + """
        [worker]
        http = { host = "0.0.0.0", token = "${T}", allow_unauthenticated = true }
        """,
    )
    issues = errors(file, env={"T": "tok-1234"})
    assert_issue(issues, file, "worker.http.allow_unauthenticated", "only allowed on a loopback")
    deep = write(tmp_path, "c.toml", base(mod) + "[worker]\nlimits = { max_depth = 500 }\n")
    assert_issue(errors(deep), deep, "worker.limits.max_depth", "238")
    stream = write(
        tmp_path,
        "b.toml",
        base(mod).replace(
            'kind = "passthrough"\n    [accumulators.ref]',
            "kind = 'polling'\n    strict = true\n    [accumulators.ref]",
        ),
    )
    assert_issue(errors(stream), stream, "accumulators.book.strict", "not used by a polling")
