"""Loading and summarizing run metrics (fedkper_monai.report.metrics) on the hand-written fixtures.

Expected values are computed by hand from the fixture lines; the comments show the arithmetic.
"""

from __future__ import annotations

import json

import shutil
from pathlib import Path

import pytest

from fedkper_monai.errors import DataError
from fedkper_monai.report.metrics import (
    SUMMARY_COLUMNS,
    final_site_accuracies,
    mean_per_class_forgetting,
    sampling_mismatches,
    summarize,
    summarize_by_algorithm,
)
from fedkper_monai.report.runs import load_run, load_runs

FIXTURES = Path(__file__).parent / "fixtures"
FEDKPER = FIXTURES / "runs" / "fedkper"
FEDAVG = FIXTURES / "runs" / "fedavg"
FEDKPER_SEED1 = FIXTURES / "runs_seed1" / "fedkper"
ALL_RUNS = [FEDKPER, FEDAVG, FEDKPER_SEED1]

EXPECTED_SUMMARIES = {
    "fedkper": {
        "algorithm": "fedkper", "seed": 0, "rounds": 3,
        "final_global_acc": 0.60, "best_global_acc": 0.65,  # rounds: 0.55, 0.65, 0.60
        "final_mean_personalized_acc": 0.85, "final_worst_personalized_acc": 0.75,
        "final_balanced_personalized_acc": 0.83,
        "mean_global_nfr": (0.10 + 0.15) / 2,  # round 0 excluded
        "mean_local_nfr": (0.0 + 0.0 + 0.10 + 0.0 + 0.05 + 0.20) / 6,  # train lines only, not validate
        "final_bwt": -0.02, "mean_bwt": (0.05 - 0.02) / 2,  # round 0's bwt is null
        "seconds_per_round": (10 + 12 + 14) / 3, "bytes_sent_per_round": 2000.0,
        "single_site_round_fraction": 1 / 3,
    },
    "fedavg": {
        "algorithm": "fedavg", "seed": 0, "rounds": 3,
        "final_global_acc": 0.62, "best_global_acc": 0.62,
        "final_mean_personalized_acc": 0.55, "final_worst_personalized_acc": 0.45,
        "final_balanced_personalized_acc": 0.54,
        "mean_global_nfr": (0.20 + 0.30) / 2,
        "mean_local_nfr": (0.0 + 0.0 + 0.30 + 0.0 + 0.20 + 0.10) / 6,  # the dropped site-3 still counts
        "final_bwt": -0.10, "mean_bwt": (0.03 - 0.10) / 2,
        "seconds_per_round": 9.0, "bytes_sent_per_round": 2000.0,
        "single_site_round_fraction": 1 / 3,
    },
    "fedkper_seed1": {
        "algorithm": "fedkper", "seed": 1, "rounds": 3,
        "final_global_acc": 0.70, "best_global_acc": 0.70,
        "final_mean_personalized_acc": 0.75, "final_worst_personalized_acc": 0.70,
        "final_balanced_personalized_acc": 0.74,
        "mean_global_nfr": (0.20 + 0.05) / 2,
        "mean_local_nfr": (0.0 + 0.0 + 0.0 + 0.10 + 0.10 + 0.20) / 6,
        "final_bwt": 0.04, "mean_bwt": (0.00 + 0.04) / 2,
        "seconds_per_round": 13.0, "bytes_sent_per_round": 2000.0,
        "single_site_round_fraction": 0.0,
    },
}
RUN_DIRS = {"fedkper": FEDKPER, "fedavg": FEDAVG, "fedkper_seed1": FEDKPER_SEED1}


def test_load_run_finds_the_nested_flare_metrics_file():
    run = load_run(FEDKPER)
    assert run.metrics_path == FEDKPER / "server" / "simulate_job" / "app_server" / "metrics.jsonl"
    assert run.label == "fedkper" and run.algorithm == "fedkper" and run.seed == 0
    assert run.class_names == ["benign", "malignant"]
    assert len(run.site_rows) == 8  # 6 train + 2 validate
    assert [row["round"] for row in run.round_rows] == [0, 1, 2]


@pytest.mark.parametrize("name", sorted(EXPECTED_SUMMARIES))
def test_summary_equals_hand_computed_values(name):
    summary = summarize(load_run(RUN_DIRS[name]))
    expected = EXPECTED_SUMMARIES[name]
    for key, value in expected.items():
        assert summary[key] == pytest.approx(value, abs=1e-12), key
    assert set(summary) == {column.key for column in SUMMARY_COLUMNS}


