"""A run stopped with three sites continues on two in FLARE's real simulator (issue 24 item 3), on real
RetinaMNIST sites: the server is killed once round 0 is checkpointed, then the job is resubmitted with
site-3 not connected (``-n 2``) and continues from its last completed round, recording site-3 as missing.
Slow: two short simulations (95-150 s measured on 2 cores shared with other work, most of it each simulated
site's first task)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from fedkper_monai.flare.jobspec import controller_args, load_job, save_job_configs
from fedkper_monai.flare.resume import CHECKPOINT_FILE, FINISHED, RESUME_ROOT_ENV, SIMULATOR_JOB_ID, read_checkpoint, stash_simulator_workspace
from fedkper_monai.launch.overrides import JobOverrides
from fedkper_monai.launch.simulate import prepare_job, run_simulator, simulator_command
from fedkper_monai.report.metrics import summarize
from fedkper_monai.report.runs import load_run

pytestmark = pytest.mark.slow

_ROUNDS = 2
ALL = ["site-1", "site-2", "site-3"]


def _kill_after_first_checkpoint(job: Path, workspace: Path, timeout: float = 300) -> None:
    """Run the 3-site simulation and kill it (server and sites, SIGKILL: a crash) once a round is checkpointed."""
    command, environment = simulator_command(job, workspace, 3, 3, log_config="concise")
    checkpoint = workspace / "server" / SIMULATOR_JOB_ID / CHECKPOINT_FILE
    with open(workspace.parent / "stopped.log", "wb") as log:
        process = subprocess.Popen(command, env=environment, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + timeout
            while not checkpoint.is_file() and process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            assert process.poll() is None, "the simulation ended before it could be stopped"
            assert checkpoint.is_file(), "no round was checkpointed in time"
        finally:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=60)


def _leftovers(marker: str) -> list[str]:
    found = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        if process.info["pid"] != os.getpid() and marker in " ".join(process.info.get("cmdline") or []):
            found.append(f"{process.info['pid']}: {' '.join(process.info['cmdline'])[:120]}")
    return found


def test_a_run_stopped_with_three_sites_continues_on_the_two_present(retina_federation, tmp_path):
    workspace, stopped = tmp_path / "ws", tmp_path / "ws.stopped"
    overrides = JobOverrides(rounds=_ROUNDS, data_root=str(retina_federation), sample_fraction=1.0, local_epochs=1)
    job = prepare_job("jobs/fedkper_medmnist", workspace, overrides, tmp_path / "job")
    _kill_after_first_checkpoint(job, workspace)
    assert stash_simulator_workspace(workspace, stopped)
    completed = read_checkpoint(stopped / "server" / SIMULATOR_JOB_ID)["completed_round"]
    assert completed < _ROUNDS - 1, f"the stop came too late (round {completed} completed)"

    # Resubmitted with site-3 not connected: the simulator's two sites are site-1 and site-2.
    meta, server, client = load_job(job)
    controller_args(server)["resume"] = SIMULATOR_JOB_ID
    source = save_job_configs(tmp_path / "resubmitted" / meta["name"], meta, server, client)
    # As `fedkper-monai compare` does: the stash removed the workspace, so it is allowed again.
    resubmitted = prepare_job(source, workspace, JobOverrides(data_root=str(retina_federation)), tmp_path / "job-resubmitted")
    result = run_simulator(resubmitted, workspace, 2, 2, log_path=tmp_path / "continued.log",
                           extra_environment={RESUME_ROOT_ENV: str(stopped)})
    assert result.code == 0, (tmp_path / "continued.log").read_text()[-3000:]

    run_dir = workspace / "server" / SIMULATOR_JOB_ID
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    header = lines[0]["run"]
    assert header["resumed"] == [{"round": completed + 1, "job_id": SIMULATOR_JOB_ID, "missing_sites": ["site-3"]}]
    assert header["sites"] == ALL and header["num_sites"] == 3, "the header keeps the run's sites"
    rounds = [line for line in lines[1:] if "site" not in line]
    assert [line["round"] for line in rounds] == list(range(_ROUNDS)), "each round once, in order"
    for line in rounds[completed + 1:]:
        assert line["sampled_sites"] == ["site-1", "site-2"] and line["aggregated_sites"] == ["site-1", "site-2"]
    # No task went to site-3 after the stop: its lines are the stopped job's, and nobody timed out.
    assert max(line["round"] for line in lines[1:] if line.get("site") == "site-3") <= completed
    assert [line for line in lines if line.get("status") == "failed"] == []
    # The continued rounds' models were validated by the present sites (round `completed`'s by both).
    validators = {line["site"] for line in lines if line.get("task") == "validate" and line["round"] == completed}
    assert validators == {"site-1", "site-2"}
    state = read_checkpoint(run_dir)
    assert state["status"] == FINISHED and state["settings"]["sites"] == ALL
    said = (workspace / "server" / "log.txt").read_text(errors="replace")
    assert f"continuing the stopped job {SIMULATOR_JOB_ID} from round {completed + 1} without site-3 (not connected)" in said
    assert summarize(load_run(workspace))["rounds"] == _ROUNDS, "the report reads the run"
    assert _leftovers(str(workspace)) == []
