"""Site partitions (Dirichlet label skew, IID, natural by site) and the per-site local test split.

Pure numpy, deterministic under a seed. Indices refer to positions in the pool the labels describe.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from fedkper_monai.errors import FedKPerError

__all__ = [
    "PartitionError",
    "dirichlet_partition",
    "iid_partition",
    "natural_partition",
    "stratified_local_split",
]


class PartitionError(FedKPerError, ValueError):
    """A partition cannot satisfy its constraints (too few samples, an empty site, ...)."""


def _as_labels(labels: Sequence[int] | np.ndarray) -> np.ndarray:
    array = np.asarray(labels).reshape(-1)
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {array.dtype}")
    return array.astype(np.int64)


def dirichlet_partition(
    labels: Sequence[int] | np.ndarray,
    num_sites: int,
    alpha: float,
    seed: int,
    min_samples: int = 10,
    max_attempts: int = 100_000,
    balance: bool = True,
) -> list[np.ndarray]:
    """Label-skewed partition: per class, Dirichlet(alpha) proportions over the sites.

    As in the reference code, the whole draw is repeated until every site holds at least ``min_samples``.
    Small ``alpha`` (0.1) gives sites that hold one or two classes; large ``alpha`` approaches IID.
    With ``balance`` (the reference's rule) a site that already holds ``N / K`` samples gets no share of
    the classes drawn after that; without it, many sites at small alpha end up empty.

    Args:
        labels: (N,) integer class labels of the pool.
        num_sites: number of sites K.
        alpha: Dirichlet concentration (> 0).
        seed: seed of the draw; same seed, same partition.
        min_samples: minimum number of samples per site.
        max_attempts: redraws before giving up.
        balance: apply the fair-share rule above.

    Returns:
        K sorted index arrays into ``labels``, disjoint, covering all N samples.

    Raises:
        PartitionError: no draw satisfied ``min_samples`` within ``max_attempts``.
    """
    y = _as_labels(labels)
    if num_sites < 1:
        raise ValueError(f"num_sites must be >= 1, got {num_sites}")
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    if y.size < num_sites * min_samples:
        raise PartitionError(
            f"{y.size} samples cannot give {num_sites} sites at least {min_samples} samples each"
        )
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    smallest = 0
    for _ in range(max_attempts):
        site_parts: list[list[np.ndarray]] = [[] for _ in range(num_sites)]
        sizes = np.zeros(num_sites, dtype=np.int64)
        for c in classes:
            members = rng.permutation(np.flatnonzero(y == c))
            proportions = rng.dirichlet(np.full(num_sites, alpha))
            if balance:
                # As in the reference code base: a site that already holds its fair share (N / K) takes
                # no part of later classes, so small alpha skews labels without starving most sites.
                proportions = proportions * (sizes < y.size / num_sites)
                total = proportions.sum()
                proportions = proportions / total if total > 0 else np.full(num_sites, 1.0 / num_sites)
            cuts = (np.cumsum(proportions)[:-1] * members.size).astype(np.int64)
            for site, chunk in enumerate(np.split(members, cuts)):
                site_parts[site].append(chunk)
                sizes[site] += chunk.size
        sites = [np.sort(np.concatenate(parts)) for parts in site_parts]
        smallest = min(s.size for s in sites)
        if smallest >= min_samples:
            return sites
    raise PartitionError(
        f"Dirichlet(alpha={alpha}) over {num_sites} sites left a site with {smallest} < {min_samples} samples "
        f"after {max_attempts} draws; use fewer sites, a larger alpha or a smaller min_samples"
    )


def iid_partition(
    labels: Sequence[int] | np.ndarray, num_sites: int, seed: int, min_samples: int = 1
) -> list[np.ndarray]:
    """IID partition: a seeded shuffle cut into ``num_sites`` near-equal parts (sorted index arrays)."""
    y = _as_labels(labels)
    if num_sites < 1:
        raise ValueError(f"num_sites must be >= 1, got {num_sites}")
    if y.size // num_sites < min_samples:
        raise PartitionError(f"{y.size} samples cannot give {num_sites} sites at least {min_samples} samples each")
    order = np.random.default_rng(seed).permutation(y.size)
    return [np.sort(part) for part in np.array_split(order, num_sites)]


def natural_partition(site_of_sample: Sequence[str]) -> tuple[list[str], list[np.ndarray]]:
    """Natural partition: the site each sample came from (a manifest's ``site`` column).

    Returns:
        (site names in first-seen order, one sorted index array per site).
    """
    names: list[str] = []
    members: dict[str, list[int]] = {}
    for index, site in enumerate(site_of_sample):
        if site not in members:
            names.append(site)
            members[site] = []
        members[site].append(index)
    return names, [np.asarray(members[name], dtype=np.int64) for name in names]


def stratified_local_split(
    indices: Sequence[int] | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Split one site's samples into local train and local test, stratified over the classes it holds.

    The test size is ``round(test_fraction * n)``, shared out over classes in proportion to their counts
    (largest remainders first). Every class keeps at least one sample in training, so a class with a single
    sample stays in training.

    Args:
        indices: (n,) pool indices of the site's samples.
        labels: labels of the whole pool (indexed by ``indices``).
        test_fraction: share of the site's data for local test, in [0, 1).
        seed: seed of the choice within each class.

    Returns:
        (train_indices, test_indices), both sorted.
    """
    if not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    y = _as_labels(labels)[idx]
    classes, counts = np.unique(y, return_counts=True)
    caps = counts - 1  # each class keeps one training sample
    target = min(int(round(test_fraction * idx.size)), int(caps.sum()))
    exact = test_fraction * counts
    quota = np.minimum(np.floor(exact).astype(np.int64), caps)
    # Hand out the remaining test places by largest fractional remainder, then by class size.
    remainder = exact - quota
    order = sorted(range(classes.size), key=lambda i: (-remainder[i], -counts[i], classes[i]))
    while quota.sum() < target:
        progressed = False
        for i in order:
            if quota.sum() >= target:
                break
            if quota[i] < caps[i]:
                quota[i] += 1
                progressed = True
        if not progressed:
            break
    rng = np.random.default_rng(seed)
    test_parts = []
    for c, q in zip(classes, quota):
        members = idx[y == c]
        test_parts.append(rng.permutation(members)[:q])
    test = np.sort(np.concatenate(test_parts)) if test_parts else np.zeros(0, dtype=np.int64)
    train = np.sort(np.setdiff1d(idx, test))
    return train, test
