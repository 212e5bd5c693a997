"""The site round without FLARE (:class:`fedkper_monai.training.site.Site`) on real RetinaMNIST sites.

These pin what a site computes and on which split: a mistake in any of them (training accuracy measured on
the test split, the score's histogram taken from the test split, a federated site that stops taking the
received weights, Ditto uploading the wrong model) changes a number these tests compare exactly.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fedkper_monai.algorithm import fedkper_score
from fedkper_monai.errors import DataError, FedKPerError
from fedkper_monai.training import build_network, evaluate
from fedkper_monai.training.site import CHECKPOINT_FILE, STATE_FILE, Site, SiteConfig


def _config(network: dict, algorithm: str = "fedkper", **overrides) -> SiteConfig:
    settings = {"network": network, "algorithm": algorithm, "local_epochs": 1, "batch_size": 32, **overrides}
    return SiteConfig(**settings)


def _weights(network: dict, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return build_network(**network).state_dict()


def _max_distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def test_a_round_reports_every_metric_and_keeps_its_state(retina_federation, tmp_path, retina_network):
    site = Site("site-1", retina_federation / "site-1.json", _config(retina_network), state_dir=tmp_path)
    received = _weights(retina_network, 0)
    before = site.evaluate_global(received, version=0)  # FLARE's pre-train validation
    report = site.train_round(received, round_index=0, version=0)
    assert report is not None
    assert before["global_on_local_acc"] == report.metrics["global_on_local_acc"]
    for key in ("personalized_acc", "personalized_balanced_acc", "nfr_personalized", "nfr_global_on_local"):
        assert 0.0 <= report.metrics[key] <= 1.0, key
    for role in ("personalized", "global_on_local"):
        counts = [report.metrics[f"{kind}_{role}"] for kind in ("negative_flips", "positive_flips", "unchanged")]
        assert sum(counts) == site.local_test_size, role
    assert set(report.upload) == set(received) and _max_distance(report.upload, received) > 0
    assert (tmp_path / CHECKPOINT_FILE).exists() and (tmp_path / STATE_FILE).exists()
    # Only scalars leave the site (docs/design.md, Rules the code keeps).
    assert all(isinstance(value, (int, float)) for value in report.metrics.values())


def test_the_initial_model_is_no_previous_evaluation(retina_federation, retina_network):
    site = Site("site-1", retina_federation / "site-1.json", _config(retina_network))
    initial = site.evaluate_global(_weights(retina_network, 0), version=0, initial=True)
    assert (initial["negative_flips_global_on_local"], initial["positive_flips_global_on_local"]) == (0, 0)
    assert initial["unchanged_global_on_local"] == site.local_test_size
    assert len(site.trackers["global_on_local"]) == 0, "the initial model's answers are not remembered"
    # The first trained model is compared with nothing: every right answer is a positive flip, none negative.
    trained = site.train_round(_weights(retina_network, 0), round_index=0, version=0, initial=True).upload
    first = site.evaluate_global(trained, version=1)
    right = round(first["global_on_local_acc"] * site.local_test_size)
    assert (first["negative_flips_global_on_local"], first["positive_flips_global_on_local"]) == (0, right)


def test_diagnostics_leave_the_site_only_when_it_opts_in(retina_federation, retina_network):
    shared = Site("site-1", retina_federation / "site-1.json", _config(retina_network, share_diagnostics=True))
    report = shared.train_round(_weights(retina_network, 0), round_index=0, version=0)
    assert {"train_acc", "train_loss", "lr", "strategy_beta"} <= set(report.metrics)
    assert report.metrics["train_acc"] == report.diagnostics["train_acc"]


def test_train_accuracy_and_score_come_from_the_training_split(retina_federation, tmp_path, retina_network):
    # A site whose local test split holds one class only: its histogram differs from the training split's.
    datalist = json.loads((retina_federation / "site-1.json").read_text())
    first_class = datalist["test"][0]["label"]
    datalist["test"] = [e for e in datalist["test"] if e["label"] == first_class]
    for entry in datalist["training"] + datalist["test"]:
        entry["image"] = str((retina_federation / entry["image"]).resolve())
    path = tmp_path / "site-1.json"
    path.write_text(json.dumps(datalist))
    site = Site("site-1", path, _config(retina_network))
    report = site.train_round(_weights(retina_network, 0), round_index=0, version=0)
    assert "train_acc" not in report.metrics, "train accuracy beside the score gives away the label entropy"

    on_training = evaluate(site.model, site.train_eval_loader, device=site.device, num_classes=5)
    on_test = evaluate(site.model, site.test_loader, device=site.device, num_classes=5)
    assert on_training.num_samples == len(datalist["training"])
    assert report.diagnostics["train_acc"] == on_training.accuracy
    assert report.diagnostics["train_acc"] != on_test.accuracy, "the test needs splits the model scores differently on"
    histogram = [sum(e["label"] == c for e in datalist["training"]) for c in range(5)]
    assert report.score == pytest.approx(fedkper_score(on_training.accuracy, histogram, 5), abs=1e-12)
    assert report.score != pytest.approx(fedkper_score(on_training.accuracy, [len(datalist["test"]) if c == first_class else 0 for c in range(5)], 5))
    assert report.num_samples == len(datalist["training"])


@pytest.mark.parametrize("algorithm", ["fedkper", "fedavg", "fedprox", "fedntd", "ditto"])
def test_a_federated_site_starts_every_round_from_the_received_weights(algorithm, retina_federation, tmp_path, retina_network):
    # With a vanishing learning rate the upload is the model the site started the round from.
    site = Site("site-1", retina_federation / "site-1.json", _config(retina_network, algorithm, lr=1e-12), state_dir=tmp_path)
    for round_index, seed in enumerate((0, 1)):
        received = _weights(retina_network, seed)
        report = site.train_round(received, round_index=round_index, version=round_index)
        assert _max_distance(report.upload, received) < 1e-6, f"round {round_index} did not start from the received weights"
        assert _max_distance(site.global_model.state_dict(), received) == 0.0, "the teacher / anchor is the received model"


def test_local_only_keeps_its_own_model(retina_federation, tmp_path, retina_network):
    site = Site("site-1", retina_federation / "site-1.json", _config(retina_network, "local", lr=1e-12))
    first = _weights(retina_network, 0)
    site.train_round(first, round_index=0, version=0)
    report = site.train_round(_weights(retina_network, 1), round_index=1, version=1)
    assert _max_distance(report.upload, first) < 1e-6, "local-only ignores the received weights after its first round"


def test_ditto_uploads_the_received_model_trained_with_cross_entropy(retina_federation, tmp_path, retina_network):
    received = _weights(retina_network, 0)
    ditto = Site("site-1", retina_federation / "site-1.json", _config(retina_network, "ditto", algorithm_args={"mu": 1.0}))
    fedavg = Site("site-1", retina_federation / "site-1.json", _config(retina_network, "fedavg"))
    ditto_report = ditto.train_round(received, round_index=0, version=0)
    fedavg_report = fedavg.train_round(received, round_index=0, version=0)
    # Same seed, same data order: Ditto's upload is exactly FedAvg's update of the received model.
    assert _max_distance(ditto_report.upload, fedavg_report.upload) < 1e-6
    assert _max_distance(ditto.model.state_dict(), ditto_report.upload) > 1e-4, "the personal model is trained apart"
    # Round 1: the personal model continues from its own weights, the upload starts again from the received ones.
    personal = {k: v.clone() for k, v in ditto.model.state_dict().items()}
    second = _weights(retina_network, 1)
    ditto.train_round(second, round_index=1, version=1)
    assert _max_distance(ditto.model.state_dict(), personal) < _max_distance(second, personal)


def test_flip_memory_and_personalized_model_survive_a_restart(retina_federation, tmp_path, retina_network):
    first = Site("site-1", retina_federation / "site-1.json", _config(retina_network), state_dir=tmp_path)
    update = first.train_round(_weights(retina_network, 0), round_index=0, version=0).upload
    first.evaluate_global(update, version=1)
    trained = first.train_round(_weights(retina_network, 1), round_index=1, version=2).metrics
    assert trained["nfr_global_on_local"] > 0, "a trained model, then a random one: some samples flip"
    state = json.loads((tmp_path / STATE_FILE).read_text())
    restarted = Site("site-1", retina_federation / "site-1.json", _config(retina_network, "local"), state_dir=tmp_path)
    assert restarted.restored
    for role, tracker in restarted.trackers.items():
        assert tracker.state_dict() == state["trackers"][role]
        assert len(tracker) == restarted.local_test_size
    # A restarted site reports the same global model's figures, not a re-count (which gives NFR 0).
    again = restarted.evaluate_global(_weights(retina_network, 1), version=2)
    assert again["nfr_global_on_local"] == trained["nfr_global_on_local"]
    saved = torch.load(tmp_path / CHECKPOINT_FILE, weights_only=True)
    for name, value in restarted.model.state_dict().items():
        assert torch.equal(value, saved[name])


def test_one_global_model_is_counted_once_in_the_flips(retina_federation, retina_network):
    site = Site("site-1", retina_federation / "site-1.json", _config(retina_network))
    trained = site.train_round(_weights(retina_network, 0), round_index=0, version=0).upload
    site.evaluate_global(trained, version=1)
    second = site.evaluate_global(_weights(retina_network, 1), version=2)
    assert second["nfr_global_on_local"] > 0
    # FLARE's pre-train validation and the train task evaluate the same version: same figures, no new flips.
    assert site.evaluate_global(_weights(retina_network, 1), version=2) == second
    assert site.train_round(_weights(retina_network, 1), round_index=1, version=2).metrics["nfr_global_on_local"] == second["nfr_global_on_local"]


def test_bad_site_inputs_are_clear_errors(retina_federation, tmp_path, retina_network):
    with pytest.raises(FedKPerError, match="site-9.json"):
        Site("site-9", tmp_path / "site-9.json", _config(retina_network))
    with pytest.raises(FedKPerError, match="num_classes 5 differs"):
        Site("site-1", retina_federation / "site-1.json", _config({**retina_network, "num_classes": 8}))
    datalist = json.loads((retina_federation / "site-1.json").read_text())
    datalist["test"] = []
    empty = retina_federation / "empty-test.json"
    empty.write_text(json.dumps(datalist))
    try:
        with pytest.raises(DataError, match="no local test samples"):
            Site("site-1", empty, _config(retina_network))
    finally:
        empty.unlink()
    with pytest.raises(FedKPerError, match="unknown setting.*epochs"):
        SiteConfig.from_mapping({"network": retina_network, "epochs": 3})


def test_a_round_runs_without_flare(retina_federation, tmp_path, retina_network):
    # The site round is FLARE-free: running one FedKPer round must not import nvflare.
    script = f"""
