"""Seed-by-seed counts (``report/paired.py``) and their section in ``report.md``."""

from __future__ import annotations

import pytest

from fedkper_monai.cli import main
from fedkper_monai.errors import FedKPerError
from fedkper_monai.report.paired import PAIRED_METRICS, PairedCount, PairedMetric, paired_cell, paired_counts
from fedkper_monai.report.writer import write_report

from tests.report.test_report_writer import ALL_RUNS, FEDAVG, FEDKPER

ACC = PairedMetric("final_global_acc", "final global acc", True)
CHANGE = PairedMetric("global_acc_stability", "steadier", False)


def _run(algorithm: str, seed: int | None, acc: float | None, change: float | None = None) -> dict:
    return {"algorithm": algorithm, "seed": seed, "final_global_acc": acc, "global_acc_stability": change}


def test_pairs_by_seed_with_wins_ties_and_the_direction_of_each_metric():
    rows = [
        _run("fedkper", 0, 0.70, 0.01), _run("fedkper", 1, 0.50, 0.05), _run("fedkper", 2, 0.60, 0.02),
        _run("fedavg", 2, 0.60, 0.03), _run("fedavg", 0, 0.40, 0.02), _run("fedavg", 1, 0.55, 0.01),
    ]
    [(name, counts)] = paired_counts(rows, "fedkper", (ACC, CHANGE))
    assert name == "fedavg"
    # acc: seed 0 better, seed 1 worse, seed 2 equal; change (lower is better): seeds 0 and 2 better.
    assert counts["final_global_acc"] == PairedCount(better=1, ties=1, pairs=3)
    assert counts["global_acc_stability"] == PairedCount(better=2, ties=0, pairs=3)


def test_only_shared_seeds_with_values_on_both_sides_are_pairs():
    rows = [
        _run("fedkper", 0, 0.7), _run("fedkper", 1, None), _run("fedkper", 3, 0.9),
        _run("fedavg", 0, 0.6), _run("fedavg", 1, 0.5), _run("fedavg", 2, 0.1),
        _run("ditto", 4, 0.2),  # no shared seed: not listed
        _run("local", None, 0.0),  # unseeded runs never pair
    ]
    assert paired_counts(rows, "fedkper", (ACC,)) == [("fedavg", {"final_global_acc": PairedCount(1, 0, 1)})]


def test_a_seed_with_two_runs_of_one_algorithm_is_not_paired():
    rows = [_run("fedkper", 0, 0.7), _run("fedkper", 0, 0.2), _run("fedavg", 0, 0.5),
            _run("fedkper", 1, 0.7), _run("fedavg", 1, 0.5)]
    assert paired_counts(rows, "fedkper", (ACC,)) == [("fedavg", {"final_global_acc": PairedCount(1, 0, 1)})]


def test_no_reference_runs_means_no_counts():
    assert paired_counts([_run("fedavg", 0, 0.5)], "fedkper") == []


def test_cells():
    assert paired_cell(PairedCount(2, 0, 3)) == "2 of 3"
    assert paired_cell(PairedCount(1, 1, 3)) == "1 of 3 (1 tie)"
    assert paired_cell(PairedCount(0, 2, 3)) == "0 of 3 (2 ties)"
    assert paired_cell(PairedCount(0, 0, 0)) == "n/a"


def test_every_paired_metric_is_a_summary_column():
    from fedkper_monai.report.metrics import SUMMARY_COLUMNS

    keys = {column.key for column in SUMMARY_COLUMNS}
    assert all(metric.key in keys for metric in PAIRED_METRICS)


def test_report_has_the_seed_by_seed_section_for_fedkper(tmp_path):
    text = write_report(ALL_RUNS, tmp_path / "r").read_text()
    section = text.split("## fedkper against each algorithm, seed by seed", 1)[1].split("\n## ", 1)[0]
    # The fixtures pair fedkper and fedavg at seed 0: fedavg's final global acc is higher (0.62 vs 0.60), but
    # over the last 2 of 3 rounds fedkper's is (0.625 vs 0.60); fedkper's balance, worst site, BwT and NFR are
    # better (BwT both ways: final -0.02 vs -0.10, mean 0.015 vs -0.035), fedavg's is steadier; no unseen sites.
    row = next(line for line in section.splitlines() if line.startswith("| fedavg |"))
    assert [cell.strip() for cell in row.strip("|").split("|")] == [
        "fedavg", "0 of 1", "1 of 1", "0 of 1", "1 of 1", "1 of 1", "n/a", "1 of 1", "1 of 1", "1 of 1"]


def test_reference_names_another_algorithm_or_is_an_error(tmp_path, capsys):
    text = write_report([FEDKPER, FEDAVG], tmp_path / "r", reference="fedavg").read_text()
    assert "## fedavg against each algorithm, seed by seed" in text and "| fedkper |" in text
    with pytest.raises(FedKPerError, match="--reference 'ditto' names no algorithm of the runs \\(fedavg, fedkper\\)"):
        write_report([FEDKPER, FEDAVG], tmp_path / "never", reference="ditto")
    assert not (tmp_path / "never").exists()
    assert main(["report", str(FEDKPER), str(FEDAVG), "--out", str(tmp_path / "cli"), "--reference", "nope"]) != 0
    assert "names no algorithm" in capsys.readouterr().err
    assert not (tmp_path / "cli").exists()
