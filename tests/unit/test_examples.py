"""Every example runs and produces the expected outputs."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import structlog

from headrace.accumulators import AccumulatorKind, get_accumulator
from headrace.connectors import MemorySink
from headrace.engine import Runtime, get_graph
from headrace.reactors import ReactionMode, bound_graphs, get_reactor

ROOT = Path(__file__).resolve().parents[2]
MODULES = [
    "examples.market",
    "examples.price_signal",
    "examples.multi_source_alert",
    "examples.batch_vwap",
    "examples.market_maker",
    "examples.cross_module.publisher",
    "examples.cross_module.subscriber",
]


@pytest.fixture(autouse=True)
def _restore_logging():
    """``main()`` quiets structlog for readable output; give other tests their config back."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


@pytest.fixture
def ex():
    """(Re)load every example module, so its declarations are registered for this test.

    The registries are restored after each test, so a module imported by an earlier test
    must be executed again to register its accumulators, reactor and graph.
    """
    loaded = {}
    for name in MODULES:
        module = sys.modules.get(name)
        loaded[name.rsplit(".", 1)[-1]] = (
            importlib.reload(module) if module else importlib.import_module(name)
        )
    return type("Examples", (), loaded)


def test_importing_declares_without_running_anything(ex, capsys):
    for name in MODULES:
        importlib.reload(sys.modules[name])
    assert capsys.readouterr().out == ""
    assert get_accumulator("orderbook").kind is AccumulatorKind.STREAM
    assert get_accumulator("orderbook").topic == "price.orderbook"
    assert get_accumulator("trades").kind is AccumulatorKind.BATCH
    assert get_accumulator("trades").max_buffer_size == 5
    assert get_accumulator("reference").kind is AccumulatorKind.PASSTHROUGH
    assert get_reactor("multi_source_alert_rx").mode is ReactionMode.WHEN_ALL
    for graph in ("price_signal", "multi_source_alert", "batch_vwap", "market_maker"):
        assert get_graph(graph).reactor_name in (
            "price_signal_rx",
            "multi_source_alert_rx",
            "batch_vwap_rx",
            "market_maker_reactor",
        )
    assert bound_graphs("PriceReactor") == ["price_consumer"]


# -- price signal ---------------------------------------------------------------------------


async def test_price_signal(ex):
    results = await ex.price_signal.run()
    assert [round(r["mid_price"], 4) for r in results] == [100.125, 100.16, 100.0]
    assert [round(r["spread"], 4) for r in results] == [0.05, 0.08, 0.1]
    assert [round(r["spread_bps"], 2) for r in results] == [4.99, 7.99, 10.0]
    assert results[0]["text"] == "mid=100.1250 spread=0.0500 (4.99 bps)"


async def test_price_signal_drops_invalid_and_crossed_books(ex):
    from headrace.accumulators import AccumulatorInputError

    sink = MemorySink()
    async with Runtime(graphs=["price_signal"], sinks=[sink]) as runtime:
        with pytest.raises(AccumulatorInputError, match=r"accumulator 'orderbook'"):
            await runtime.push("orderbook", {"best_bid": "x", "best_ask": 1})
        await runtime.push("orderbook", {"best_bid": 101, "best_ask": 100})  # crossed: dropped
        await runtime.push("orderbook", {"best_bid": 100, "best_ask": 102})
        await runtime.wait_idle()
    assert [out["emit"]["mid_price"] for out in sink.outputs()] == [101.0]


def test_price_signal_execute_without_a_book(ex):
    result = ex.price_signal.builder.execute({"orderbook": None})
    assert result["emit"]["mid_price"] == 0.0


def test_price_signal_main(ex, capsys):
    ex.price_signal.main()
    out = capsys.readouterr().out
    assert "book bid=100.10 ask=100.15 -> mid=100.1250 spread=0.0500 (4.99 bps)" in out
    assert out.count("-> mid=") == 3


# -- multi-source alert ---------------------------------------------------------------------


async def test_multi_source_alert_fires_only_when_both_delivered(ex):
    steps = await ex.multi_source_alert.run()
    assert [fires for _, _, fires, _ in steps] == [0, 1, 1, 2, 2, 3]
    levels = [result["level"] if result else None for _, _, _, result in steps]
    assert levels == [None, "OK", None, "ALERT", None, "OK"]
    alert = steps[3][3]
    assert alert["mid"] == pytest.approx(101.1)
    assert alert["deviation"] == pytest.approx(0.011)
    assert alert["text"] == "ALERT: mid=101.1000 deviates 1.10% from reference=100.0000"


def test_multi_source_alert_threshold(ex):
    m = ex.multi_source_alert
    from examples.market import OrderBook, ReferencePrice

    def evaluate(mid, reference):
        book = OrderBook(best_bid=mid - 0.01, best_ask=mid + 0.01)
        return m.builder.execute({"orderbook": book, "reference": ReferencePrice(price=reference)})

    assert "record" in evaluate(100.5, 100.0)  # exactly 0.5%: not more than the threshold
    assert "alert" in evaluate(100.51, 100.0)
    assert "alert" in evaluate(99.49, 100.0)  # deviation is absolute
    assert "record" in evaluate(99.6, 100.0)