import sys, torch
from fedkper_monai.training import build_network
from fedkper_monai.training.site import Site, SiteConfig
network = {retina_network!r}
site = Site("site-1", {str(retina_federation / "site-1.json")!r}, SiteConfig(network=network, local_epochs=1, batch_size=32))
report = site.train_round(build_network(**network).state_dict(), round_index=0, version=0)
assert report.score >= 0
print(sorted(m for m in sys.modules if m.split(".")[0] == "nvflare"))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=Path(__file__).parents[2])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_site_defaults_are_the_papers_local_setting():
    # docs/design.md, The reference setting: SGD lr 0.01 (momentum 0.9, weight decay 1e-5), decay 0.99 per round, batch 12, 5 epochs.
    config = SiteConfig()
    assert (config.optimizer, config.lr, config.momentum, config.weight_decay, config.lr_gamma) == ("sgd", 0.01, 0.9, 1e-5, 0.99)
    assert (config.batch_size, config.local_epochs, config.algorithm, config.task) == (12, 5, "fedkper", "classification")


def test_a_datalists_channels_convert_the_sites_images(retina_federation, tmp_path, retina_network):
    # prepare --channels 1 records the conversion; the site's pipeline applies it (RetinaMNIST is RGB).
    datalist = json.loads((retina_federation / "site-1.json").read_text())
    datalist["channels"] = 1
    for entry in datalist["training"] + datalist["test"]:
        entry["image"] = str((retina_federation / entry["image"]).resolve())
    path = tmp_path / "site-1.json"
    path.write_text(json.dumps(datalist))
    gray = {**retina_network, "in_channels": 1}
    site = Site("site-1", path, _config(gray))
    assert next(iter(site.test_loader))["image"].shape[1] == 1
    assert site.train_round(_weights(gray, 0), round_index=0, version=0) is not None