def test_algorithm_falls_back_to_folder_name_and_missing_fields_are_none(tmp_path, write_jsonl):
    # No header, no global test set, a partial round line: nothing to crash on, nothing invented.
    path = write_jsonl(tmp_path / "my_algo" / "metrics.jsonl", [
        {"round": 0, "site": "site-1", "task": "train", "personalized_acc": 0.5},
        {"round": 0, "global_acc": None, "seconds": 3.0},
        {"round": 1, "global_acc": None, "seconds": 5.0, "brand_new_field": [1, 2]},
        {"event": "an unknown line kind"},
    ])
    run = load_run(path.parent)
    summary = summarize(run)
    assert run.algorithm == "my_algo" and run.seed is None
    assert summary["final_global_acc"] is None and summary["best_global_acc"] is None
    assert summary["mean_local_nfr"] is None and summary["single_site_round_fraction"] is None
    assert summary["seconds_per_round"] == pytest.approx(4.0)


def test_final_site_accuracies_use_the_latest_line_of_each_kind():
    sites = final_site_accuracies(load_run(FEDKPER))
    # site-2: personalized from its round-1 training; global-on-local from the round-2 validate line.
    assert sites == {"site-1": (0.85, 0.70), "site-2": (0.75, 0.70), "site-3": (0.95, 0.60)}


def test_per_class_forgetting_is_the_mean_over_rounds_after_the_first():
    assert mean_per_class_forgetting(load_run(FEDKPER)) == pytest.approx([(0.1 + 0.3) / 2, (0.2 + 0.0) / 2])
    assert mean_per_class_forgetting(load_run(FEDAVG)) == pytest.approx([(0.4 + 0.2) / 2, (0.0 + 0.4) / 2])


def test_mean_and_std_per_algorithm():
    summaries = [summarize(run) for run in load_runs(ALL_RUNS)]
    groups = {group["algorithm"]: group for group in summarize_by_algorithm(summaries)}
    fedkper = groups["fedkper"]
    assert fedkper["runs"] == 2 and fedkper["seeds"] == "0 1"
    assert fedkper["final_global_acc_mean"] == pytest.approx(0.65)  # (0.60 + 0.70) / 2
    assert fedkper["final_global_acc_std"] == pytest.approx(0.1 / 2 ** 0.5)  # sample std of two values
    assert fedkper["final_mean_personalized_acc_mean"] == pytest.approx(0.80)
    assert groups["fedavg"]["runs"] == 1 and groups["fedavg"]["final_global_acc_std"] is None


def test_runs_sharing_a_folder_name_get_their_seed_in_the_label():
    assert [run.label for run in load_runs(ALL_RUNS)] == ["fedkper@seed0", "fedavg", "fedkper@seed1"]


def test_same_run_given_twice_is_an_error():
    with pytest.raises(DataError, match="given twice"):
        load_runs([FEDAVG, FEDAVG / "metrics.jsonl"])


def test_malformed_json_names_file_and_line(tmp_path, write_jsonl):
    lines = (FEDAVG / "metrics.jsonl").read_text().splitlines()
    lines[4] = lines[4][:-10]  # truncate line 5 mid-object
    path = write_jsonl(tmp_path / "fedavg" / "metrics.jsonl", lines)
    with pytest.raises(DataError) as caught:
        load_run(path.parent)
    assert caught.value.path == str(path)
    assert caught.value.field == "line 5"
    assert str(path) in str(caught.value) and "line 5" in str(caught.value) and "malformed JSON" in str(caught.value)


@pytest.mark.parametrize("line, field", [
    ({"round": 0, "global_acc": "0.5"}, "line 2.global_acc"),
    ({"round": -1, "global_acc": 0.5}, "line 2.round"),
    ({"round": 0, "site": "site-1", "nfr_personalized": "0.1"}, "line 2.nfr_personalized"),
    ({"round": 0, "site": "site-1", "task": "validate", "local_test_size": True}, "line 2.local_test_size"),
    ({"round": 0, "global_per_class_forgetting": [0.0, "a"]}, "line 2.global_per_class_forgetting"),
    ({"round": 0, "single_site_round": 1}, "line 2.single_site_round"),
    ([1, 2, 3], "line 2"),
])
def test_wrong_types_name_the_line_and_field(tmp_path, line, field, write_jsonl):
    path = write_jsonl(tmp_path / "run" / "metrics.jsonl", [{"run": {"algorithm": "fedavg"}}, line])
    with pytest.raises(DataError) as caught:
        load_run(path.parent)
    assert caught.value.field == field and caught.value.path == str(path)


