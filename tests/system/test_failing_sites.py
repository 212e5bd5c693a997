"""No single site stops the federation (issue 11 item 3), in FLARE's simulator on real RetinaMNIST sites.

site-3's datalist points at a missing image (its train task fails every round); site-2's process is
killed with SIGKILL once round 0 is aggregated (it never answers again). Both rounds finish with the
others, and metrics.jsonl records each failure with its reason.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest

from fedkper_monai.cli import main
from fedkper_monai.flare.jobspec import controller_args, load_job, save_job_configs
from fedkper_monai.report.metrics import summarize
from fedkper_monai.report.runs import load_run

pytestmark = pytest.mark.slow


def _break_one_image(data_root: Path, site: str) -> None:
    datalist_path = data_root / f"{site}.json"
    datalist = json.loads(datalist_path.read_text())
    datalist["training"][0]["image"] = "images/does-not-exist.png"
    datalist_path.write_text(json.dumps(datalist))


def _worker_pids(workspace: Path, site: str) -> list[int]:
    """The simulator worker processes running ``site`` for this test's workspace."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [word.decode(errors="replace") for word in command]
        if "nvflare.private.fed.app.simulator.simulator_worker" in words and site in words and any(str(workspace) in w for w in words):
            found.append(int(entry.name))
    return found


def _kill_when_round_zero_is_aggregated(workspace: Path, site: str, killed: list[int], stop: threading.Event) -> None:
    while not stop.is_set():
        metrics = list(workspace.rglob("metrics.jsonl"))
        # Round 0's train lines are written when it is aggregated, as round 1's train task goes out.
        if metrics and any('"round": 0' in line and '"task": "train"' in line for line in metrics[0].read_text().splitlines()):
            for pid in _worker_pids(workspace, site):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            if killed:
                return
        time.sleep(0.2)


def test_a_broken_site_and_a_killed_site_do_not_stop_the_run(retina_federation, tmp_path, capsys):
    data_root = tmp_path / "data"
    shutil.copytree(retina_federation, data_root)
    _break_one_image(data_root, "site-3")
    meta, server, client = load_job("jobs/fedkper_medmnist")
    # A short timeout once the sites have answered: the killed site costs ~10 s per broadcast (its round-1
    # train and the final validate), not minutes. The timeout is sized from the slowest answer so far, round
    # 0's (which includes the sites' start-up): half of it, at least 10 s, still leaves site-1 several times
    # the few seconds its round-1 tasks take, while factor 2 made each wait twice that start-up.
    controller_args(server).update({"min_task_timeout": 10, "timeout_factor": 0.5})
    job = save_job_configs(tmp_path / "job", meta, server, client)
    workspace = tmp_path / "ws"
    killed: list[int] = []
    stop = threading.Event()
    killer = threading.Thread(target=_kill_when_round_zero_is_aggregated, args=(workspace, "site-2", killed, stop), daemon=True)
    killer.start()
    try:
        main(["simulate", str(job), "-w", str(workspace), "--data-root", str(data_root), "-n", "3", "-t", "3",
              "--rounds", "2", "--sample-fraction", "1.0", "--local-epochs", "1"])
    finally:
        stop.set()
    assert killed, "site-2's worker process was never found to kill"
    metrics = next(workspace.rglob("metrics.jsonl"))
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    rounds = [r for r in records if "round" in r and "site" not in r]
    assert [r["round"] for r in rounds] == [0, 1], "both rounds finish with the remaining sites"
    failed = {(r["round"], r["site"], r["task"]): r["reason"] for r in records if r.get("status") == "failed"}
    assert {key for key in failed if key[1] == "site-3" and key[2] == "train"} == {(0, "site-3", "train"), (1, "site-3", "train")}
    assert "EXECUTION_EXCEPTION" in failed[(0, "site-3", "train")]
    assert failed[(1, "site-2", "train")].startswith("no answer within the task timeout")
    assert failed[(1, "site-2", "validate")].startswith("no answer within the task timeout")  # the final broadcast
    assert rounds[0]["aggregated_sites"] and "site-3" in rounds[0]["dropped_sites"]
    assert sorted(rounds[1]["aggregated_sites"]) == ["site-1"]
    assert set(rounds[1]["dropped_sites"]) == {"site-2", "site-3"}
    # the report still loads the run
    assert summarize(load_run(workspace))["rounds"] == 2
    # simulate's final table is followed by each failed site and why.
    printed = capsys.readouterr().out
    assert "failed: site-3 in round 0 (train): " in printed and "failed: site-2 in round 1 (train): no answer" in printed
