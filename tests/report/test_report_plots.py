"""Curve plots: one line per run, or per algorithm (mean over its seeds, min-max band) when it has several."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from fedkper_monai.report.plots import CURVES, plot_curve, plot_tradeoff, seed_band
from fedkper_monai.report.runs import RunMetrics

GLOBAL_ACC = next(spec for spec in CURVES if spec.key == "global_acc")


def _run(algorithm: str, seed: int, accuracies: list[float | None]) -> RunMetrics:
    rows = [{"round": index, "global_acc": value, "mean_personalized_acc": 0.9} for index, value in enumerate(accuracies)]
    return RunMetrics(Path(f"{algorithm}/seed{seed}"), Path("metrics.jsonl"), f"{algorithm}@seed{seed}",
                      header={"algorithm": algorithm, "seed": seed}, round_rows=rows)


def test_seed_band_is_mean_min_and_max_over_the_runs_that_report_each_round():
    runs = [_run("fedkper", 0, [0.2, 0.4, 0.9]), _run("fedkper", 1, [0.4, None, 0.5]), _run("fedkper", 2, [0.6])]
    rounds, mean, low, high = seed_band(runs, "global_acc")
    assert rounds == [0, 1, 2]
    assert mean == pytest.approx([0.4, 0.4, 0.7]) and low == [0.2, 0.4, 0.5] and high == [0.6, 0.4, 0.9]


def test_several_seeds_draw_one_line_per_algorithm_and_the_legend_stays_off_the_curves():
    runs = [_run("fedkper", 0, [0.2, 0.4]), _run("fedkper", 1, [0.4, 0.6]), _run("fedavg", 0, [0.1, 0.3]),
            _run("fedavg", 1, [0.3, 0.5]), _run("ditto", 0, [None, None])]
    axes = plot_curve(runs, GLOBAL_ACC).axes[0]
    lines = {line.get_label(): list(line.get_ydata()) for line in axes.get_lines()}
    assert lines.keys() == {"fedkper (2 runs)", "fedavg (2 runs)"}
    assert lines["fedkper (2 runs)"] == pytest.approx([0.3, 0.5]) and lines["fedavg (2 runs)"] == pytest.approx([0.2, 0.4])
    assert len(axes.collections) == 2  # one min-max band per algorithm
    legend = axes.get_legend()
    assert legend.get_title().get_text() == "line: mean of runs\nband: min to max"
    assert legend.get_bbox_to_anchor().x0 > axes.get_window_extent().x1  # beside the axes, not on them
    assert any("not reported by: ditto@seed0" in text.get_text() for text in axes.texts)


def test_one_run_per_algorithm_draws_each_run():
    runs = [_run("fedkper", 0, [0.2, 0.4]), _run("fedavg", 0, [0.1, math.nan])]
    axes = plot_curve(runs, GLOBAL_ACC).axes[0]
    assert [line.get_label() for line in axes.get_lines()] == ["fedkper@seed0", "fedavg@seed0"]
    assert not axes.collections and axes.get_legend().get_title().get_text() == ""


def test_the_trade_off_names_algorithms_once_when_they_have_several_runs():
    runs = [_run("fedkper", 0, [0.2, 0.4]), _run("fedkper", 1, [0.4, 0.6]), _run("fedavg", 0, [0.1, 0.3])]
    axes = plot_tradeoff(runs).axes[0]
    assert [text.get_text() for text in axes.get_legend().get_texts()] == ["fedkper (2)", "fedavg (1)"]
    assert not axes.texts  # no per-point labels to overlap
    single = plot_tradeoff(runs[1:]).axes[0]
    assert single.get_legend() is None and [text.get_text() for text in single.texts] == ["fedkper@seed1", "fedavg@seed0"]


def test_an_algorithm_keeps_its_color_in_the_curves_when_another_reports_nothing():
    runs = [_run("ditto", 0, [None, None]), _run("fedkper", 0, [0.2, 0.4]), _run("fedkper", 1, [0.4, 0.6])]
    curve = plot_curve(runs, GLOBAL_ACC).axes[0]
    trade_off = plot_tradeoff(runs).axes[0]
    (line,) = curve.get_lines()
    # ditto has C0 in every plot, so fedkper's mean line is C1, as its points in the trade-off are.
    assert line.get_color() == "C1" and {tuple(c.get_facecolor()[0]) for c in trade_off.collections} == {
        tuple(curve.collections[0].get_facecolor()[0][:3]) + (1.0,)}
