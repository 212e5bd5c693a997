"""``fedkper-monai compare``: the algorithm registry, centralized pooling and resuming, planned without the
simulator (a real comparison is tests/system/test_compare_resume.py)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from fedkper_monai.algorithm_registry import ALGORITHMS
from fedkper_monai.cli import build_parser, main
from fedkper_monai.data import load_datalist, write_datalist
from fedkper_monai.errors import DataError, FedKPerError
from fedkper_monai.experiment.compare import DEFAULT_ALGORITHMS, run_compare
from fedkper_monai.experiment.plan import DONE_FILE, algorithm_job, parse_algorithms, plan_runs
from fedkper_monai.experiment.pooled_data import pool_sites
from fedkper_monai.flare.jobspec import STANDARD_JOBS, controller_args, job_component, job_configs, site_args
from fedkper_monai.flare.sitedata import site_datalists


@pytest.fixture(scope="module")
def federation(tmp_path_factory, retinamnist_npz) -> Path:
    """3 sites from the real RetinaMNIST train split, Dirichlet(0.5), seed 0."""
    out = tmp_path_factory.mktemp("compare") / "retina3"
    argv = ["prepare", "medmnist", "--npz", str(retinamnist_npz), "--sites", "3", "--alpha", "0.5", "--seed", "0",
            "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    return out


# --- registry -------------------------------------------------------------------------------------------


def test_the_default_comparison_runs_registered_algorithms_and_help_lists_every_one_with_its_parameters():
    assert set(DEFAULT_ALGORITHMS) <= set(ALGORITHMS)
    compare = next(a for a in build_parser()._actions if a.dest == "command").choices["compare"]
    for algorithm in ALGORITHMS.values():
        assert f"{algorithm.name:<24} {algorithm.summary()}" in compare.epilog
    assert "mu=1)" in ALGORITHMS["ditto"].summary() and "(mu=1)" in compare.epilog


def test_parse_algorithms_keeps_order_drops_duplicates_and_names_valid_ones():
    assert [s.name for s in parse_algorithms(" fedavg,fedkper ,fedavg")] == ["fedavg", "fedkper"]
    with pytest.raises(FedKPerError) as error:
        parse_algorithms("fedkper,scaffold")
    assert "'scaffold'" in str(error.value) and "fedkper_weighting_only" in str(error.value)
    with pytest.raises(FedKPerError, match="no algorithm"):
        parse_algorithms(",")


def test_algorithm_jobs_equal_the_standard_jobs():
    """Derived from the FedKPer job, FedKPer/FedAvg/FedProx/FedNTD are exactly the committed jobs."""
    base = job_configs(STANDARD_JOBS["fedkper_medmnist"])
    for name in ("fedkper", "fedavg", "fedprox", "fedntd"):
        meta, server, client = algorithm_job(base, ALGORITHMS[name])
        standard_meta, standard_server, standard_client = job_configs(STANDARD_JOBS[f"{name}_medmnist"])
        assert (server, client) == (standard_server, standard_client), name
        assert meta == {**standard_meta, "name": name}
    assert base[0]["name"] == "fedkper_medmnist"  # the base is not modified


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_algorithm_job_sets_what_the_job_spec_would(name):
    """Changing a job folder's configs equals building the job from JobSettings for that algorithm."""
    settings = dataclasses.replace(STANDARD_JOBS["fedkper_medmnist"], name=name, algorithm=name)
    assert algorithm_job(job_configs(STANDARD_JOBS["fedkper_medmnist"]), ALGORITHMS[name]) == job_configs(settings)


def test_every_planned_run_trains_what_the_registry_says(federation, tmp_path):
    """What compare would run, read back from each planned job (not from the code that wrote it)."""
    runs = plan_runs(federation, list(ALGORITHMS.values()), tmp_path / "runs", rounds=1)
    assert [run.algorithm.name for run in runs] == list(ALGORITHMS)
    for run in runs:
        algorithm, job = ALGORITHMS[run.algorithm.name], run.settings["job"]
        learner = site_args(job["client"])
        weighting = job_component(job["server"], "aggregator")["args"]["weighting"]
        controller = controller_args(job["server"])
        assert (learner["algorithm"], learner["algorithm_args"], weighting) == (
            algorithm.strategy, dict(algorithm.params), algorithm.weighting), algorithm.name
        assert controller["algorithm"] == run.settings["algorithm"] == algorithm.name
        assert controller["sample_fraction"] == (1.0 if algorithm.pooled else 0.1)
        assert run.settings["n_clients"] == (1 if algorithm.pooled else 3)
        assert job["meta"]["min_clients"] == (1 if algorithm.pooled else 2)
    ditto = next(run for run in runs if run.algorithm.name == "ditto")
    assert site_args(ditto.settings["job"]["client"])["algorithm_args"] == {"mu": 1.0}


