"""What a curious server learns of a site's class histogram from what the site sends (README: Real sites).

The README once said a class histogram never leaves a site. These tests measure, on real RetinaMNIST sites
and the real site round, that two sent things give it away: the update's classifier-bias change ranks with
the site's training histogram, and the initial (never-trained) model predicts one class, so its
``global_on_local_acc`` is exactly that class's share of the local test split. They pass as long as the
leak is there; the README's table of sent fields states it. Printed with ``-s``: the per-site figures.
"""

from __future__ import annotations

import json

import numpy as np
import torch

from fedkper_monai.training import build_network
from fedkper_monai.training.site import Site, SiteConfig


def _ranks(values) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    ranks = np.empty(len(values))
    ranks[np.argsort(values, kind="stable")] = np.arange(len(values))
    for value in np.unique(values):  # ties share their mean rank
        ranks[values == value] = ranks[values == value].mean()
    return ranks


def spearman(a, b) -> float:
    """Spearman's rank correlation (no SciPy in the project's environment)."""
    return float(np.corrcoef(_ranks(a), _ranks(b))[0, 1])


def _site(data_root, name: str, network: dict) -> Site:
    config = SiteConfig(network=network, local_epochs=1, batch_size=32, device="cpu", amp=False)
    return Site(name, data_root / f"{name}.json", config)


def test_the_classifier_bias_change_and_the_initial_accuracy_give_the_label_mix_away(retina_federation, retina_network):
    torch.manual_seed(0)
    received = build_network(**retina_network).state_dict()
    correlations, weight_correlations = [], []
    for name in ("site-1", "site-2", "site-3"):
        site = _site(retina_federation, name, retina_network)
        initial = site.evaluate_global(received, version=0, initial=True)
        report = site.train_round(received, round_index=0, version=0, initial=True)
        bias_change = (report.upload["classifier.bias"] - received["classifier.bias"]).numpy()
        counts = np.asarray(site.class_counts)
        correlations.append(spearman(bias_change, counts))
        # Leaving the bias out (ExcludeVars) is not enough: the classifier weight rows' change ranks the same.
        weight_change = (report.upload["classifier.weight"] - received["classifier.weight"]).numpy().sum(axis=1)
        weight_correlations.append(spearman(weight_change, counts))
        # The largest bias change is the site's majority class.
        assert int(np.argmax(bias_change)) == int(np.argmax(counts)), (name, bias_change, counts)
        test_labels = np.array([entry["label"] for entry in json.loads((retina_federation / f"{name}.json").read_text())["test"]])
        shares = np.bincount(test_labels, minlength=site.num_classes) / len(test_labels)
        # The never-trained model answers one class for every image: its accuracy is that class's exact share.
        assert any(initial["global_on_local_acc"] == share for share in shares), (name, initial["global_on_local_acc"], shares)
        print(f"{name}: class counts {counts.tolist()}, bias change {np.round(bias_change, 4).tolist()}, "
              f"Spearman {correlations[-1]:.3f} (weight rows {weight_correlations[-1]:.3f}); initial global_on_local_acc {initial['global_on_local_acc']:.4f}, "
              f"test shares {np.round(shares, 4).tolist()}")
    print(f"mean Spearman {np.mean(correlations):.3f}, of the weight rows {np.mean(weight_correlations):.3f}")
    assert np.mean(correlations) >= 0.8, correlations
    assert np.mean(weight_correlations) >= 0.8, weight_correlations
