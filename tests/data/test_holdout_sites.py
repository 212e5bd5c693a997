"""prepare --holdout-sites: whole sites that never train (the paper's unseen patient populations)."""

from __future__ import annotations

import json

from fedkper_monai.cli import main
from fedkper_monai.data import load_datalist


def _prepare(npz, out, *extra: str) -> int:
    return main(["prepare", "medmnist", "--npz", str(npz), "--sites", "5", "--alpha", "0.5", "--seed", "0",
                 "--out", str(out), "--no-progress", *extra])


def test_held_out_sites_never_train_and_keep_all_their_samples(retinamnist_npz, tmp_path):
    assert _prepare(retinamnist_npz, tmp_path / "plain") == 0
    assert _prepare(retinamnist_npz, tmp_path / "held", "--holdout-sites", "2") == 0
    held = tmp_path / "held"
    assert sorted(p.name for p in held.glob("site-*.json")) == ["site-1.json", "site-2.json", "site-3.json"]
    assert sorted(p.name for p in held.glob("holdout-*.json")) == ["holdout-1.json", "holdout-2.json"]
    summary = json.loads((held / "summary.json").read_text())
    assert summary["num_sites"] == 3 and sorted(summary["holdout_sites"]) == ["holdout-1", "holdout-2"]
    # The same partition as without holding out: each held-out site is one of the five, whole.
    plain_sites = {
        frozenset(e["id"] for e in load_datalist(path).training + load_datalist(path).test)
        for path in (tmp_path / "plain").glob("site-*.json")
    }
    for path in held.glob("holdout-*.json"):
        datalist = load_datalist(path)
        assert not datalist.training and datalist.test
        assert frozenset(e["id"] for e in datalist.test) in plain_sites
    for path in held.glob("site-*.json"):
        datalist = load_datalist(path)
        assert frozenset(e["id"] for e in datalist.training + datalist.test) in plain_sites


def test_holding_out_too_many_sites_is_refused(retinamnist_npz, tmp_path, capsys):
    assert _prepare(retinamnist_npz, tmp_path / "out", "--holdout-sites", "4") == 2
    assert "--holdout-sites" in capsys.readouterr().err and not (tmp_path / "out").exists()