def test_ablation_and_centralized_jobs():
    base = job_configs(STANDARD_JOBS["fedkper_medmnist"])
    meta, server, client = algorithm_job(base, ALGORITHMS["fedkper_weighting_only"])
    learner = site_args(client)
    aggregator = next(c for c in server["components"] if c["id"] == "aggregator")["args"]
    assert (learner["algorithm"], aggregator["weighting"]) == ("fedavg", "score")
    assert controller_args(server)["algorithm"] == "fedkper_weighting_only"  # the label reports show
    meta, server, client = algorithm_job(base, ALGORITHMS["centralized"])
    assert meta["min_clients"] == 1 and controller_args(server)["algorithm"] == "centralized"


# --- data -----------------------------------------------------------------------------------------------


def test_site_datalists_are_in_site_order_and_gaps_are_errors(tmp_path):
    for k in (1, 2, 10):
        (tmp_path / f"site-{k}.json").write_text("{}")
    with pytest.raises(FedKPerError, match="missing site-3"):
        site_datalists(tmp_path)
    with pytest.raises(FedKPerError, match="no site-"):
        site_datalists(tmp_path / "empty")


def test_pool_sites_puts_every_training_and_test_entry_at_one_site(federation, tmp_path):
    sites = [load_datalist(path) for path in site_datalists(federation)]
    out = pool_sites(federation, tmp_path / "runs" / "centralized" / "data")
    assert sorted(p.name for p in out.glob("*.json")) == ["global_test.json", "global_val.json", "site-1.json"]
    pooled = load_datalist(out / "site-1.json")
    for key in ("training", "test"):
        expected = [(e["id"], e["image"], e["label"]) for s in sites for e in s.entries(key)]
        assert [(e["id"], e["image"], e["label"]) for e in pooled.entries(key)] == expected
    assert len(pooled.training) == sum(len(s.training) for s in sites) > 0
    assert (pooled.num_classes, pooled.image_size) == (sites[0].num_classes, sites[0].image_size)
    for name in ("global_test.json", "global_val.json"):
        original, copied = load_datalist(federation / name), load_datalist(out / name)
        assert copied.test == original.test and copied.validation == original.validation
        # The copies point at the images where they are: absolute paths in the file itself.
        assert all(Path(e["image"]).is_absolute() for e in json.loads((out / name).read_text())["test"])


def test_pool_sites_keeps_the_held_out_sites_so_the_bound_is_scored_on_them(retinamnist_npz, tmp_path):
    data = tmp_path / "data"
    assert main(["prepare", "medmnist", "--npz", str(retinamnist_npz), "--sites", "4", "--holdout-sites", "1",
                 "--alpha", "0.5", "--seed", "0", "--out", str(data), "--no-progress"]) == 0
    out = pool_sites(data, tmp_path / "pooled")
    assert sorted(p.name for p in out.glob("*.json")) == [
        "global_test.json", "global_val.json", "holdout-1.json", "site-1.json"]
    held_out, copied = load_datalist(data / "holdout-1.json"), load_datalist(out / "holdout-1.json")
    assert (copied.training, copied.test) == (held_out.training, held_out.test) and len(copied.test) > 0
    # Never trained: no held-out sample is in the pooled site.
    pooled_ids = {e["id"] for e in load_datalist(out / "site-1.json").training}
    assert pooled_ids.isdisjoint(e["id"] for e in held_out.test)


def test_pool_sites_refuses_sites_that_share_a_sample(federation, tmp_path):
    first = load_datalist(federation / "site-1.json")
    write_datalist(tmp_path / "site-1.json", first)
    write_datalist(tmp_path / "site-2.json", first)  # the same samples again
    with pytest.raises(DataError, match="also in site-1.json") as error:
        pool_sites(tmp_path, tmp_path / "pooled")
    assert error.value.field == "training[0].id"
    assert not (tmp_path / "pooled").exists()


# --- resuming (planning only: no simulator) ---------------------------------------------------------------


def _fake_finished(run, rounds: int) -> Path:
    """What a finished run leaves: a metrics file with all round lines and done.json with its settings."""
    metrics = run.workspace / "server" / "simulate_job" / "metrics.jsonl"
    metrics.parent.mkdir(parents=True)
    lines = [{"run": {"algorithm": run.algorithm.name}}] + [
        {"round": r, "global_acc": 0.5, "mean_personalized_acc": 0.6, "sampled_sites": ["site-1"]}
        for r in range(rounds)
    ]
    metrics.write_text("".join(json.dumps(line) + "\n" for line in lines))
    (run.folder / DONE_FILE).write_text(json.dumps({"settings": run.settings}))
    return metrics


