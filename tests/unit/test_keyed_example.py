"""The keyed example: per-symbol signals and per-symbol deviation alerts, in process."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
import structlog

from headrace.engine.config.loader import load_config

ROOT = Path(__file__).resolve().parents[2]
BOOK_MIDS = {"BTC": [100.1, 101.1], "ETH": [50.05, 52.05], "SOL": [20.01]}


@pytest.fixture
def example():
    """(Re)load the module so its declarations are registered for this test."""
    saved = structlog.get_config()
    name = "examples.keyed_price_signal"
    module = sys.modules.get(name)
    yield importlib.reload(module) if module else importlib.import_module(name)
    structlog.configure(**saved)


async def test_every_symbol_ends_on_its_newest_book(example):
    results = await example.run()
    signals = results[example.SIGNAL_GRAPH]
    for result in signals:  # a signal is computed from a book of its own symbol
        assert round(result["mid"], 2) in BOOK_MIDS[result["symbol"]]
    last = example.last_per_symbol(signals)
    assert {symbol: round(r["mid"], 2) for symbol, r in last.items()} == {
        "BTC": 101.1,
        "ETH": 52.05,
        "SOL": 20.01,
    }


async def test_alerts_join_each_symbol_with_its_own_reference(example):
    results = await example.run()
    alerts = sorted(results[example.ALERT_GRAPH], key=lambda r: r["symbol"])
    # SOL has no reference price: no fire; BTC's book is in line, ETH's is 410 bps above
    assert alerts == [
        {"symbol": "BTC", "deviation_bps": 0.0, "level": "ok"},
        {"symbol": "ETH", "deviation_bps": 410.0, "level": "ALERT"},
    ]


def test_execute_with_a_key(example):
    book = example.SymbolBook(symbol="X", best_bid=10.0, best_ask=10.2)
    reference = example.SymbolReference(symbol="X", price=10.0)
    outputs = example.alert_builder.execute(
        {"symbol_books": book, "symbol_refs": reference}, key="X"
    )
    assert outputs == {"alert": {"symbol": "X", "deviation_bps": 100.0, "level": "ALERT"}}


def test_main_prints_the_last_signal_per_symbol(example, capsys):
    example.main()
    out = capsys.readouterr().out
    assert "last signal BTC: BTC mid=101.10" in out
    assert "ALERT: ETH 410.0 bps" in out
    assert "SOL" in out and "ok: BTC 0.0 bps" in out


def test_the_worker_file_is_valid_and_keyed(example):
    config = load_config([str(ROOT / "examples" / "keyed_price_signal.toml")], environ={})
    assert config.reactors["keyed_price_signal_rx"].keyed
    assert config.reactors["deviation_alert_rx"].max_concurrency == 4
    assert config.accumulators["symbol_books"].key == "symbol"
    assert config.graph_sinks == {
        "keyed_price_signal": ["signals"],
        "deviation_alert": ["alerts"],
    }
