"""bench-peers' run-by-run ratios: paired by run, failed runs left out, medians printed."""

from __future__ import annotations

from tests.bench.peers import Result, report, run_by_run, run_by_run_line


def rows(system: str, rates: list[float], failed: tuple[int, ...] = ()) -> list[Result]:
    return [
        Result(system, rate=rate, error="boom" if index in failed else "")
        for index, rate in enumerate(rates)
    ]


def test_ratios_pair_the_runs_of_the_same_index_and_skip_failed_ones() -> None:
    results = {
        "headrace": rows("headrace", [120.0, 80.0, 150.0, 90.0], failed=(3,)),
        "quix": rows("quix", [60.0, 40.0, 50.0, 30.0], failed=(1,)),
    }
    assert run_by_run(results, "headrace", "quix") == [2.0, 3.0]
    assert run_by_run(results, "headrace", "bytewax") == []


def test_the_report_prints_each_ratio_and_their_median_only_for_several_runs() -> None:
    results = {
        "headrace": rows("headrace", [120.0, 80.0, 150.0]),
        "quix": rows("quix", [60.0, 80.0, 50.0]),
        "bytewax": rows("bytewax", [100.0, 100.0, 100.0]),
    }
    line = run_by_run_line(results, ["quix", "bytewax"])
    assert line == (
        "run by run: Headrace/quix 2.00 1.00 3.00 (median 2.00); "
        "Headrace/bytewax 1.20 0.80 1.50 (median 1.20)"
    )
    assert report(results, 3)[-1] == line
    assert not any(text.startswith("run by run") for text in report(results, 1))
    assert run_by_run_line({"headrace": rows("headrace", [1.0])}, ["quix"]) == ""
