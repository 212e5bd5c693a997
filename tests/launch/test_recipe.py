"""FedKPerRecipe: FLARE 2.9's Recipe API over the one job spec (export fast; a SimEnv run slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedkper_monai.algorithm_registry import ALGORITHMS
from fedkper_monai.flare.jobspec import JobSettings, controller_args, job_configs, load_job, site_args
from fedkper_monai.launch.recipe import FedKPerRecipe


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_a_recipe_exports_exactly_the_jobspec_job_of_its_algorithm(algorithm, tmp_path):
    recipe = FedKPerRecipe(algorithm)
    recipe.export(str(tmp_path))
    exported = load_job(tmp_path / f"{algorithm}_medmnist")
    assert exported == job_configs(JobSettings(name=f"{algorithm}_medmnist", algorithm=algorithm))
    assert not (tmp_path / f"{algorithm}_medmnist" / "app" / "custom").exists(), "no package code is copied into a job"


def test_the_standard_job_folders_are_the_recipes_exports(tmp_path):
    FedKPerRecipe("fedkper").export(str(tmp_path))
    assert load_job(tmp_path / "fedkper_medmnist") == load_job("jobs/fedkper_medmnist")


def test_overrides_and_network_from_data_put_no_path_into_the_job(retina_federation, tmp_path):
    recipe = FedKPerRecipe("fedprox", name="prox_retina", network_from=retina_federation, num_rounds=3, seed=4)
    recipe.export(str(tmp_path))
    meta, server, client = load_job(tmp_path / "prox_retina")
    site = site_args(client)
    assert meta["name"] == "prox_retina" and controller_args(server)["num_rounds"] == 3 and site["seed"] == 4
    assert site["data_root"] is None and site["network"]["num_classes"] == 5 and site["algorithm"] == "fedprox"
    assert str(retina_federation) not in json.dumps([meta, server, client])


def test_an_unknown_algorithm_is_refused_by_name():
    with pytest.raises(Exception, match="nosuch"):
        FedKPerRecipe("nosuch")


@pytest.mark.slow
def test_a_recipe_in_simenv_reproduces_the_recorded_simulator_run(retina_federation, tmp_path):
    from nvflare.recipe import SimEnv
    from test_simulation import assert_matches_golden

    recipe = FedKPerRecipe("fedkper", data_root=retina_federation, num_rounds=2, sample_fraction=0.67, local_epochs=1)
    run = recipe.execute(SimEnv(num_clients=3, num_threads=3, workspace_root=str(tmp_path)))
    workspace = tmp_path / "fedkper_medmnist"
    assert run.get_result() == str(workspace)
    assert_matches_golden(workspace / "server" / "simulate_job" / "metrics.jsonl", "golden_fedkper_retina_3sites.jsonl")


@pytest.mark.slow
def test_a_recipe_in_pocenv_runs_on_separate_processes_and_reproduces_the_recorded_run(retina_federation, tmp_path, monkeypatch):
    # PocEnv provisions with our project file (its builder allows our components in every kit, the server on a
    # free port); the sites find their data through FEDKPER_DATA_ROOT, inherited by the POC processes.
    import psutil
    from nvflare.recipe import PocEnv
    from test_simulation import assert_matches_golden

    from fedkper_monai.launch.poc import free_port, project_yaml

    poc = tmp_path / "poc"
    monkeypatch.setenv("NVFLARE_POC_WORKSPACE", str(poc))
    monkeypatch.setenv("FEDKPER_DATA_ROOT", str(retina_federation))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # FLARE registers POC kits in ~/.nvflare
    (tmp_path / "home").mkdir()
    project = tmp_path / "project.yml"
    project.write_text(project_yaml(free_port(), ["site-1", "site-2", "site-3"]))
    recipe = FedKPerRecipe("fedkper", network_from=retina_federation, num_rounds=2, sample_fraction=0.67, local_epochs=1,
                           min_clients=3)  # the job starts once all three sites are connected
    env = PocEnv(num_clients=3, project_conf_path=str(project))
    try:
        run = recipe.execute(env)
        result = run.get_result(timeout=300, clean_up=False)
        assert run.get_status() == "FINISHED:COMPLETED"
        metrics = [json.loads(line) for line in (Path(result) / "workspace" / "metrics.jsonl").read_text().splitlines()]
    finally:
        env.stop(clean_up=True)
    assert_matches_golden(metrics, "golden_fedkper_retina_3sites.jsonl", header_ignored=("job_id",))

    def ours() -> list:
        return [p for p in psutil.process_iter(["cmdline"]) if str(poc) in " ".join(p.info.get("cmdline") or [])]

    # PocEnv.stop asks each process to shut down; they exit within seconds, not at once.
    _, left = psutil.wait_procs(ours(), timeout=60)
    for process in left:
        process.kill()
    assert not left, f"POC processes still running 60 s after PocEnv.stop: {[p.pid for p in left]}"