def test_score_epsilon_sends_a_noisy_score_the_same_in_every_run(retina_federation, retina_network):
    exact = Site("site-1", retina_federation / "site-1.json", _config(retina_network))
    noisy = [Site("site-1", retina_federation / "site-1.json", _config(retina_network, score_epsilon=1.0)) for _ in range(2)]
    reports = [site.train_round(_weights(retina_network, 0), round_index=0, version=0) for site in (exact, *noisy)]
    assert reports[1].score == reports[2].score, "seeded by site, round and seed: reproducible"
    assert reports[1].score != reports[0].score and 0.0 <= reports[1].score <= 1.0
    assert reports[1].metrics["score"] == reports[1].score


@pytest.mark.parametrize("algorithm", ["fedkper", "ditto"])
def test_a_site_rebuilt_from_disk_each_round_trains_as_one_kept_in_memory(retina_federation, tmp_path, retina_network, algorithm):
    """FLARE's simulator with fewer threads than sites, and a restarted site, rebuild the site from its state
    folder: each round's shuffling depends only on (seed, round, site), so the results are the same."""
    args = {"mu": 1.0} if algorithm == "ditto" else {}
    kept = Site("site-1", retina_federation / "site-1.json", _config(retina_network, algorithm, algorithm_args=args), state_dir=tmp_path / "kept")
    received = _weights(retina_network, 0)
    for round_index in range(3):
        rebuilt = Site("site-1", retina_federation / "site-1.json", _config(retina_network, algorithm, algorithm_args=args), state_dir=tmp_path / "rebuilt")
        expected = kept.train_round(received, round_index=round_index, version=round_index)
        got = rebuilt.train_round(received, round_index=round_index, version=round_index)
        assert _max_distance(expected.upload, got.upload) < 1e-6, round_index
        assert _max_distance(kept.model.state_dict(), rebuilt.model.state_dict()) < 1e-6, round_index
        assert got.metrics == pytest.approx({**expected.metrics, "train_seconds": got.metrics["train_seconds"]})
        received = {name: value.clone() for name, value in expected.upload.items()}