def test_finished_runs_are_skipped_changed_ones_refused_unfinished_ones_redone(federation, tmp_path, capsys):
    out = tmp_path / "runs"
    algorithms = parse_algorithms("fedkper,fedavg")
    plan = dict(n_clients=3, rounds=2, local_epochs=1, sample_fraction=0.67)
    runs = plan_runs(federation, algorithms, out, **plan)
    assert [(r.algorithm.name, r.status, r.rounds) for r in runs] == [("fedkper", "new", 2), ("fedavg", "new", 2)]
    assert runs[0].settings["data"] == runs[1].settings["data"]  # one partition for both
    for run in runs:
        run.folder.mkdir(parents=True)
        _fake_finished(run, 2)
    # Nothing to run: run_compare must not touch a finished run (a real run would replace these files).
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    runs_again, failed = run_compare(federation, algorithms, out, **plan)
    assert [r.status for r in runs_again] == ["done", "done"] and failed == []
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert capsys.readouterr().out.count("finished earlier, skipped") == 2

    # Other settings for a finished run: an error before anything runs, unless --overwrite.
    with pytest.raises(FedKPerError, match=r"job.server.workflows\[0\].args.num_rounds: 2 -> 3"):
        plan_runs(federation, algorithms, out, **{**plan, "rounds": 3})
    assert [r.status for r in plan_runs(federation, algorithms, out, **{**plan, "rounds": 3}, overwrite=True)] == [
        "overwrite", "overwrite"]
    # Marked done but a round line is missing, or no marker at all: unfinished, redone from scratch.
    metrics = runs[0].workspace / "server" / "simulate_job" / "metrics.jsonl"
    metrics.write_text("".join(metrics.read_text().splitlines(keepends=True)[:-1]))
    (runs[1].folder / DONE_FILE).unlink()
    assert [r.status for r in plan_runs(federation, algorithms, out, **plan)] == ["redo", "redo"]


def test_a_changed_held_out_site_is_refused_and_runs_recorded_before_that_check_still_count(retinamnist_npz, tmp_path):
    data, out = tmp_path / "data", tmp_path / "runs"
    assert main(["prepare", "medmnist", "--npz", str(retinamnist_npz), "--sites", "4", "--holdout-sites", "1",
                 "--alpha", "0.5", "--seed", "0", "--out", str(data), "--no-progress"]) == 0
    plan = dict(n_clients=3, rounds=2, local_epochs=1, sample_fraction=0.67)
    (run,) = plan_runs(data, parse_algorithms("fedavg"), out, **plan)
    assert list(run.settings["held_out"]) == ["holdout-1.json"]
    run.folder.mkdir(parents=True)
    _fake_finished(run, 2)
    # A run finished before settings named the held-out sites (version 1) is still finished with them.
    recorded = {key: value for key, value in run.settings.items() if key != "held_out"}
    (run.folder / DONE_FILE).write_text(json.dumps({"settings": {**recorded, "version": 1}}))
    assert [r.status for r in plan_runs(data, parse_algorithms("fedavg"), out, **plan)] == ["done"]
    (run.folder / DONE_FILE).write_text(json.dumps({"settings": run.settings}))
    # The held-out site's datalist edited after the run: its unseen-site figures are of other data.
    held_out = json.loads((data / "holdout-1.json").read_text())
    held_out["test"] = held_out["test"][1:]
    (data / "holdout-1.json").write_text(json.dumps(held_out))
    with pytest.raises(FedKPerError, match=r"runs started or finished in --out .*\n.*held_out\.holdout-1\.json: "):
        plan_runs(data, parse_algorithms("fedavg"), out, **plan)


def test_a_folder_that_is_not_a_run_is_never_touched(federation, tmp_path):
    mine = tmp_path / "runs" / "fedavg" / "notes.txt"
    mine.parent.mkdir(parents=True)
    mine.write_text("keep me")
    with pytest.raises(FedKPerError, match="not a compare run folder"):
        plan_runs(federation, parse_algorithms("fedavg"), tmp_path / "runs")
    assert mine.read_text() == "keep me"


def test_cli_errors_name_the_problem(federation, tmp_path, capsys):
    assert main(["compare", "--data-root", str(federation), "--algorithms", "fedavg,nope", "--out", str(tmp_path)]) == 2
    assert "unknown algorithm(s) 'nope'" in capsys.readouterr().err
    assert main(["compare", "--data-root", str(federation), "-n", "4", "--out", str(tmp_path)]) == 2
    assert f"-n: 4 sites, but {federation} holds datalists for 3 (site-1 .. site-3): use -n 3" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


# --- real runs ------------------------------------------------------------------------------------------
# A real comparison (fedkper beside ditto on the same partition and site sampling, the rerun that skips both,
# the report of both) is tests/system/test_compare_resume.py: its uninterrupted runs are the reference of the
# stopped one, which saves CI two FLARE simulations.


def test_run_settings_leave_out_the_machines_data_path_wherever_the_job_names_it():
    # A finished run stays finished when its folder moves to another clone or machine (benchmarks/runs is in git).
    from fedkper_monai.experiment.plan import _normalized

    server = {"components": [{"id": "global_evaluator", "args": {"data_root": "/here/data"}}]}
    client = {"executors": [{"executor": {"path": "x", "args": {"data_root": "/here/data", "seed": 0}}}]}
    normalized = _normalized(({}, server, client))
    assert normalized["server"]["components"][0]["args"]["data_root"] == "<data_root>"
    assert normalized["client"]["executors"][0]["executor"]["args"] == {"data_root": "<data_root>", "seed": 0}