def test_multi_source_alert_main(ex, capsys):
    ex.multi_source_alert.main()
    out = capsys.readouterr().out
    assert out.count("no fire: waiting for the other input") == 3
    assert "fires=2 ALERT: mid=101.1000 deviates 1.10%" in out


# -- batch VWAP -------------------------------------------------------------------------------


async def test_batch_vwap_one_result_per_five_trades_and_the_rest_on_stop(ex):
    trades = ex.batch_vwap.SAMPLE_TRADES
    results = await ex.batch_vwap.run()
    assert [r["count"] for r in results] == [5, 5, 2]
    for result, batch in zip(results, (trades[:5], trades[5:10], trades[10:]), strict=True):
        volume = sum(t["volume"] for t in batch)
        vwap = sum(t["price"] * t["volume"] for t in batch) / volume
        assert result["vwap"] == pytest.approx(vwap)
        assert result["volume"] == pytest.approx(volume)
    assert results[0]["text"] == "VWAP=100.3500 (n=5, volume=100.00)"


async def test_batch_vwap_ten_trades_two_fires(ex):
    trades = [{"price": 100 + i, "volume": 1} for i in range(10)]
    results = await ex.batch_vwap.run(trades)
    assert [r["vwap"] for r in results] == [pytest.approx(102.0), pytest.approx(107.0)]


def test_batch_vwap_execute(ex):
    from examples.market import Trade

    out = ex.batch_vwap.builder.execute({"trades": [Trade(price=10, volume=1)] * 2})
    assert out["emit_vwap"]["vwap"] == 10
    assert ex.batch_vwap.builder.execute({})["emit_vwap"]["text"] == "no trades"


def test_batch_vwap_main(ex, capsys):
    ex.batch_vwap.main()
    out = capsys.readouterr().out
    assert "batch 1: VWAP=100.3500 (n=5" in out and "batch 3: VWAP=103.1000 (n=2" in out


# -- market maker -----------------------------------------------------------------------------


async def test_market_maker_routes_signal_and_no_action(ex):
    outputs = await ex.market_maker.run()
    assert outputs == [
        {"audit_logger": {"logged": True, "reason": "waiting for both inputs"}},
        {"audit_logger": {"logged": True, "reason": "below threshold (7 <= 10)"}},
        {"signal_handler": {"published": True, "output": 11}},
        {"audit_logger": {"logged": True, "reason": "below threshold (9 <= 10)"}},
    ]


def test_market_maker_execute(ex):
    execute = ex.market_maker.builder.execute
    assert execute({"alpha": {"value": 9}, "beta": {"estimate": 4}}) == {
        "signal_handler": {"published": True, "output": 13}
    }
    assert execute({"alpha": {"value": 1}}) == {
        "audit_logger": {"logged": True, "reason": "waiting for both inputs"}
    }


def test_market_maker_main(ex, capsys):
    ex.market_maker.main()
    out = capsys.readouterr().out
    assert "{'signal_handler': {'published': True, 'output': 13}}" in out
    assert out.count("{'audit_logger'") == 3


# -- cross-module binding ---------------------------------------------------------------------


async def test_cross_module_binding_and_unload_guard(ex):
    report = await ex.subscriber.run()
    assert report["bound"] == ["price_consumer"]
    assert report["signals"] == [None, pytest.approx(1.005), pytest.approx(0.99505)]
    assert "reactor 'PriceReactor' cannot be unloaded" in report["refused"]
    assert "['price_consumer']" in report["refused"]
    assert report["unloaded"] is True
    assert "unknown reactor 'PriceReactor'" in report["without_publisher"]
    assert report["bound_again"] == ["price_consumer"]
    # the modules stay usable: it runs again
    assert (await ex.subscriber.run())["signals"][1] == pytest.approx(1.005)


def test_subscriber_does_not_import_the_publisher(ex):
    source = (ROOT / "examples/cross_module/subscriber.py").read_text()
    assert "from examples.cross_module.publisher" not in source
    assert "import examples.cross_module.publisher" not in source
    assert ex.subscriber.builder.graph.reactor_name == "PriceReactor"


def test_cross_module_mains(ex, capsys):
    ex.publisher.main()
    ex.subscriber.main()
    out = capsys.readouterr().out
    assert "reactor 'PriceReactor' watches ['raw_prices', 'normalized_prices']" in out
    assert "while bound: refused" in out
    assert "signal=1.005" in out


# -- all together -----------------------------------------------------------------------------


async def test_one_order_book_feed_drives_two_examples(ex):
    sink = MemorySink()
    async with Runtime(graphs=["price_signal", "multi_source_alert"], sinks=[sink]) as runtime:
        await runtime.push("reference", {"price": 100.0})
        await runtime.push("orderbook", {"best_bid": 101.0, "best_ask": 101.2})
        await runtime.wait_idle()
    graphs = sorted(graph for graph, _ in sink.results)
    assert graphs == ["multi_source_alert", "price_signal"]
    assert sink.outputs("multi_source_alert")[0]["alert"]["level"] == "ALERT"


def test_demo_runs_every_example_as_a_module():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "examples.demo"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "All 6 examples ran." in out
    for marker in (
        "mid=100.1250",
        "ALERT: mid=101.1000",
        "VWAP=100.3500",
        "signal_handler",
        "refused",
    ):
        assert marker in out
    assert "[info" not in out  # the runtime's info logs are quiet in the demo
