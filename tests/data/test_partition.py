"""Partitioners and the stratified local split: determinism, coverage and the reference's rules."""

from __future__ import annotations

import numpy as np
import pytest

from fedkper_monai.data import (
    PartitionError,
    dirichlet_partition,
    iid_partition,
    natural_partition,
    stratified_local_split,
)


def _labels(seed: int = 0, n: int = 2000, classes: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, classes, size=n)


def test_dirichlet_covers_every_sample_once_and_respects_min_samples():
    y = _labels()
    sites = dirichlet_partition(y, 20, alpha=0.1, seed=3, min_samples=10)
    assert len(sites) == 20 and min(s.size for s in sites) >= 10
    together = np.concatenate(sites)
    assert np.array_equal(np.sort(together), np.arange(y.size))


def test_dirichlet_is_deterministic_and_skewed():
    y = _labels()
    a = dirichlet_partition(y, 10, alpha=0.1, seed=1)
    b = dirichlet_partition(y, 10, alpha=0.1, seed=1)
    c = dirichlet_partition(y, 10, alpha=0.1, seed=2)
    assert all(np.array_equal(x, z) for x, z in zip(a, b))
    assert not all(np.array_equal(x, z) for x, z in zip(a, c))
    # Small alpha: most sites hold few classes; large alpha: nearly all classes everywhere.
    skewed = np.mean([np.unique(y[s]).size for s in a])
    mixed = np.mean([np.unique(y[s]).size for s in dirichlet_partition(y, 10, alpha=100.0, seed=1)])
    assert skewed < 5 < mixed


def test_dirichlet_gives_a_clear_error_when_impossible():
    with pytest.raises(PartitionError, match="cannot give 50 sites at least 10"):
        dirichlet_partition(_labels(n=100), 50, alpha=0.1, seed=0)
    with pytest.raises(PartitionError, match="after 5 draws"):
        dirichlet_partition(_labels(n=300, classes=2), 20, alpha=0.01, seed=0, min_samples=10, max_attempts=5)


def test_iid_and_natural():
    y = _labels(n=103)
    sites = iid_partition(y, 4, seed=0)
    assert sorted(s.size for s in sites) == [25, 26, 26, 26]
    assert np.array_equal(np.sort(np.concatenate(sites)), np.arange(103))
    names, parts = natural_partition(["b", "a", "b", "c", "a"])
    assert names == ["b", "a", "c"] and [p.tolist() for p in parts] == [[0, 2], [1, 4], [3]]


def test_stratified_local_split_is_proportional_and_keeps_singletons_in_training():
    y = np.array([0] * 50 + [1] * 20 + [2] * 1 + [3] * 2)
    idx = np.arange(y.size)
    train, test = stratified_local_split(idx, y, 0.2, seed=0)
    assert test.size == round(0.2 * y.size)
    assert np.intersect1d(train, test).size == 0 and np.union1d(train, test).size == y.size
    counts = np.bincount(y[test], minlength=4)
    assert counts[0] == 10 and counts[1] == 4 and counts[2] == 0
    assert 2 in y[train] and 3 in y[train]  # every class keeps a training sample
    again = stratified_local_split(idx, y, 0.2, seed=0)
    assert np.array_equal(again[1], test)
