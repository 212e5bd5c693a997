"""Seed-by-seed comparison: in how many seeds one algorithm (FedKPer by default) beats each other one.

Means over 3 seeds hide how often a method wins: a mean gap can come from one seed. Runs of two
algorithms with the same seed share the partition, the initial model and the sampled sites in every
round (``compare`` guarantees it), so they are paired by seed and each pair counted as a win, a tie or
a loss per metric. Only the standard library is used here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

__all__ = ["PAIRED_METRICS", "PairedMetric", "PairedCount", "paired_counts", "paired_cell"]


@dataclass(frozen=True)
class PairedMetric:
    """A summary column compared seed by seed, and which direction is better."""

    key: str
    title: str
    higher_is_better: bool


# The paper's claims (issue 10): final global accuracy (and its mean over the last 20% of rounds, which one
# round's swing cannot decide), a steadier global model, balance, the worst site,
# unseen sites, and forgetting (BwT at the end and over the run, and the global model's negative flips).
PAIRED_METRICS: tuple[PairedMetric, ...] = (
    PairedMetric("final_global_acc", "final global acc", True),
    PairedMetric("late_global_acc", "late global acc", True),
    PairedMetric("global_acc_stability", "steadier global acc", False),
    PairedMetric("final_balance", "balance", True),
    PairedMetric("final_worst_personalized_acc", "worst site", True),
    PairedMetric("final_mean_unseen_site_acc", "unseen sites", True),
    PairedMetric("final_bwt", "final BwT", True),
    # The last round's BwT is one round's; the mean over rounds can rank two methods the other way (issue 23).
    PairedMetric("mean_bwt", "mean BwT", True),
    PairedMetric("mean_global_nfr", "fewer global flips (NFR)", False),
)


@dataclass(frozen=True)
class PairedCount:
    """Of ``pairs`` seeds where both runs report the metric: the reference was better in ``better``, equal
    in ``ties``."""

    better: int
    ties: int
    pairs: int


def _by_seed(summaries: Sequence[Mapping[str, Any]], algorithm: str) -> dict[Any, Mapping[str, Any]]:
    """The runs of ``algorithm`` keyed by seed; a seed with several runs is left out (no unique pair)."""
    runs: dict[Any, list[Mapping[str, Any]]] = {}
    for summary in summaries:
        if summary.get("algorithm") == algorithm and summary.get("seed") is not None:
            runs.setdefault(summary["seed"], []).append(summary)
    return {seed: members[0] for seed, members in runs.items() if len(members) == 1}


def _count(reference: Sequence[Mapping[str, Any]], other: Sequence[Mapping[str, Any]],
           metric: PairedMetric) -> PairedCount:
    better = ties = pairs = 0
    for ours, theirs in zip(reference, other):
        a, b = ours.get(metric.key), theirs.get(metric.key)
        if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)):
            continue
        pairs += 1
        # Values from the same fractions (2 of 3 test images) compare equal exactly; the tolerance only
        # absorbs float noise, never a real difference.
        if math.isclose(a, b, rel_tol=0.0, abs_tol=1e-9):
            ties += 1
        elif (a > b) == metric.higher_is_better:
            better += 1
    return PairedCount(better, ties, pairs)


def paired_counts(summaries: Sequence[Mapping[str, Any]], reference: str,
                  metrics: Sequence[PairedMetric] = PAIRED_METRICS) -> list[tuple[str, dict[str, PairedCount]]]:
    """For each algorithm other than ``reference`` that shares a seed with it, the counts per metric.

    Args:
        summaries: rows from :func:`fedkper_monai.report.metrics.summarize`.
        reference: the algorithm compared with every other one.
        metrics: the metrics to count.

    Returns:
        ``(algorithm, {metric key: PairedCount})`` in first-appearance order; empty when ``reference``
        has no seeded run or no other algorithm shares a seed with it.

    Example:
        >>> rows = [{"algorithm": "a", "seed": 0, "final_global_acc": 0.7},
        ...         {"algorithm": "b", "seed": 0, "final_global_acc": 0.5}]
        >>> paired_counts(rows, "a", PAIRED_METRICS[:1])
        [('b', {'final_global_acc': PairedCount(better=1, ties=0, pairs=1)})]
    """
    ours = _by_seed(summaries, reference)
    result = []
    others = dict.fromkeys(str(row.get("algorithm")) for row in summaries if row.get("algorithm") != reference)
    for algorithm in others:
        theirs = _by_seed(summaries, algorithm)
        seeds = [seed for seed in ours if seed in theirs]
        if not seeds:
            continue
        result.append((algorithm, {
            metric.key: _count([ours[seed] for seed in seeds], [theirs[seed] for seed in seeds], metric)
            for metric in metrics
        }))
    return result


def paired_cell(count: PairedCount) -> str:
    """A table cell: ``"2 of 3"``, with ties as ``"2 of 3 (1 tie)"``; ``"n/a"`` without pairs."""
    if not count.pairs:
        return "n/a"
    text = f"{count.better} of {count.pairs}"
    if count.ties:
        text += f" ({count.ties} tie{'s' if count.ties > 1 else ''})"
    return text
