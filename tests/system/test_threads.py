"""Fewer simulator threads than sites: FLARE's simulator then starts a fresh process for each site task, and
the site rebuilds itself from its run folder; the metrics must equal those of one process per site (slow).
How many site processes run at a time when the user does not say (fast)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedkper_monai.cli import main
from fedkper_monai.flare.jobspec import controller_args, load_job, save_job_configs, site_args
from fedkper_monai.launch import simulate
from fedkper_monai.launch.recipe import FedKPerRecipe
from fedkper_monai.launch.simulate import default_threads, find_metrics

_MACHINE_24_GB = 24105  # MiB, this machine; 50 site processes of ~0.6 GB do not fit it

def _job(algorithm: str, folder: Path) -> Path:
    """``jobs/fedkper_medmnist``, or a copy of ``jobs/fedavg_medmnist`` set to ``algorithm``."""
    if algorithm == "fedkper":
        return Path("jobs/fedkper_medmnist")
    meta, server, client = load_job("jobs/fedavg_medmnist")
    site_args(client).update(algorithm=algorithm, algorithm_args={"mu": 1.0} if algorithm == "ditto" else {})
    controller_args(server)["algorithm"] = algorithm
    return save_job_configs(folder / algorithm, meta, server, client)


def test_one_process_per_site_while_they_fit_else_the_sites_trained_per_round():
    assert default_threads(4, 0.5, memory_mib=_MACHINE_24_GB) == 4
    assert default_threads(20, 0.1, memory_mib=_MACHINE_24_GB) == 20  # the paper's 20-site setting, as before
    assert default_threads(50, 0.1, memory_mib=_MACHINE_24_GB) == 5  # the paper's 50-site setting
    assert default_threads(50, 0.1, memory_mib=128 * 1024) == 50
    assert default_threads(50, 0.02, memory_mib=_MACHINE_24_GB) == 2  # a round's trainers side by side
    assert default_threads(3, 0.1, memory_mib=1024) == 2


def test_a_recipe_in_simenv_runs_few_processes_when_one_per_site_would_not_fit(monkeypatch, capsys):
    # SimEnv turns an unset num_threads into num_clients; 50 processes would exhaust a 24 GB machine.
    monkeypatch.setattr(simulate, "machine_memory_mib", lambda: _MACHINE_24_GB)
    job = FedKPerRecipe("fedkper", sample_fraction=0.1)._job
    assert job._threads(50, 50) == 5
    assert "50 site processes would not fit" in capsys.readouterr().out
    assert job._threads(50, 8) == 8 and job._threads(20, 20) == 20 and job._threads(50, None) == 5
    assert capsys.readouterr().out == ""


# Ditto keeps a personal model across rounds: the other branch of the site round, and one more file to restore
# (FedKPer's branch is checked the same way, in process, by tests/training/test_site.py; one simulator pair
# here keeps CI's time: each pair takes about 5 minutes on two cores).
@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["ditto"])
def test_two_threads_for_three_sites_give_the_recorded_metrics_of_one_process_per_site(algorithm, retina_federation, golden_run_args, tmp_path, monkeypatch):
    """The golden run (3 sites, one process each) again with -t 2: FLARE then starts a process per site task."""
    from test_simulation import assert_matches_golden

    job = _job(algorithm, tmp_path / "job")
    # The OpenMP team size of the recorded run (simulate sizes it from -t otherwise: 2 cores // 3 threads -> 1):
    # torch's CPU kernels may sum in another order with another thread count.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    run = [*golden_run_args]
    run[run.index("-t") + 1] = "2"
    workspace = tmp_path / "t2"
    assert main(["simulate", str(job), "-w", str(workspace), "--data-root", str(retina_federation), *run]) == 0
    # The -t 2 run really rebuilt sites from disk between tasks (FLARE started a process per task).
    restored = [site for site in ("site-1", "site-2", "site-3")
                if "restored flip memories" in (workspace / site / "log.txt").read_text()]
    assert restored, "no site of the -t 2 run was rebuilt from its run folder"
    assert_matches_golden(find_metrics(workspace), f"golden_{algorithm}_retina_3sites.jsonl")