def test_missing_or_ambiguous_metrics_file_is_a_clear_error(tmp_path):
    empty = tmp_path / "empty_run"
    empty.mkdir()
    with pytest.raises(DataError, match="no metrics.jsonl found") as caught:
        load_run(empty)
    assert caught.value.path == str(empty)
    with pytest.raises(DataError, match="run folder not found"):
        load_run(tmp_path / "does_not_exist")
    two = tmp_path / "two"
    shutil.copytree(FEDAVG, two / "a")
    shutil.copytree(FEDAVG, two / "b")
    with pytest.raises(DataError, match=r"2 metrics.jsonl files found below it \(a/metrics.jsonl, b/metrics.jsonl\)"):
        load_run(two)


def test_sampling_mismatch_at_the_same_seed_is_reported(tmp_path, write_jsonl):
    runs = load_runs(ALL_RUNS)
    assert sampling_mismatches(runs) == []  # fedkper and fedavg at seed 0 sampled the same sites
    lines = (FEDAVG / "metrics.jsonl").read_text().splitlines()
    lines[7] = lines[7].replace('"sampled_sites": ["site-2", "site-3"]', '"sampled_sites": ["site-1", "site-3"]')
    write_jsonl(tmp_path / "fedavg" / "metrics.jsonl", lines)
    mismatches = sampling_mismatches(load_runs([FEDKPER, tmp_path / "fedavg"]))
    assert len(mismatches) == 1 and "seed 0, round 1" in mismatches[0]


def test_runs_over_other_sites_are_not_compared_for_sampling(tmp_path, write_jsonl):
    """The centralized run pools every site into one: its sampling is not a mismatch."""
    lines = (FEDAVG / "metrics.jsonl").read_text().splitlines()
    header = json.loads(lines[0])
    header["run"]["sites"] = ["site-1"]
    lines[0] = json.dumps(header)
    lines = [line.replace('"sampled_sites": ["site-2", "site-3"]', '"sampled_sites": ["site-1"]') for line in lines]
    write_jsonl(tmp_path / "centralized" / "metrics.jsonl", lines)
    assert sampling_mismatches(load_runs([FEDKPER, tmp_path / "centralized"])) == []


def test_compare_layout_is_labelled_by_algorithm_and_seed(tmp_path, write_jsonl):
    """``compare`` writes RUNS/<algorithm>/seed<k>/...: labels are the algorithm, plus the seed when repeated."""
    lines = (FEDAVG / "metrics.jsonl").read_text().splitlines()
    for seed in (0, 1):
        header = json.loads(lines[0])
        header["run"]["seed"] = seed
        write_jsonl(tmp_path / "fedkper" / f"seed{seed}" / "metrics.jsonl", [json.dumps(header), *lines[1:]])
    runs = load_runs([tmp_path / "fedkper" / "seed0", tmp_path / "fedkper" / "seed1"])
    assert [run.label for run in runs] == ["fedkper@seed0", "fedkper@seed1"]
    assert load_run(tmp_path / "fedkper" / "seed0").label == "fedkper"


def test_paper_metrics_balance_stability_and_positive_flips(tmp_path, write_jsonl):
    header = {"run": {"algorithm": "fedkper", "seed": 0, "num_rounds": 5, "sites": ["site-1"], "num_classes": 2}}
    accs = [0.1, 0.2, 0.5, 0.4, 0.6]
    rounds = [
        {"round": r, "global_acc": acc, "mean_personalized_acc": 0.8, "global_positive_flips": r, "global_negative_flips": 1,
         "global_unchanged": 8 - r}
        for r, acc in enumerate(accs)
    ]
    site = {"round": 0, "site": "site-1", "task": "train", "personalized_acc": 0.8, "nfr_personalized": 0.1,
            "positive_flips_personalized": 3, "negative_flips_personalized": 1, "unchanged_personalized": 6}
    write_jsonl(tmp_path / "run" / "metrics.jsonl", [header, site, *rounds])
    summary = summarize(load_run(tmp_path / "run"))
    assert summary["final_balance"] == pytest.approx((0.6 + 0.8) / 2)
    # The last 20% of 5 rounds is one change; at least two rounds are taken: |0.6 - 0.4|.
    assert summary["global_acc_stability"] == pytest.approx(0.2)
    # Rounds after the first: positive flips 1..4 of 9 evaluated samples each.
    assert summary["mean_global_pfr"] == pytest.approx((1 + 2 + 3 + 4) / 4 / 9)
    assert summary["mean_local_pfr"] == pytest.approx(0.3)
