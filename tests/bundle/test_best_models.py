"""`bundle export --best` and `evaluate --run RUN --best`: the models best on validation, and the refusals of a run
that has none (fast: a laid-out run)."""

from __future__ import annotations

import json

import torch
from bundle_helpers import RETINA_NETWORK

from fedkper_monai.cli import main
from fedkper_monai.training.networks import build_network


def _run(tmp_path, run_layout, retina_federation, best: bool):
    run = run_layout(tmp_path / "ws", retina_federation, RETINA_NETWORK)
    if best:
        torch.manual_seed(42)
        torch.save(build_network(**RETINA_NETWORK).state_dict(), run / "server" / "simulate_job" / "best_global_model.pt")
        torch.manual_seed(43)
        torch.save(build_network(**RETINA_NETWORK).state_dict(), run / "site-1" / "simulate_job" / "best_personalized_model.pt")
    return run


def test_a_run_without_validation_has_no_best_model_and_says_which_file(tmp_path, run_layout, retina_federation, capsys):
    run = _run(tmp_path, run_layout, retina_federation, best=False)
    assert main(["bundle", "export", "--run", str(run), "--global", "--best", "--out", str(tmp_path / "b")]) == 2
    error = capsys.readouterr().err
    assert "best_global_model.pt" in error and "global_val.json" in error
    assert main(["bundle", "export", "--run", str(run), "--site", "site-1", "--best", "--out", str(tmp_path / "b")]) == 2
    error = capsys.readouterr().err
    assert "best_personalized_model.pt" in error and "val_fraction" in error
    datalist = str(retina_federation / "site-1.json")
    assert main(["evaluate", "--run", str(run), "--best", "--datalist", datalist, "--out", str(tmp_path / "e"), "--no-progress"]) == 2
    assert "best_global_model.pt" in capsys.readouterr().err
    assert not (tmp_path / "b").exists() and not (tmp_path / "e").exists()


def test_best_exports_and_evaluates_the_best_file_not_the_latest(tmp_path, run_layout, retina_federation, capsys):
    run = _run(tmp_path, run_layout, retina_federation, best=True)
    server = run / "server" / "simulate_job"
    for which, weights in ((["--global"], server / "best_global_model.pt"),
                           (["--site", "site-1"], run / "site-1" / "simulate_job" / "best_personalized_model.pt")):
        out = tmp_path / f"bundle-{which[-1].strip('-')}"
        assert main(["bundle", "export", "--run", str(run), *which, "--best", "--out", str(out)]) == 0
        exported = torch.load(out / "models" / "model.pt", weights_only=True)
        expected = torch.load(weights, weights_only=True)
        assert all(torch.equal(exported[key], expected[key]) for key in expected)
        meta = json.loads((out / "configs" / "metadata.json").read_text())["fedkper"]
        assert meta["selection"] == "best on validation" and meta["weights_file"] == str(weights.absolute())
    latest = tmp_path / "latest"
    assert main(["bundle", "export", "--run", str(run), "--global", "--out", str(latest)]) == 0
    assert json.loads((latest / "configs" / "metadata.json").read_text())["fedkper"]["selection"] == "latest"
    datalist = str(retina_federation / "site-1.json")
    out = tmp_path / "eval"
    assert main(["evaluate", "--run", str(run), "--best", "--datalist", datalist, "--out", str(out), "--no-progress"]) == 0
    assert json.loads((out / "metrics.json").read_text())["model"].endswith("best_global_model.pt")
    out = tmp_path / "eval-site"
    assert main(["evaluate", "--run", str(run), "--best", "--site", "site-1", "--datalist", datalist, "--out", str(out), "--no-progress"]) == 0
    assert json.loads((out / "metrics.json").read_text())["model"].endswith("site-1/simulate_job/best_personalized_model.pt")


def test_best_takes_its_model_from_the_run_only(tmp_path, run_layout, retina_federation, capsys):
    run = _run(tmp_path, run_layout, retina_federation, best=True)
    datalist = str(retina_federation / "site-1.json")
    model = str(run / "server" / "simulate_job" / "global_model.pt")
    assert main(["evaluate", "--model", model, "--run", str(run), "--best", "--datalist", datalist, "--out", str(tmp_path / "a")]) == 2
    assert "--best" in capsys.readouterr().err
    assert main(["evaluate", "--best", "--datalist", datalist, "--out", str(tmp_path / "b")]) == 2
    assert main(["evaluate", "--datalist", datalist, "--out", str(tmp_path / "c")]) == 2
    assert "--model" in capsys.readouterr().err
