"""A site's best personalized model on a validation part of its own training data (training.site_selection), on
real RetinaMNIST sites: opt-in, never the local test split, reported, and kept across a restart or a resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fedkper_monai.data import load_datalist
from fedkper_monai.errors import DataError
from fedkper_monai.training import build_network
from fedkper_monai.training.site import CHECKPOINT_FILE, STATE_FILE, Site, SiteConfig
from fedkper_monai.training.site_selection import split_validation
from fedkper_monai.training.site_state import BEST_MODEL_FILE


def _config(network: dict, **overrides) -> SiteConfig:
    return SiteConfig(**{"network": network, "local_epochs": 1, "batch_size": 32, **overrides})


def _weights(network: dict) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return build_network(**network).state_dict()


def test_a_site_with_val_fraction_keeps_its_best_model_and_reports_the_carve(retina_federation, tmp_path, retina_network):
    data = load_datalist(retina_federation / "site-1.json")
    site = Site("site-1", retina_federation / "site-1.json", _config(retina_network, val_fraction=0.2), state_dir=tmp_path)
    carved = round(0.2 * len(data.training))
    assert site.selection.size == carved and site.num_train == len(data.training) - carved
    assert site.local_test_size == len(data.test)  # the local test split is untouched
    _, validation = split_validation(data, 0.2, 0, "site-1")
    assert not {e["id"] for e in validation} & {e["id"] for e in data.test}
    assert {e["id"] for e in validation} <= {e["id"] for e in data.training}
    report = site.train_round(_weights(retina_network), round_index=0, version=0)
    assert report.metrics["validation_size"] == carved and report.num_samples == len(data.training) - carved
    assert (tmp_path / BEST_MODEL_FILE).exists() and (tmp_path / CHECKPOINT_FILE).exists()
    state = json.loads((tmp_path / STATE_FILE).read_text())
    assert state["selection"]["round"] == 0 and 0.0 <= state["selection"]["score"] <= 1.0
    # The best file is the model that scored that: evaluated again on the carve, the same score.
    best = torch.load(tmp_path / BEST_MODEL_FILE, weights_only=True)
    site.model.load_state_dict(best)
    assert site._evaluate(site.model, site.selection.loader).accuracy == pytest.approx(state["selection"]["score"])
    # A restarted site, and a resumed one (a new job folder adopting this one), continue the same selection.
    again = Site("site-1", retina_federation / "site-1.json", _config(retina_network, val_fraction=0.2), state_dir=tmp_path)
    assert (again.selection.best.round, again.selection.best.score) == (0, state["selection"]["score"])
    adopted = Site("site-1", retina_federation / "site-1.json", _config(retina_network, val_fraction=0.2), state_dir=tmp_path / "new")
    assert adopted.adopt_state(tmp_path)
    assert adopted.selection.best.round == 0 and (tmp_path / "new" / BEST_MODEL_FILE).exists()


def test_by_default_nothing_is_carved_and_no_best_model_is_written(retina_federation, tmp_path, retina_network):
    data = load_datalist(retina_federation / "site-1.json")
    site = Site("site-1", retina_federation / "site-1.json", _config(retina_network), state_dir=tmp_path)
    report = site.train_round(_weights(retina_network), round_index=0, version=0)
    assert site.num_train == len(data.training) and report.metrics["validation_size"] == 0
    assert not (tmp_path / BEST_MODEL_FILE).exists()


def _with_validation(federation: Path, tmp_path: Path, pick) -> Path:
    raw = json.loads((federation / "site-1.json").read_text())
    raw["validation"] = pick(raw)
    for split in ("training", "test", "validation"):  # absolute paths: the copy lives elsewhere
        for entry in raw[split]:
            entry["image"] = str((federation / entry["image"]).resolve())
    path = tmp_path / "site-1.json"
    path.write_text(json.dumps(raw))
    return path


def test_a_datalist_validation_list_selects_without_carving(retina_federation, tmp_path, retina_network):
    path = _with_validation(retina_federation, tmp_path, lambda raw: [raw["training"].pop() for _ in range(5)])
    site = Site("site-1", path, _config(retina_network, val_fraction=0.3), state_dir=tmp_path / "state")
    data = load_datalist(path)
    assert site.num_train == len(data.training) and site.selection.size == 5  # its list, not a carve


def test_a_validation_list_that_shares_samples_with_the_local_test_split_is_refused(retina_federation, tmp_path, retina_network):
    path = _with_validation(retina_federation, tmp_path, lambda raw: [dict(e, id=f"v-{i}") for i, e in enumerate(raw["test"][:3])])
    with pytest.raises(DataError, match="local test split") as error:
        Site("site-1", path, _config(retina_network))
    assert error.value.field == "validation" and "site-1.json" in str(error.value)


@pytest.mark.parametrize("value", [-0.1, 1.0, "0.2", True])
def test_a_bad_val_fraction_is_refused_naming_the_field(retina_network, value):
    with pytest.raises(DataError, match="val_fraction"):
        SiteConfig.from_mapping({"network": retina_network, "val_fraction": value}, source="job.json")
