"""The allow-list step, the committed job folders and the seeded site sampling."""

from __future__ import annotations

import importlib
import inspect
import json
from pathlib import Path

import pytest
from nvflare.apis.fl_exception import UnsafeComponentError
from nvflare.app_common.default_component_policy import DEFAULT_CLASS_ALLOW_LIST
from nvflare.app_common.widgets.component_path_authorizer import ComponentPathAuthorizer

from fedkper_monai.algorithm_registry import ALGORITHMS
from fedkper_monai.errors import DataError
from fedkper_monai.flare.jobspec import (
    STANDARD_JOBS,
    component_classes,
    controller_args,
    job_component,
    job_configs,
    load_job,
    main,
    site_args,
)
from fedkper_monai.flare.workspace import allow_components, allowed_classes
from fedkper_monai.schedule import sample_sites, validation_due

JOBS = Path(__file__).resolve().parents[2] / "jobs"


def _component_paths(config: dict) -> list[str]:
    found = []
    for section in ("workflows", "components"):
        found += [entry["path"] for entry in config.get(section, [])]
    found += [entry["executor"]["path"] for entry in config.get("executors", [])]
    return found


def _site(tmp_path: Path) -> Path:
    (tmp_path / "startup").mkdir(exist_ok=True)
    return tmp_path


def test_allow_writes_the_exact_job_classes_keeps_the_default_list_and_is_idempotent(tmp_path):
    path = allow_components(_site(tmp_path))
    allow_components(tmp_path)
    allow_list = json.loads(path.read_text())["class_allow_list"]
    ours = [entry for entry in allow_list if entry not in DEFAULT_CLASS_ALLOW_LIST]
    assert ours == [path for path in component_classes() if path.startswith("fedkper_monai.")]
    assert {"fedkper_monai.flare.aggregator.FedKPerAggregator", "fedkper_monai.flare.controller.FedKPerController",
            "fedkper_monai.flare.persistor.NetworkPersistor"} <= set(ours)
    assert "*" not in allow_list and not any(entry.endswith(".") for entry in ours)
    for path in ours:  # each entry is one class a job names: never a module, never a function
        module, name = path.rsplit(".", 1)
        assert inspect.isclass(getattr(importlib.import_module(module), name)), path
    assert set(DEFAULT_CLASS_ALLOW_LIST) <= set(allow_list)


def test_allow_starts_from_a_site_default_file_and_drops_the_old_package_prefix(tmp_path):
    local = tmp_path / "local"
    local.mkdir()
    (local / "resources.json.default").write_text(
        json.dumps({"format_version": 2, "class_allow_list": ["nvflare.app_common.", "fedkper_monai."]})
    )
    resources = json.loads(allow_components(tmp_path).read_text())
    assert resources["class_allow_list"] == ["nvflare.app_common.", *allowed_classes()]


def test_allow_refuses_a_disabled_list(tmp_path):
    local = tmp_path / "local"
    local.mkdir()
    (local / "resources.json").write_text(json.dumps({"class_allow_list": ["*"]}))
    with pytest.raises(DataError, match="class_allow_list"):
        allow_components(tmp_path)


