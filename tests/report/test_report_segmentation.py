"""The report of a segmentation run (header ``"task": "segmentation"``) says Dice where accuracy stood: tables,
metric explanations and plots; per-site bars read the ``*_dice`` site fields and per-class forgetting is over the
foreground classes. The fixture is a real 2-site, 2-round run of ``jobs/fedkper_seg3d_demo`` (fixtures/README.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedkper_monai.report.metrics import final_site_accuracies, mean_per_class_forgetting, metric_word
from fedkper_monai.report.runs import load_run
from fedkper_monai.report.plots import CURVES, plot_curve, plot_per_site_accuracy, plot_tradeoff, render_plots
from fedkper_monai.report.writer import write_report

FIXTURES = Path(__file__).parent / "fixtures"
SEGMENTATION = FIXTURES / "segmentation" / "fedkper"
CLASSIFICATION = FIXTURES / "runs" / "fedavg"


def _site_lines(task: str | None = None) -> list[dict]:
    lines = [json.loads(text) for text in (SEGMENTATION / "metrics.jsonl").read_text().splitlines()]
    return [line for line in lines if "site" in line and task in (None, line.get("task"))]


def test_report_md_says_dice(tmp_path):
    report = write_report([SEGMENTATION], tmp_path / "report").read_text()
    assert "Dice scores are fractions in [0, 1]" in report
    assert "holds the mean foreground Dice" in report
    for title in ("final global Dice", "best global Dice", "mean pers. Dice", "worst pers. Dice", "global Dice change"):
        assert f"| {title} |" in report or f"| {title} " in report, title
    assert "**final global Dice** (`final_global_acc`): Dice of the global model on the global test set" in report
    assert "share of ground-truth foreground voxels" in report
    assert "final global acc" not in report and "accuracy of the global model" not in report
    # summary.csv keeps the schema's column keys.
    assert (tmp_path / "report" / "summary.csv").read_text().splitlines()[0].split(",")[4] == "final_global_acc"


def test_plots_say_dice_and_read_the_dice_fields():
    run = load_run(SEGMENTATION)
    assert run.task == "segmentation" and metric_word([run]) == "Dice"
    curve = plot_curve([run], CURVES[0])
    assert curve.axes[0].get_title() == "Global model Dice on the global test set, per round"
    assert curve.axes[0].get_ylabel() == "global Dice"
    assert plot_tradeoff([run]).axes[0].get_xlabel() == "final global Dice (global model, global test set)"
    per_site = plot_per_site_accuracy([run])
    assert per_site.axes[0].get_ylabel() == "Dice" and "Final Dice per site" in per_site.get_suptitle()
    # The per-site bars: the last train line's personalized_dice, the last line's global_on_local_dice (the final
    # validation of the last global model).
    trained = {line["site"]: line["personalized_dice"] for line in _site_lines("train")}
    validated = {line["site"]: line["global_on_local_dice"] for line in _site_lines()}
    assert final_site_accuracies(run) == {site: pytest.approx((trained[site], validated[site])) for site in trained}
    assert run.forgetting_class_names == ["grey_matter", "white_matter"] and len(mean_per_class_forgetting(run)) == 2
    titles = [title for _, title, _ in render_plots([run])]
    assert not any("accuracy" in title for title in titles) and "Final per-site Dice: personalized vs global-on-local" in titles


def test_a_mixed_report_names_both(tmp_path):
    runs = [load_run(SEGMENTATION), load_run(CLASSIFICATION)]
    assert metric_word(runs) == "accuracy or Dice"
    report = write_report([SEGMENTATION, CLASSIFICATION], tmp_path / "report").read_text()
    assert "accuracies or Dice scores are fractions" in report
    assert "fedkper is a segmentation run: its accuracies in this report are mean foreground Dice." in report