@pytest.mark.parametrize("algorithm", ["fedkper", "ditto"])
def test_a_round_sent_again_is_trained_once(retina_federation, tmp_path, retina_network, algorithm):
    """A server that restarts sends its last unfinished round again: the site goes back to the state that
    round started from (own model, personalized flip memory), so its result is that of one attempt."""
    args = {"mu": 1.0} if algorithm == "ditto" else {}
    config = _config(retina_network, algorithm, algorithm_args=args)
    once = Site("site-1", retina_federation / "site-1.json", config, state_dir=tmp_path / "once")
    twice = Site("site-1", retina_federation / "site-1.json", config, state_dir=tmp_path / "twice")
    first = _weights(retina_network, 0)
    for site in (once, twice):
        site.train_round(first, round_index=0, version=0)
    second = _weights(retina_network, 1)
    twice.train_round(second, round_index=1, version=1)  # the attempt the server never heard back from
    restarted = Site("site-1", retina_federation / "site-1.json", config, state_dir=tmp_path / "twice")
    expected = once.train_round(second, round_index=1, version=1)
    again = restarted.train_round(second, round_index=1, version=1)
    assert _max_distance(expected.upload, again.upload) < 1e-6
    assert _max_distance(once.model.state_dict(), restarted.model.state_dict()) < 1e-6
    assert again.metrics == pytest.approx({**expected.metrics, "train_seconds": again.metrics["train_seconds"]})
    assert restarted.trackers["personalized"].state_dict() == once.trackers["personalized"].state_dict()


def test_a_resumed_job_adopts_the_stopped_jobs_site_state(retina_federation, tmp_path, retina_network):
    stopped = Site("site-1", retina_federation / "site-1.json", _config(retina_network, "local"), state_dir=tmp_path / "job-1")
    stopped.train_round(_weights(retina_network, 0), round_index=0, version=0)
    resumed = Site("site-1", retina_federation / "site-1.json", _config(retina_network, "local"), state_dir=tmp_path / "job-2")
    assert not resumed.restored and resumed.adopt_state(tmp_path / "job-1")
    assert _max_distance(resumed.model.state_dict(), stopped.model.state_dict()) == 0
    assert resumed.trackers["personalized"].state_dict() == stopped.trackers["personalized"].state_dict()
    assert not resumed.adopt_state(tmp_path / "job-1"), "a folder with state of its own is never overwritten"
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / STATE_FILE).write_text("{not json")
    with pytest.raises(FedKPerError, match="unreadable site state"):
        Site("site-1", retina_federation / "site-1.json", _config(retina_network), state_dir=tmp_path / "bad")


def test_a_site_that_dies_while_training_kept_its_evaluation_and_writes_its_state_twice_a_round(
        retina_federation, tmp_path, retina_network):
    """The global evaluation is written with the round's start state (one write), so a site killed during
    training comes back knowing that model was evaluated (its flips are not counted again); a whole round
    writes the state twice (start, end)."""
    config = _config(retina_network)
    site = Site("site-1", retina_federation / "site-1.json", config, state_dir=tmp_path)
    writes = []
    write = site.store.write
    site.store.write = lambda state: (writes.append(1), write(state))[1]
    received = _weights(retina_network, 0)

    def killed(*args, **kwargs):
        raise RuntimeError("killed while training")

    fit, site._fit = site._fit, killed
    with pytest.raises(RuntimeError, match="killed"):
        site.train_round(received, round_index=0, version=0)
    assert len(writes) == 1
    restarted = Site("site-1", retina_federation / "site-1.json", config, state_dir=tmp_path)
    assert restarted._global_eval["version"] == 0
    tracker_before = restarted.trackers["global_on_local"].state_dict()
    restarted.evaluate_global(received, version=0)
    assert restarted.trackers["global_on_local"].state_dict() == tracker_before  # not counted twice
    site._fit = fit
    writes.clear()
    assert site.train_round(_weights(retina_network, 1), round_index=1, version=1) is not None
    assert len(writes) == 2