def test_allow_refuses_what_is_not_a_site_folder_and_creates_nothing(tmp_path, capsys):
    from fedkper_monai.cli import main as cli_main

    typo = tmp_path / "typo" / "path"
    afile = tmp_path / "somefile.csv"
    afile.write_text("a,b\n")
    plain = tmp_path / "plain"
    plain.mkdir()
    expected = {
        typo: "no such folder; pass an existing FLARE site startup-kit folder or simulator workspace",
        afile: "is a file; pass a FLARE site startup-kit folder or simulator workspace",
        plain: "is not a FLARE site or workspace: it holds neither startup/ nor local/",
    }
    for target, message in expected.items():
        assert cli_main(["allow", str(target)]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
    assert not typo.exists() and not (plain / "local").exists() and afile.read_text() == "a,b\n"
    assert cli_main(["allow", str(_site(plain))]) == 0
    assert f"allowed {len(allowed_classes())} fedkper_monai component classes" in capsys.readouterr().out


def test_component_classes_are_read_from_the_generated_jobs():
    named = {path for job in STANDARD_JOBS.values() for config in job_configs(job)[1:] for path in _component_paths(config)}
    assert set(component_classes()) == named


@pytest.mark.parametrize("name", sorted(STANDARD_JOBS))
def test_committed_jobs_match_their_spec_and_pass_flare_authorization(name, tmp_path):
    committed = load_job(JOBS / name)
    assert committed == job_configs(STANDARD_JOBS[name]), f"jobs/{name} drifted: run python -m fedkper_monai.flare.jobspec jobs"
    assert not (JOBS / name / "app" / "custom").exists(), "jobs carry no custom code (no BYOC)"
    resources_file = allow_components(tmp_path, create=True)

    class SiteWorkspace:  # the two methods FLARE's authorizer asks of a site workspace
        def get_resources_file_path(self) -> str:
            return str(resources_file)

        def get_root_dir(self) -> str:
            return str(tmp_path)

    authorizer = ComponentPathAuthorizer()
    for config in committed[1:]:
        for path in _component_paths(config):
            # FLARE's own check: raises UnsafeComponentError for a class the site does not allow.
            authorizer.authorize_component_config({"path": path}, workspace=SiteWorkspace())
    with pytest.raises(UnsafeComponentError):
        authorizer.authorize_component_config({"path": "evil.module.Class"}, workspace=SiteWorkspace())


MEDMNIST_JOBS = sorted(name for name in STANDARD_JOBS if name.endswith("_medmnist"))


@pytest.mark.parametrize("name", MEDMNIST_JOBS)
def test_committed_paper_jobs_hold_the_paper_setting(name):
    """docs/design.md, The reference setting, read from the committed JSON: 10% of sites per round, 200 rounds, 5 local epochs,
    batch 12, SGD lr 0.01 decayed 0.99 per round, the reference CNN, the jobs' shared seed."""
    meta, server, client = load_job(JOBS / name)
    controller = controller_args(server)
    learner = site_args(client)
    assert (controller["sample_fraction"], controller["num_rounds"], controller["seed"]) == (0.1, 200, 0)
    assert (learner["local_epochs"], learner["batch_size"], learner["lr"], learner["lr_gamma"]) == (5, 12, 0.01, 0.99)
    assert learner["network"]["name"] == "reference_cnn" and learner["seed"] == controller["seed"]
    assert meta["min_clients"] == 2


@pytest.mark.parametrize("name", MEDMNIST_JOBS)
def test_committed_jobs_run_their_registry_algorithm(name):
    """Each <algorithm>_medmnist folder trains, weights and labels exactly what the registry says."""
    algorithm = ALGORITHMS[name.removesuffix("_medmnist")]
    meta, server, client = load_job(JOBS / name)
    learner = site_args(client)
    assert learner["algorithm"] == algorithm.strategy
    assert learner["algorithm_args"] == dict(algorithm.params)
    assert job_component(server, "aggregator")["args"]["weighting"] == algorithm.weighting
    assert controller_args(server)["algorithm"] == algorithm.name


def test_the_job_writer_prints_usage_for_help_and_writes_no_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0 and "usage:" in capsys.readouterr().out
    assert not any(tmp_path.iterdir())
    assert main([str(tmp_path / "out")]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(STANDARD_JOBS)


def test_sample_sites_is_seeded_per_round_and_independent_of_order():
    sites = [f"site-{i}" for i in range(1, 21)]
    first = sample_sites(sites, 0.1, seed=3, round_index=7)
    assert len(first) == 2 and first == sorted(first)
    assert sample_sites(list(reversed(sites)), 0.1, seed=3, round_index=7) == first
    rounds = {tuple(sample_sites(sites, 0.1, seed=3, round_index=r)) for r in range(30)}
    assert len(rounds) > 10, "different rounds sample different sites"
    other_seed = [sample_sites(sites, 0.1, seed=4, round_index=r) for r in range(30)]
    assert other_seed != [sample_sites(sites, 0.1, seed=3, round_index=r) for r in range(30)]
    assert sample_sites(sites[:3], 0.1, seed=0, round_index=0, minimum=1) != []
    with pytest.raises(ValueError):
        sample_sites(sites, 0.0, seed=0, round_index=0)


def test_validation_due_every_k_rounds_and_after_the_last():
    assert [r for r in range(4) if validation_due(r, 4, 1)] == [0, 1, 2, 3]
    assert [r for r in range(7) if validation_due(r, 7, 3)] == [2, 5, 6]
    assert [r for r in range(6) if validation_due(r, 6, 3)] == [2, 5]
    assert not any(validation_due(r, 5, 0) for r in range(5))


def test_export_sizes_the_network_from_a_datalist_and_bakes_no_data_path(retina_federation, tmp_path):
    from fedkper_monai.cli import main

    out = tmp_path / "job"
    assert main(["export", "jobs/fedkper_medmnist", "--out", str(out), "--network-from", str(retina_federation / "site-2.json"), "--rounds", "7", "--validate-every", "5"]) == 0
    meta, server, client = load_job(out)
    learner = site_args(client)
    assert learner["data_root"] is None and learner["demo"] is False
    assert learner["network"] == {"name": "reference_cnn", "spatial_dims": 2, "in_channels": 3, "num_classes": 5, "image_size": [28, 28]}
    assert controller_args(server)["num_rounds"] == 7
    assert controller_args(server)["validate_every"] == 5
    assert main(["export", "jobs/fedkper_medmnist", "--out", str(out)]) == 2, "an existing job folder is not overwritten silently"


def test_a_real_site_names_its_datalist_by_environment(monkeypatch, tmp_path):
    from fedkper_monai.flare.sitedata import site_datalist_path

    monkeypatch.delenv("FEDKPER_DATA_ROOT", raising=False)
    monkeypatch.setenv("FEDKPER_DATALIST", str(tmp_path / "hospital-a.json"))
    assert site_datalist_path("hospital-a", None) == tmp_path / "hospital-a.json"
    monkeypatch.delenv("FEDKPER_DATALIST")
    monkeypatch.setenv("FEDKPER_DATA_ROOT", str(tmp_path))
    assert site_datalist_path("site-2", None) == tmp_path / "site-2.json"


@pytest.mark.parametrize("save_name", ["../../outside.pt", "/etc/evil.pt", "sub/dir.pt", "..", ""])
def test_the_persistor_writes_only_inside_its_run_folder(save_name):
    from fedkper_monai.flare.persistor import NetworkPersistor

    with pytest.raises(ValueError, match="file name inside the run folder"):
        NetworkPersistor(network={"name": "reference_cnn"}, save_name=save_name)
