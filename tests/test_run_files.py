"""The one rule for finding a run's metrics.jsonl (fedkper_monai.run_files), on the layouts FLARE leaves."""

from __future__ import annotations

import pytest

from fedkper_monai.errors import DataError
from fedkper_monai.run_files import find_metrics_file, server_job_dir


def _metrics(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.jsonl").write_text('{"run": {"algorithm": "fedkper"}}\n')
    return folder / "metrics.jsonl"


def test_a_simulator_workspace_its_job_folder_and_the_file_itself(tmp_path):
    path = _metrics(tmp_path / "ws" / "server" / "simulate_job")
    for given in (tmp_path / "ws", tmp_path / "ws" / "server", tmp_path / "ws" / "server" / "simulate_job", path):
        assert find_metrics_file(given) == path
    assert server_job_dir(tmp_path / "ws") == path.parent


def test_a_compare_run_folder_nests_it_one_level_deeper(tmp_path):
    path = _metrics(tmp_path / "runs" / "fedkper" / "seed0" / "workspace" / "server" / "simulate_job")
    assert find_metrics_file(tmp_path / "runs" / "fedkper" / "seed0") == path


def test_a_job_folder_is_its_own_run_even_with_copies_below_it(tmp_path):
    path = _metrics(tmp_path / "job")
    _metrics(tmp_path / "job" / "downloaded" / "workspace")
    assert find_metrics_file(tmp_path / "job") == path


def test_several_jobs_below_a_folder_are_refused_naming_them(tmp_path):
    # A POC server workspace keeps one folder per job: the first or last would be a guess.
    _metrics(tmp_path / "server" / "job-a")
    _metrics(tmp_path / "server" / "job-b")
    with pytest.raises(DataError, match=r"2 metrics.jsonl files found below it \(server/job-a/metrics.jsonl, "
                                        r"server/job-b/metrics.jsonl\); pass each run's own folder") as caught:
        server_job_dir(tmp_path)
    assert caught.value.path == str(tmp_path)


def test_none_missing_folder_and_other_files_are_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no metrics.jsonl found in this run folder"):
        find_metrics_file(tmp_path / "empty")
    with pytest.raises(DataError, match="run folder not found"):
        find_metrics_file(tmp_path / "nowhere")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="expected a run folder or a metrics.jsonl file"):
        find_metrics_file(tmp_path / "notes.txt")
