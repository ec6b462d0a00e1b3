"""``[worker] guarantee``: parsed and checked; under exactly_once every sink or dead-letter
destination that cannot join a Kafka transaction is named (a warning, or an error with
``[worker.transactions] strict = true``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from headrace.engine.config.loader import load_config
from headrace.engine.config.schema import ConfigError
from tests.unit.engine.config.test_config import write
from tests.unit.support import imports_restored

BASE = """
modules = ["examples.price_signal"]
[worker]
bootstrap_servers = "b:9092"
{worker}
[worker.state_store]
enabled = {store}
url = "sqlite:///{tmp}/s.db"
[graphs.price_signal]
sinks = ["k", "kept"]
[sinks.k]
type = "kafka"
topic = "signals"
[sinks.kept]
type = "{second}"
"""


@pytest.fixture(autouse=True)
def _restore_import_state() -> Iterator[None]:
    with imports_restored():
        yield


def config_file(tmp: Path, worker: str, second: str = "log", store: str = "false") -> str:
    text = BASE.format(worker=worker, second=second, store=store, tmp=tmp)
    return write(tmp, "w.toml", text)


def test_default_is_at_least_once_without_notices(tmp_path: Path) -> None:
    config = load_config([config_file(tmp_path, "")], environ={})
    assert config.worker.guarantee == "at_least_once"
    assert not [n for n in config.notices if "transaction" in n]


def test_unknown_guarantee_is_an_error_naming_the_field(tmp_path: Path) -> None:
    file = config_file(tmp_path, 'guarantee = "exactly-once"')
    with pytest.raises(ConfigError) as caught:
        load_config([file], environ={})
    issue = next(i for i in caught.value.issues if i.field == "worker.guarantee")
    assert "at_least_once" in issue.reason and "exactly_once" in issue.reason


def test_exactly_once_names_each_sink_outside_the_transaction(tmp_path: Path) -> None:
    file = config_file(tmp_path, 'guarantee = "exactly_once"', second="state_store", store="true")
    config = load_config([file], environ={})
    assert config.worker.guarantee == "exactly_once"
    outside = [n for n in config.notices if "cannot join a Kafka transaction" in n]
    assert len(outside) == 2, config.notices
    assert any("sinks.kept.type" in n and "'kept' (state_store" in n for n in outside)
    assert any("worker.dead_letters.state_store" in n for n in outside)
    assert not any("'k'" in n for n in outside), "the Kafka sink joins the transaction"


def test_strict_makes_them_errors(tmp_path: Path) -> None:
    worker = 'guarantee = "exactly_once"\n[worker.transactions]\nstrict = true\nmax_inputs = 50'
    file = config_file(tmp_path, worker, second="log")
    with pytest.raises(ConfigError) as caught:
        load_config([file], environ={})
    issue = next(i for i in caught.value.issues if i.field == "sinks.kept.type")
    assert "cannot join a Kafka transaction" in issue.reason and "strict" in issue.reason


def test_transactions_settings_are_checked(tmp_path: Path) -> None:
    worker = 'guarantee = "exactly_once"\n[worker.transactions]\nmax_inputs = 0'
    with pytest.raises(ConfigError) as caught:
        load_config([config_file(tmp_path, worker)], environ={})
    assert any(i.field == "worker.transactions.max_inputs" for i in caught.value.issues)


def test_exactly_once_keyed_reactors_are_covered_so_not_named_even_with_strict(
    tmp_path: Path,
) -> None:
    """Their changelog writes go in the Kafka transaction: no warning, no strict error."""
    examples = Path(__file__).resolve().parents[4] / "examples"
    keyed = Path(examples / "keyed_price_signal.toml").read_text()
    eos = keyed.replace("[worker]\n", '[worker]\nguarantee = "exactly_once"\n')
    eos += "\n[worker.dead_letters]\nstate_store = false\n[worker.transactions]\nstrict = true\n"
    config = load_config(
        [write(tmp_path, "keyed_eos.toml", eos)], environ={"KAFKA_BOOTSTRAP_SERVERS": "b:9092"}
    )
    assert sorted(spec.name for spec in config.reactors.values() if spec.keyed)
    assert not [n for n in config.notices if "keyed" in n or "changelog" in n], config.notices
