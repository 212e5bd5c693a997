"""A resubmission with a site missing (issue 24 item 3): the run continues with the sites present and records
which rounds ran without whom; a site the stopped run never had is another federation. On real checkpoints
written by :class:`~fedkper_monai.flare.resume.Checkpointer`, with the real schedule and run book."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from fedkper_monai.errors import FedKPerError
from fedkper_monai.flare.metrics import RunBook
from fedkper_monai.flare.resume import CHECKPOINT_FILE, CONTINUED, Checkpointer, find_resumable, read_checkpoint
from fedkper_monai.metrics_schema import METRICS_FILE
from fedkper_monai.schedule import RoundRecord, RoundSchedule

JOB = "fedkper_medmnist"
ALL = ["site-1", "site-2", "site-3"]
SETTINGS = {"algorithm": "fedkper", "seed": 0, "num_rounds": 6, "sample_fraction": 1.0, "sites": ALL}


def _record(round_index: int, sampled: list[str] = ALL, validate: bool = True) -> RoundRecord:
    return RoundRecord(round=round_index, started=0.0, sampled=list(sampled), weights={site: 1 / len(sampled) for site in sampled},
                       dropped={}, bytes_sent=10, bytes_received=5, validate=validate)


def _save(checkpoints: Checkpointer, completed: int) -> None:
    """A checkpoint after round ``completed``, its round line appended first (as the controller does)."""
    with open(checkpoints.run_dir / METRICS_FILE, "a") as handle:
        handle.write(json.dumps({"round": completed, "global_acc": 0.1 * completed}) + "\n")
    params = {"layer.weight": np.full((2, 2), float(completed), dtype=np.float32)}
    checkpoints.save(completed, params, _record(completed), {"book": {"baselines": {"site-3": 0.5}}, "evaluator": None, "slowest": 1.0})


def _stopped_run(root: Path, job_id: str, completed: int) -> None:
    """A job folder as a 3-site controller leaves it after rounds 0..``completed``."""
    folder = root / job_id
    folder.mkdir(parents=True)
    (folder / METRICS_FILE).write_text(json.dumps({"run": {"algorithm": "fedkper", "job": JOB, "job_id": job_id, "sites": ALL}}) + "\n")
    checkpoints = Checkpointer(folder, JOB, job_id, SETTINGS)
    for round_index in range(completed + 1):
        _save(checkpoints, round_index)


def _continue(root: Path, job_id: str, sites: list[str], resume: str = "auto") -> tuple[Checkpointer, object]:
    """A new job of the run with ``sites`` connected, as the controller builds its Checkpointer."""
    folder = root / job_id
    folder.mkdir()
    checkpoints = Checkpointer(folder, JOB, job_id, {**SETTINGS, "sites": sites})
    return checkpoints, checkpoints.take_over(root, resume)


def _header(folder: Path) -> dict:
    return json.loads((folder / METRICS_FILE).read_text().splitlines()[0])["run"]


def test_a_subset_of_the_sites_continues_from_the_last_round_and_records_who_is_missing(tmp_path):
    _stopped_run(tmp_path, "job-a", completed=1)
    checkpoints, resumed = _continue(tmp_path, "job-b", ["site-1", "site-2"])
    assert resumed is not None and resumed.next_round == 2 and resumed.chain == ["job-a"]
    assert resumed.missing_sites == ["site-3"]
    assert resumed.describe() == "continuing the stopped job job-a from round 2 without site-3 (not connected)"
    assert float(resumed.params["layer.weight"][0, 0]) == 1.0
    header = _header(tmp_path / "job-b")
    assert header["resumed"] == [{"round": 2, "job_id": "job-b", "missing_sites": ["site-3"]}]
    assert header["sites"] == ALL, "the header keeps the run's sites"
    # The checkpoint keeps the run's full site list, so the missing site can come back.
    assert read_checkpoint(tmp_path / "job-b")["settings"]["sites"] == ALL and checkpoints.settings["sites"] == ALL
    assert read_checkpoint(tmp_path / "job-a")["status"] == CONTINUED


def test_a_named_stopped_job_continues_with_a_subset_too(tmp_path):
    _stopped_run(tmp_path, "job-a", completed=0)
    _, resumed = _continue(tmp_path, "job-b", ["site-2"], resume="job-a")
    assert resumed.next_round == 1 and resumed.missing_sites == ["site-1", "site-3"]
    assert resumed.describe().endswith("from round 1 without site-1, site-3 (not connected)")


def test_all_sites_present_records_no_missing_sites(tmp_path):
    _stopped_run(tmp_path, "job-a", completed=0)
    _, resumed = _continue(tmp_path, "job-b", ALL)
    assert resumed.missing_sites == [] and resumed.describe() == "continuing the stopped job job-a from round 1"
    assert _header(tmp_path / "job-b")["resumed"] == [{"round": 1, "job_id": "job-b"}], "omitted when none is missing"


def test_a_site_the_stopped_run_never_had_is_another_federation(tmp_path, caplog):
    _stopped_run(tmp_path, "job-a", completed=1)
    with caplog.at_level(logging.WARNING, logger="fedkper_monai.flare.resume"):
        assert find_resumable(tmp_path, JOB, {**SETTINGS, "sites": ["site-1", "site-4"]}, "auto", "job-b") is None
    assert "site-4 not among the stopped run's sites" in caplog.text
    checkpoint = tmp_path / "job-a" / CHECKPOINT_FILE
    with pytest.raises(FedKPerError, match=rf"^resume: {checkpoint}: settings changed, sites: .*site-4 not among the stopped run's sites"):
        find_resumable(tmp_path, JOB, {**SETTINGS, "sites": ["site-1", "site-2", "site-3", "site-4"]}, "job-a", "job-b")
    assert read_checkpoint(tmp_path / "job-a")["status"] == "running", "a refused run stays continuable"


def test_a_subset_with_another_setting_changed_is_still_refused_naming_that_setting(tmp_path):
    _stopped_run(tmp_path, "job-a", completed=1)
    with pytest.raises(FedKPerError, match=r"settings changed, seed: 0 in the stopped run, 7 now"):
        find_resumable(tmp_path, JOB, {**SETTINGS, "seed": 7, "sites": ["site-1"]}, "job-a", "job-b")
    assert find_resumable(tmp_path, JOB, {**SETTINGS, "seed": 7, "sites": ["site-1"]}, "auto", "job-b") is None


def test_a_later_job_with_the_site_back_continues_with_all_of_them(tmp_path):
    _stopped_run(tmp_path, "job-a", completed=0)
    without, _ = _continue(tmp_path, "job-b", ["site-1", "site-2"])
    _save(without, 1)  # job-b completes round 1 without site-3, then stops
    _, resumed = _continue(tmp_path, "job-c", ALL)
    assert resumed is not None and resumed.next_round == 2 and resumed.missing_sites == []
    # site-3's state lies in job-a's folder: the chain names it after job-b, whose folder site-3 never had.
    assert resumed.chain == ["job-b", "job-a"]
    assert _header(tmp_path / "job-c")["resumed"] == [
        {"round": 1, "job_id": "job-b", "missing_sites": ["site-3"]},
        {"round": 2, "job_id": "job-c"},
    ]
    rounds = [line["round"] for line in map(json.loads, (tmp_path / "job-c" / METRICS_FILE).read_text().splitlines()[1:])]
    assert rounds == [0, 1], "each completed round once"
    assert read_checkpoint(tmp_path / "job-c")["settings"]["sites"] == ALL


def test_a_second_job_still_without_the_site_continues_again(tmp_path):
    _stopped_run(tmp_path, "job-a", completed=0)
    without, _ = _continue(tmp_path, "job-b", ["site-1", "site-2"])
    _save(without, 1)
    _, resumed = _continue(tmp_path, "job-c", ["site-1", "site-2"])
    assert resumed.chain == ["job-b", "job-a"] and resumed.missing_sites == ["site-3"]
    assert [entry.get("missing_sites") for entry in _header(tmp_path / "job-c")["resumed"]] == [["site-3"], ["site-3"]]


def test_a_checkpoint_whose_settings_are_no_object_is_refused_by_name(tmp_path):
    _stopped_run(tmp_path, "job-a", completed=0)
    path = tmp_path / "job-a" / CHECKPOINT_FILE
    path.write_text(json.dumps({**json.loads(path.read_text()), "settings": {**SETTINGS, "sites": "site-1"}}))
    with pytest.raises(FedKPerError, match="field 'settings' is not an object with a list of 'sites'"):
        find_resumable(tmp_path, JOB, SETTINGS, "job-a", "job-b")
    assert find_resumable(tmp_path, JOB, SETTINGS, "auto", "job-b") is None


def test_the_continued_schedule_never_sends_a_task_to_a_missing_site():
    present = RoundSchedule(["site-1", "site-2"], num_rounds=6, sample_fraction=1.0, seed=0, validate_every=2)
    # The round the stopped run completed last trained all three sites; its model is not due for validation,
    # so its sampled sites would evaluate it (their BwT baselines): site-3 is not connected.
    taken_over = _record(2, sampled=ALL, validate=False)
    broadcast = present.broadcast(3, taken_over)
    assert broadcast.sampled == ["site-1", "site-2"] and broadcast.validators == []
    assert present.asked(taken_over) == ["site-1", "site-2"]
    last = _record(5, sampled=ALL, validate=False)
    assert present.final_broadcast(last, payload_bytes=100) == ["site-1", "site-2"] and last.bytes_sent == 10 + 200
    evaluations = present.evaluations(taken_over, {}, {"site-1": {"global_on_local_acc": 0.5}})
    assert list(evaluations) == ["site-1"]


def test_the_continued_schedule_samples_among_the_present_sites_with_the_same_seed():
    present = RoundSchedule(["site-1", "site-2", "site-4"], num_rounds=6, sample_fraction=0.5, seed=3)
    again = RoundSchedule(["site-4", "site-1", "site-2"], num_rounds=6, sample_fraction=0.5, seed=3)
    for round_index in range(6):
        sampled = present.broadcast(round_index, None).sampled
        assert set(sampled) <= {"site-1", "site-2", "site-4"} and sampled == again.broadcast(round_index, None).sampled


def _train(acc: float) -> dict:
    return {"personalized_acc": acc, "personalized_balanced_acc": acc, "nfr_personalized": 0.0, "score": 0.5}


def _evaluation(acc: float) -> dict:
    return {"global_on_local_acc": acc, "nfr_global_on_local": 0.0, "local_test_size": 10}


def test_the_run_book_copes_with_a_site_that_reported_before_and_never_again():
    """site-3 trained in the stopped job; the continued job runs without it. Its personalized model is unchanged
    since, so its latest figure stays in the mean and the worst (as for a site that failed a round); BwT
    averages only sites that evaluated the model, and site-3's baseline, of a model it never evaluated, is
    dropped rather than kept inexact."""
    stopped = RunBook()
    for site, acc in (("site-1", 0.6), ("site-2", 0.8), ("site-3", 0.3)):
        stopped.site_train_line(0, site, _train(acc), weight=1 / 3)
    stopped.close_round(_record(0), {site: _evaluation(0.5) for site in ALL}, seconds=1.0)
    book = RunBook()
    book.load_state_dict(json.loads(json.dumps(stopped.state_dict())))  # through the checkpoint's JSON
    # Round 1 (sampled all three in the stopped job, so site-3 is in its record) is closed by the continued job.
    for site, acc in (("site-1", 0.7), ("site-2", 0.9)):
        book.site_train_line(2, site, _train(acc), weight=0.5)
    line = book.close_round(_record(1), {"site-1": _evaluation(0.7), "site-2": _evaluation(0.4)}, seconds=1.0)[-1]
    assert line["mean_personalized_acc"] == pytest.approx((0.7 + 0.9 + 0.3) / 3)
    assert line["worst_personalized_acc"] == pytest.approx(0.3)
    assert line["bwt"] == pytest.approx(((0.7 - 0.5) + (0.4 - 0.5)) / 2) and line["bwt_sites"] == 2
    assert "site-3" not in book.baselines
    # Rounds later, site-3 is back: it counts for BwT again once it has a baseline of its own.
    line = book.close_round(_record(2, sampled=["site-3"]), {site: _evaluation(0.6) for site in ALL}, seconds=1.0)[-1]
    assert line["bwt_sites"] == 2 and book.baselines["site-3"] == 0.6
