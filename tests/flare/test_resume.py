"""Continuing a stopped run (fedkper_monai.flare.resume): which run is continued, what is refused, and the
takeover of its checkpoint and metrics, on real files in a temporary workspace."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedkper_monai.errors import FedKPerError
from fedkper_monai.flare.resume import (
    ABORTED,
    CHECKPOINT_FILE,
    CONTINUED,
    FINISHED,
    RESUME_ROOT_ENV,
    RUNNING,
    Checkpointer,
    find_resumable,
    job_folder,
    read_checkpoint,
    stash_simulator_workspace,
    stopped_runs_root,
)
from fedkper_monai.metrics_schema import METRICS_FILE
from fedkper_monai.schedule import RoundRecord

SETTINGS = {"algorithm": "fedkper", "seed": 0, "num_rounds": 5, "sites": ["site-1", "site-2"]}


def _record(round_index: int) -> RoundRecord:
    return RoundRecord(round=round_index, started=0.0, sampled=["site-1"], weights={"site-1": 1.0}, dropped={},
                       bytes_sent=10, bytes_received=5, validate=True)


def _stopped_run(root: Path, job_id: str, completed: int, settings: dict = SETTINGS, job: str = "fedkper_medmnist") -> Checkpointer:
    """A job folder as a controller leaves it after ``completed`` + 1 rounds, plus a half-written next round."""
    folder = root / job_id
    folder.mkdir(parents=True)
    lines = [{"run": {"algorithm": "fedkper", "job": job, "job_id": job_id}}]
    lines += [{"round": r, "global_acc": 0.1 * r} for r in range(completed)]
    (folder / METRICS_FILE).write_text("".join(json.dumps(line) + "\n" for line in lines))
    checkpoints = Checkpointer(folder, job, job_id, settings)
    params = {"layer.weight": np.full((2, 2), float(completed), dtype=np.float32)}
    checkpoints.save(completed, params, _record(completed), {"book": {"baselines": {"site-1": 0.5}}, "evaluator": None, "slowest": 1.5})
    with open(folder / METRICS_FILE, "a") as handle:  # the round it was in the middle of
        handle.write(json.dumps({"round": completed, "site": "site-2", "task": "validate"}) + "\n")
    return checkpoints


def test_auto_takes_over_the_newest_stopped_run_of_the_same_job_and_settings(tmp_path):
    _stopped_run(tmp_path, "job-a", completed=1)
    _stopped_run(tmp_path, "job-b", completed=2)
    _stopped_run(tmp_path, "job-c", completed=3, settings={**SETTINGS, "seed": 1})  # another run
    _stopped_run(tmp_path, "job-d", completed=3, job="other_job")
    new = tmp_path / "job-new"
    new.mkdir()
    resumed = Checkpointer(new, "fedkper_medmnist", "job-new", SETTINGS).take_over(tmp_path, "auto")
    assert resumed is not None and resumed.next_round == 3 and resumed.chain == ["job-b"]
    assert float(resumed.params["layer.weight"][0, 0]) == 2.0
    assert resumed.previous.round == 2 and resumed.book == {"baselines": {"site-1": 0.5}} and resumed.slowest == 1.5
    lines = [json.loads(line) for line in (new / METRICS_FILE).read_text().splitlines()]
    # The stopped run's lines up to its checkpoint; the half-written round is left out and run again.
    assert [line.get("round") for line in lines[1:]] == [0, 1]
    assert lines[0]["run"]["resumed"] == [{"round": 3, "job_id": "job-new"}]
    assert read_checkpoint(tmp_path / "job-b")["status"] == CONTINUED
    assert read_checkpoint(new)["status"] == RUNNING and read_checkpoint(new)["chain"] == ["job-b"]
    # A continued run is never continued twice; the older stopped run still can be, by auto.
    again = tmp_path / "job-newer"
    again.mkdir()
    assert Checkpointer(again, "fedkper_medmnist", "job-newer", SETTINGS).take_over(tmp_path, "auto").chain[0] == "job-new"


def test_finished_aborted_and_never(tmp_path):
    _stopped_run(tmp_path, "job-a", completed=1).mark(FINISHED)
    _stopped_run(tmp_path, "job-b", completed=1).mark(ABORTED)
    assert find_resumable(tmp_path, "fedkper_medmnist", SETTINGS, "auto", "job-new") is None
    assert find_resumable(tmp_path, "fedkper_medmnist", SETTINGS, "never", "job-new") is None
    # An aborted run continues only when named; a finished one never.
    folder, state = find_resumable(tmp_path, "fedkper_medmnist", SETTINGS, "job-b", "job-new")
    assert folder.name == "job-b" and state["completed_round"] == 1
    with pytest.raises(FedKPerError, match="field 'status' is 'finished'"):
        find_resumable(tmp_path, "fedkper_medmnist", SETTINGS, "job-a", "job-new")


def test_a_named_run_with_other_settings_is_an_error_naming_the_field(tmp_path):
    _stopped_run(tmp_path, "job-a", completed=1)
    with pytest.raises(FedKPerError, match=r"settings changed, seed: 0 in the stopped run, 7 now"):
        find_resumable(tmp_path, "fedkper_medmnist", {**SETTINGS, "seed": 7}, "job-a", "job-new")
    with pytest.raises(FedKPerError, match="holds no fedkper_checkpoint.json"):
        find_resumable(tmp_path, "fedkper_medmnist", SETTINGS, "job-zz", "job-new")


@pytest.mark.parametrize("job_id", ["../server", "a/b", "..", "", "/etc", "x" * 200])
def test_a_job_id_is_a_folder_name_never_a_path(tmp_path, job_id):
    with pytest.raises(FedKPerError, match="not a job folder name"):
        job_folder(tmp_path, job_id)
    with pytest.raises(FedKPerError, match="not a job folder name"):
        find_resumable(tmp_path, "fedkper_medmnist", SETTINGS, job_id, "job-new")


def test_a_damaged_checkpoint_is_named_and_skipped_by_auto(tmp_path):
    _stopped_run(tmp_path, "job-a", completed=1)
    (tmp_path / "job-a" / CHECKPOINT_FILE).write_text('{"format": 1}')
    assert find_resumable(tmp_path, "fedkper_medmnist", SETTINGS, "auto", "job-new") is None
    with pytest.raises(FedKPerError, match="field 'status' is missing"):
        find_resumable(tmp_path, "fedkper_medmnist", SETTINGS, "job-a", "job-new")


def test_stopped_runs_root_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv(RESUME_ROOT_ENV, raising=False)
    assert stopped_runs_root(tmp_path / "ws" / "site-1") == tmp_path / "ws" / "site-1"
    monkeypatch.setenv(RESUME_ROOT_ENV, str(tmp_path / "stopped"))
    assert stopped_runs_root(tmp_path / "ws" / "site-1") == tmp_path / "stopped" / "site-1"


def test_stash_merges_what_each_stop_left(tmp_path):
    workspace, stopped = tmp_path / "workspace", tmp_path / "workspace.stopped"
    _stopped_run(workspace / "server", "simulate_job", completed=1)
    for site in ("site-1", "site-2"):
        (workspace / site / "simulate_job").mkdir(parents=True)
        (workspace / site / "simulate_job" / "fedkper_site_state.json").write_text('{"trackers": {}, "first": true}')
    assert stash_simulator_workspace(workspace, stopped)
    assert not workspace.exists()
    # A second stop in which site-2 had no task: its state from the first stop is kept.
    _stopped_run(workspace / "server", "simulate_job", completed=3)
    (workspace / "site-1" / "simulate_job").mkdir(parents=True)
    (workspace / "site-1" / "simulate_job" / "fedkper_site_state.json").write_text('{"trackers": {}, "second": true}')
    (workspace / "site-2" / "simulate_job").mkdir(parents=True)
    assert stash_simulator_workspace(workspace, stopped)
    assert "second" in (stopped / "site-1" / "simulate_job" / "fedkper_site_state.json").read_text()
    assert "first" in (stopped / "site-2" / "simulate_job" / "fedkper_site_state.json").read_text()
    assert read_checkpoint(stopped / "server" / "simulate_job")["completed_round"] == 3
    Checkpointer(stopped / "server" / "simulate_job", "fedkper_medmnist", "simulate_job", SETTINGS).mark(FINISHED)
    assert not stash_simulator_workspace(workspace, stopped), "a finished run is not continued"


def test_a_checkpoint_naming_another_file_or_damaged_fields_is_refused_by_name(tmp_path):
    checkpoints = _stopped_run(tmp_path, "job-a", completed=1)
    state = read_checkpoint(tmp_path / "job-a")
    for field, value, message in (("model", "../../etc/passwd", "field 'model'"), ("previous", {"round": 1}, "is damaged")):
        path = tmp_path / "job-a" / CHECKPOINT_FILE
        path.write_text(json.dumps({**state, field: value}))
        new = tmp_path / f"job-new-{field}"
        new.mkdir()
        with pytest.raises(FedKPerError, match=message):
            Checkpointer(new, "fedkper_medmnist", new.name, SETTINGS).take_over(tmp_path, "job-a")
        assert not (new / METRICS_FILE).exists(), "nothing is written from a refused checkpoint"
    assert checkpoints.run_dir == tmp_path / "job-a"


def test_each_checkpoint_counts_the_metrics_lines_written_so_far(tmp_path):
    """The count is kept from one checkpoint to the next (only the appended tail is read); a line still being
    written is not counted, and a file rewritten shorter is counted afresh."""
    folder = tmp_path / "job"
    folder.mkdir()
    checkpoints = Checkpointer(folder, "fedkper_medmnist", "job", SETTINGS)
    params = {"w": np.zeros(2, dtype=np.float32)}
    state = {"book": {}, "evaluator": None, "slowest": None}
    counts = []
    for text in ('{"run": {}}\n{"round": 0}\n', '{"round": 1}\n{"round": 2, "si', 'te": "site-1"}\n'):
        with open(folder / METRICS_FILE, "a") as handle:
            handle.write(text)
        checkpoints.save(len(counts), params, _record(len(counts)), state)
        counts.append(read_checkpoint(folder)["metrics_lines"])
    (folder / METRICS_FILE).write_text('{"run": {}}\n')
    checkpoints.save(3, params, _record(3), state)
    assert counts + [read_checkpoint(folder)["metrics_lines"]] == [2, 3, 4, 1]


def test_takeover_keeps_the_best_global_model_and_its_round(tmp_path):
    # The stopped run selected round 0 on validation: its checkpoint's book and its best_global_model.pt.
    checkpoints = _stopped_run(tmp_path, "job-a", completed=1)
    selection = {"round": 0, "score": 0.61}
    checkpoints.save(1, {"layer.weight": np.ones((2, 2), dtype=np.float32)}, _record(1),
                     {"book": {"baselines": {}, "selection": selection}, "evaluator": None, "slowest": 1.0})
    (tmp_path / "job-a" / "best_global_model.pt").write_bytes(b"the round-0 model")
    new = tmp_path / "job-new"
    new.mkdir()
    resumed = Checkpointer(new, "fedkper_medmnist", "job-new", SETTINGS).take_over(tmp_path, "auto")
    assert resumed.book["selection"] == selection
    assert (new / "best_global_model.pt").read_bytes() == b"the round-0 model"
    assert read_checkpoint(new)["book"]["selection"] == selection  # a second stop still has it


def test_takeover_without_a_best_model_leaves_none(tmp_path):
    _stopped_run(tmp_path, "job-a", completed=1)
    new = tmp_path / "job-new"
    new.mkdir()
    Checkpointer(new, "fedkper_medmnist", "job-new", SETTINGS).take_over(tmp_path, "auto")
    assert not (new / "best_global_model.pt").exists()
