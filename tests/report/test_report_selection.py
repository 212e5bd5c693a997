"""The report's three global accuracies (final, best-by-validation, late) and BwT both ways (issue 23).

Every run here is hand-written metrics lines; the comments show the arithmetic.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from fedkper_monai.report.metrics import SUMMARY_COLUMNS, column_meaning, summarize
from fedkper_monai.report.paired import paired_counts
from fedkper_monai.report.runs import load_run
from fedkper_monai.report.writer import write_report

ROOT = Path(__file__).resolve().parents[2]
HEADER = {"run": {"algorithm": "fedkper", "seed": 0, "num_rounds": 10, "sites": ["site-1"], "num_classes": 2}}
GLOBAL_ACCS = [0.30, 0.50, 0.62, 0.40, 0.55, 0.70, 0.45, 0.35, 0.60, 0.50]
# Highest validation accuracy 0.66 at rounds 2 and 6: the earliest, round 2, is the one kept.
VAL_ACCS = [0.31, 0.52, 0.66, 0.40, 0.60, 0.64, 0.66, 0.30, 0.61, 0.50]
# Round 0 has no earlier round to forget (null); the last round forgets little, the rounds before much.
BWTS = [None, -0.30, -0.20, -0.40, None, -0.10, -0.30, -0.20, -0.30, -0.03]
NFRS = [0.0, 0.10, 0.20, 0.30, 0.10, 0.20, 0.30, 0.10, 0.20, 0.30]


def _rounds(with_validation: bool) -> list[dict]:
    rows = []
    for index, global_acc in enumerate(GLOBAL_ACCS):
        row = {"round": index, "global_acc": global_acc, "bwt": BWTS[index], "global_nfr": NFRS[index]}
        if with_validation:
            row["val_acc"] = VAL_ACCS[index]
            row["best_val_round"] = VAL_ACCS.index(max(VAL_ACCS[: index + 1]))
        rows.append(row)
    return rows


@pytest.fixture
def selected_run(tmp_path, write_jsonl):
    write_jsonl(tmp_path / "fedkper" / "metrics.jsonl", [HEADER, *_rounds(with_validation=True)])
    return tmp_path / "fedkper"


@pytest.fixture
def old_run(tmp_path, write_jsonl):
    # A run written before model selection: no val_acc, no best_val_round (most runs in benchmarks/runs/).
    write_jsonl(tmp_path / "fedavg" / "metrics.jsonl",
                [{"run": {**HEADER["run"], "algorithm": "fedavg"}}, *_rounds(with_validation=False)])
    return tmp_path / "fedavg"


def test_best_by_validation_is_the_test_accuracy_of_the_round_best_on_validation(selected_run):
    summary = summarize(load_run(selected_run))
    assert summary["best_val_round"] == 2  # val 0.66 at rounds 2 and 6: the earliest
    assert summary["best_val_global_acc"] == pytest.approx(0.62)  # round 2's test accuracy
    # Not the best test round (0.70 at round 5, chosen on the test set), nor the last round (0.50).
    assert summary["best_global_acc"] == pytest.approx(0.70)
    assert summary["final_global_acc"] == pytest.approx(0.50)
    # The last 20% of 10 rounds are rounds 8 and 9: (0.60 + 0.50) / 2.
    assert summary["late_global_acc"] == pytest.approx(0.55)


def test_best_by_validation_skips_rounds_without_a_validation_score(tmp_path, write_jsonl):
    rows = _rounds(with_validation=True)
    rows[2]["val_acc"] = None  # e.g. a round whose validation failed: round 6 (also 0.66) is then the best
    write_jsonl(tmp_path / "run" / "metrics.jsonl", [HEADER, *rows])
    summary = summarize(load_run(tmp_path / "run"))
    assert summary["best_val_round"] == 6 and summary["best_val_global_acc"] == pytest.approx(0.45)


def test_runs_before_model_selection_report_no_best_by_validation(old_run):
    summary = summarize(load_run(old_run))
    assert summary["best_val_round"] is None and summary["best_val_global_acc"] is None
    assert summary["final_global_acc"] == pytest.approx(0.50) and summary["late_global_acc"] == pytest.approx(0.55)


def test_bwt_both_ways_final_and_mean_over_the_rounds_that_report_it(selected_run):
    summary = summarize(load_run(selected_run))
    assert summary["final_bwt"] == pytest.approx(-0.03)
    # Rounds 0 and 4 report no BwT: (-0.30 - 0.20 - 0.40 - 0.10 - 0.30 - 0.20 - 0.30 - 0.03) / 8.
    assert summary["mean_bwt"] == pytest.approx(-1.83 / 8)


def test_global_nfr_leaves_round_0_out_and_its_meaning_says_so(selected_run):
    summary = summarize(load_run(selected_run))
    assert summary["mean_global_nfr"] == pytest.approx(sum(NFRS[1:]) / 9)  # round 0's 0.0 is not averaged in
    meanings = {column.key: column for column in SUMMARY_COLUMNS}
    for word in ("accuracy", "Dice"):
        assert "round 0 is left out" in column_meaning(meanings["mean_global_nfr"], word)
    assert "round 0" in column_meaning(meanings["mean_bwt"], "accuracy")


def test_report_names_which_accuracy_is_which_and_prints_n_a_for_old_runs(selected_run, old_run, tmp_path):
    report = write_report([selected_run, old_run], tmp_path / "report").read_text()
    assert "**best-by-val**" in report and "**late**" in report and "**final**" in report
    for key in ("final_global_acc", "best_val_global_acc", "best_val_round", "late_global_acc", "final_bwt", "mean_bwt"):
        assert f"(`{key}`)" in report, key  # each column has its one-line meaning in the legend
    lines = report.splitlines()
    start = lines.index([line for line in lines if line.startswith("| run | algorithm | seed | rounds |")][0])
    column = [cell.strip() for cell in lines[start].split("|")].index("best-by-val global acc")
    cells = {line.split("|")[1].strip(): line.split("|")[column].strip() for line in lines[start + 2:start + 4]}
    assert cells == {"fedkper": "0.620", "fedavg": "n/a"}
    csv_lines = (tmp_path / "report" / "summary.csv").read_text().splitlines()
    header = csv_lines[0].split(",")
    assert csv_lines[2].split(",")[header.index("best_val_global_acc")] == ""  # fedavg: empty, not an error


def _results_tables():
    spec = importlib.util.spec_from_file_location("results_tables", ROOT / "benchmarks" / "results_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_results_tables_print_best_by_validation_and_bwt_both_ways(selected_run, old_run, tmp_path, capsys):
    write_report([selected_run, old_run], tmp_path / "report")
    assert _results_tables().main([str(tmp_path / "report"), "--algorithms", "fedkper,fedavg"]) == 0
    lines = capsys.readouterr().out.splitlines()
    row = {line.split("|")[1].strip(): [cell.strip() for cell in line.split("|")[2:-1]] for line in lines if line.startswith("| ")}
    assert row["global acc of the round best on validation (scored on test)"] == ["0.620", "n/a"]
    assert row["final BwT"] == ["-0.030", "-0.030"]
    assert row["mean BwT, over the rounds that report it"] == ["-0.229", "-0.229"]
    assert row["best_val_global_acc"] == ["0.620", "n/a"]  # per seed: one run each
    assert row["mean_bwt"] == ["-0.229", "-0.229"]


def test_seed_by_seed_counts_bwt_both_ways(selected_run, tmp_path, write_jsonl):
    # FedAvg here forgets less in its last round (-0.01 against -0.03) but more over the run: the two
    # counts must disagree, as on brain tumor MRI's and BCCD's committed runs they can.
    rows = _rounds(with_validation=False)
    for row in rows:
        row["bwt"] = None if row["bwt"] is None else row["bwt"] - 0.10
    rows[-1]["bwt"] = -0.01
    write_jsonl(tmp_path / "fedavg" / "metrics.jsonl", [{"run": {**HEADER["run"], "algorithm": "fedavg"}}, *rows])
    summaries = [summarize(load_run(path)) for path in (selected_run, tmp_path / "fedavg")]
    (against, by_metric), = paired_counts(summaries, "fedkper")
    assert against == "fedavg"
    assert (by_metric["final_bwt"].better, by_metric["final_bwt"].pairs) == (0, 1)
    assert (by_metric["mean_bwt"].better, by_metric["mean_bwt"].pairs) == (1, 1)


def test_results_tables_differences_mark_a_gap_under_0_005_as_a_tie(tmp_path, write_jsonl, capsys):
    for name, last in (("fedkper", 0.503), ("fedavg", 0.500)):
        rows = _rounds(with_validation=False)
        rows[-1]["global_acc"] = last
        write_jsonl(tmp_path / name / "metrics.jsonl", [{"run": {**HEADER["run"], "algorithm": name}}, *rows])
    write_report([tmp_path / "fedkper", tmp_path / "fedavg"], tmp_path / "report")
    _results_tables().main([str(tmp_path / "report"), "--algorithms", "fedkper,fedavg", "--differences"])
    lines = capsys.readouterr().out.splitlines()
    start = lines.index("fedkper minus each algorithm, seed by seed (seeds both ran; ~: closer than 0.005, a tie):")
    row = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in lines[start:] if line.startswith("| ")}
    assert row["final_global_acc"] == "+0.003~"  # counted a win by the paired table, a tie here
    assert row["best_val_global_acc"] == "-"


def test_the_reports_validation_field_is_the_schemas_round_field():
    from fedkper_monai import metrics_schema
    from fedkper_monai.report.metrics import VAL_ACC_FIELD

    assert VAL_ACC_FIELD in metrics_schema.names(metrics_schema.ROUND_FIELDS)
    assert "best_val_round" in metrics_schema.names(metrics_schema.ROUND_FIELDS)
