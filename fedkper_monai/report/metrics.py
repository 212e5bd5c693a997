"""Reduce loaded runs (:mod:`fedkper_monai.report.runs`) to comparable numbers: summaries, series, checks.

Only the standard library is used here, so summarizing never pulls in matplotlib.
"""

from __future__ import annotations

import math
import re
import statistics
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from fedkper_monai.metrics_schema import site_sort_key
from fedkper_monai.report.runs import RunMetrics

__all__ = [
    "SUMMARY_COLUMNS",
    "VAL_ACC_FIELD",
    "SummaryColumn",
    "summarize",
    "summarize_by_algorithm",
    "stability",
    "late_mean",
    "round_series",
    "final_site_accuracies",
    "mean_per_class_forgetting",
    "sampling_mismatches",
    "metric_word",
    "for_metric",
    "column_title",
    "column_meaning",
]


# Round-line fields of model selection (issue 23): the round's global model on the server's validation list,
# null without one. Named here as the lead's interface for fedkper_monai.metrics_schema spells them; runs
# written before model selection lack them and report n/a.
VAL_ACC_FIELD = "val_acc"


@dataclass(frozen=True)
class SummaryColumn:
    """One column of the summary: its key (CSV header), a short title, a number format and a meaning."""

    key: str
    title: str
    number_format: str
    meaning: str


# The single source of truth for summary.csv's columns, the report table and the metric explanations.
SUMMARY_COLUMNS: tuple[SummaryColumn, ...] = (
    SummaryColumn("run", "run", "", "the run's folder name (with its seed when two runs share a name)"),
    SummaryColumn("algorithm", "algorithm", "", "the algorithm named in the run header (else the folder name)"),
    SummaryColumn("seed", "seed", "", "the seed in the run header: partition, site sampling and initialization"),
    SummaryColumn("rounds", "rounds", "d", "number of rounds with a round line in metrics.jsonl"),
    SummaryColumn("final_global_acc", "final global acc", ".3f",
                  "accuracy of the global model on the global test set after the last round"),
    SummaryColumn("best_val_global_acc", "best-by-val global acc", ".3f",
                  "accuracy on the global test set of the global model of the round with the highest validation "
                  "accuracy (val_acc, the server's global_val.json; earliest round on ties): the model a user keeps "
                  "when selecting on validation; n/a for a run without a validation list"),
    SummaryColumn("best_val_round", "best-by-val round", "d",
                  "the 0-based round whose global model has the highest validation accuracy (earliest on ties); "
                  "n/a without a validation list"),
    SummaryColumn("best_global_acc", "best global acc", ".3f",
                  "highest global-model accuracy on the global test set over all rounds: chosen on the test set "
                  "itself, so an optimistic upper bound, not a model anyone could select"),
    SummaryColumn("final_mean_personalized_acc", "mean pers. acc", ".3f",
                  "last round: mean over sites of each site's personalized (local) model accuracy on its local test split"),
    SummaryColumn("final_worst_personalized_acc", "worst pers. acc", ".3f",
                  "last round: personalized accuracy of the worst site"),
    SummaryColumn("final_balanced_personalized_acc", "bal. pers. acc", ".3f",
                  "last round: class-balanced personalized accuracy (mean of per-class recalls), averaged over sites"),
    SummaryColumn("final_balance", "balance", ".3f",
                  "the paper's balance: (final global acc + final mean personalized acc) / 2"),
    SummaryColumn("late_global_acc", "late global acc", ".3f",
                  "accuracy of the global model on the global test set, mean over the last 20% of rounds (the "
                  "window of the stability figure): steadier than the last round alone"),
    SummaryColumn("global_acc_stability", "global acc change", ".4f",
                  "mean absolute round-to-round change of global accuracy over the last 20% of rounds (lower is steadier)"),
    SummaryColumn("final_mean_unseen_site_acc", "unseen-site acc", ".3f",
                  "last round: the global model's accuracy on the held-out sites that never trained, mean over them"),
    SummaryColumn("mean_global_nfr", "global NFR", ".4f",
                  "negative flip rate of the global model on the global test set (share of samples right at the "
                  "previous round and wrong now), mean over rounds 1 onward: round 0 is left out, it has no previous "
                  "global model (its global_nfr is 0 by definition)"),
    SummaryColumn("mean_global_pfr", "global PFR", ".4f",
                  "positive flip rate of the global model on the global test set (share of samples wrong at the "
                  "previous round and right now), mean over rounds 1 onward (round 0 left out, as for global NFR)"),
    SummaryColumn("mean_local_nfr", "local NFR", ".4f",
                  "negative flip rate of each site's personalized model on its local test split since its previous "
                  "evaluation, mean over all site train lines"),
    SummaryColumn("mean_local_pfr", "local PFR", ".4f",
                  "positive flip rate of the personalized models on their local test splits, mean over site train lines"),
    SummaryColumn("final_bwt", "final BwT", "+.4f",
                  "backward transfer after the last round: mean over previously sampled sites of global-on-local "
                  "accuracy now minus right after the round they were last sampled (negative = forgetting)"),
    SummaryColumn("mean_bwt", "mean BwT", "+.4f",
                  "backward transfer, mean over every round that reports it (null on round 0, which has no earlier "
                  "round, and on rounds that are not a full validation): the whole run's forgetting, not only the "
                  "last round's"),
    SummaryColumn("seconds_per_round", "s/round", ".1f", "wall time per round, mean over rounds (seconds)"),
    SummaryColumn("bytes_sent_per_round", "MB sent/round", "MB",
                  "bytes the server sent to sites per round, mean over rounds (shown in MB = 1e6 bytes)"),
    SummaryColumn("single_site_round_fraction", "single-site rounds", ".2f",
                  "share of rounds in which one site effectively carried the whole aggregate"),
)


# Where a column means something else for segmentation than "replace accuracy by Dice" says.
_DICE_MEANINGS = {
    "final_balanced_personalized_acc": "last round: class-balanced personalized Dice (each foreground class's mean Dice "
                                       "over the cases holding it, averaged over the classes), averaged over sites",
    "mean_global_nfr": "negative flip rate of the global model on the global test set (share of ground-truth foreground "
                       "voxels labelled right at the previous round and wrong now), mean over rounds 1 onward: round 0 "
                       "is left out, it has no previous global model (its global_nfr is 0 by definition)",
    "mean_global_pfr": "positive flip rate of the global model on the global test set (share of ground-truth foreground "
                       "voxels labelled wrong at the previous round and right now), mean over rounds 1 onward (round 0 "
                       "left out, as for global NFR)",
    "mean_local_nfr": "negative flip rate (foreground voxels) of each site's personalized model on its local test split "
                      "since its previous evaluation, mean over all site train lines",
    "mean_local_pfr": "positive flip rate (foreground voxels) of the personalized models on their local test splits, "
                      "mean over site train lines",
}


def metric_word(runs: Sequence[RunMetrics]) -> str:
    """What the runs' accuracy fields hold: ``"Dice"`` when every run is a segmentation run (header
    ``"task": "segmentation"``), ``"accuracy"`` when none is, ``"accuracy or Dice"`` for a mix."""
    words = {run.metric_word for run in runs}
    return words.pop() if len(words) == 1 else "accuracy or Dice"


def for_metric(text: str, word: str) -> str:
    """``text`` written for ``word``: "accuracy" (and "acc", "accuracies") become Dice in segmentation reports.

    Example:
        >>> for_metric("final global acc: global accuracy", "Dice")
        'final global Dice: global Dice'
    """
    if word == "accuracy":
        return text
    plural = "Dice scores" if word == "Dice" else "accuracies or Dice scores"
    text = re.sub(r"\baccuracies\b", plural, text)
    text = re.sub(r"\baccuracy\b", word, text)
    return re.sub(r"\bacc\b", word, text)


def column_title(column: SummaryColumn, word: str) -> str:
    """The column's title for runs whose accuracy fields hold ``word``."""
    return for_metric(column.title, word)


def column_meaning(column: SummaryColumn, word: str) -> str:
    """The column's meaning for runs whose accuracy fields hold ``word``."""
    if word == "Dice" and column.key in _DICE_MEANINGS:
        return _DICE_MEANINGS[column.key]
    return for_metric(column.meaning, word)


def _numbers(values: Iterable[Any]) -> list[float]:
    """The finite numbers among ``values`` (``None`` and NaN dropped)."""
    return [float(value) for value in values if value is not None and math.isfinite(float(value))]


def _mean(values: Iterable[Any]) -> float | None:
    numbers = _numbers(values)
    return statistics.fmean(numbers) if numbers else None


def _is_train(row: Mapping[str, Any]) -> bool:
    # Site lines without a task predate the field; they carry training metrics.
    return row.get("task", "train") == "train"


def summarize(run: RunMetrics) -> dict[str, Any]:
    """Reduce a run to one row with the keys of :data:`SUMMARY_COLUMNS` (``None`` where unknown).

    Final values come from the last round line; best-by-validation from the round with the highest
    ``val_acc``; "global NFR" averages the rounds after the first
    (the first has no previous evaluation, so nothing can flip); "local NFR" averages
    ``nfr_personalized`` over all site train lines.
    """
    rows = run.round_rows
    last = rows[-1] if rows else {}
    after_first = rows[1:]
    global_accs = _numbers(row.get("global_acc") for row in rows)
    single_site = [row["single_site_round"] for row in rows if row.get("single_site_round") is not None]
    train_rows = [row for row in run.site_rows if _is_train(row)]
    final_global, final_personalized = last.get("global_acc"), last.get("mean_personalized_acc")
    return {
        "run": run.label,
        "algorithm": run.algorithm,
        "seed": run.seed,
        "rounds": len(rows),
        "final_global_acc": last.get("global_acc"),
        **_best_by_validation(rows),
        "best_global_acc": max(global_accs) if global_accs else None,
        "final_mean_personalized_acc": last.get("mean_personalized_acc"),
        "final_worst_personalized_acc": last.get("worst_personalized_acc"),
        "final_balanced_personalized_acc": last.get("balanced_personalized_acc"),
        "final_balance": (final_global + final_personalized) / 2 if None not in (final_global, final_personalized) else None,
        "late_global_acc": late_mean(global_accs),
        "global_acc_stability": stability(global_accs),
        "final_mean_unseen_site_acc": last.get("mean_unseen_site_acc"),
        "mean_global_nfr": _mean(row.get("global_nfr") for row in after_first),
        "mean_global_pfr": _mean(_flip_rate(row, "global_positive_flips", "global_negative_flips", "global_unchanged") for row in after_first),
        "mean_local_nfr": _mean(row.get("nfr_personalized") for row in train_rows),
        "mean_local_pfr": _mean(
            _flip_rate(row, "positive_flips_personalized", "negative_flips_personalized", "unchanged_personalized") for row in train_rows
        ),
        "final_bwt": last.get("bwt"),
        "mean_bwt": _mean(row.get("bwt") for row in rows),
        "seconds_per_round": _mean(row.get("seconds") for row in rows),
        "bytes_sent_per_round": _mean(row.get("bytes_sent") for row in rows),
        "single_site_round_fraction": (sum(single_site) / len(single_site)) if single_site else None,
    }


def _best_by_validation(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``best_val_round`` and ``best_val_global_acc``: the round with the highest finite ``val_acc``, the
    earliest on ties (as the server's ``best_val_round``), and that round's ``global_acc``; both ``None``
    when no round has a validation accuracy (every run written before model selection).

    The round is found from ``val_acc`` itself rather than read from the last line's ``best_val_round``,
    so a run cut short or resumed reports the round its own lines say is best.
    """
    best: Mapping[str, Any] | None = None
    for row in rows:  # rows are sorted by round: a strict ">" keeps the earliest of equal scores
        value = row.get(VAL_ACC_FIELD)
        if value is not None and math.isfinite(float(value)) and (best is None or float(value) > float(best[VAL_ACC_FIELD])):
            best = row
    if best is None:
        return {"best_val_global_acc": None, "best_val_round": None}
    return {"best_val_global_acc": best.get("global_acc"), "best_val_round": best["round"]}


def stability(global_accs: Sequence[float], share: float = 0.2) -> float | None:
    """Mean absolute round-to-round change of global accuracy over the last ``share`` of rounds (docs/design.md,
    Forgetting: NFR and BwT); at least two rounds are taken, ``None`` with fewer than two.

    Example:
        >>> round(stability([0.1, 0.2, 0.5, 0.4, 0.6], share=0.6), 6)  # last 3 rounds: |0.4-0.5|, |0.6-0.4|
        0.15
    """
    if len(global_accs) < 2:
        return None
    window = _last_rounds(global_accs, share)
    return statistics.fmean(abs(b - a) for a, b in zip(window, window[1:]))


def late_mean(global_accs: Sequence[float], share: float = 0.2) -> float | None:
    """Mean global accuracy over the last ``share`` of rounds (the window :func:`stability` uses); ``None``
    without rounds.

    Example:
        >>> round(late_mean([0.1, 0.2, 0.5, 0.4, 0.6], share=0.6), 6)  # the last 3 rounds
        0.5
    """
    return statistics.fmean(_last_rounds(global_accs, share)) if global_accs else None


def _last_rounds(values: Sequence[float], share: float) -> list[float]:
    """The last ``share`` of ``values``, at least two of them (all, when there are fewer)."""
    return list(values[-max(2, math.ceil(share * len(values))):])


def _flip_rate(row: Mapping[str, Any], key: str, *other_keys: str) -> float | None:
    """``row[key]`` over the sum of ``key`` and ``other_keys`` (the evaluated samples); None when missing."""
    counts = [row.get(name) for name in (key, *other_keys)]
    if any(count is None for count in counts) or not sum(counts):
        return None
    return counts[0] / sum(counts)


_GROUP_KEYS = ("run", "algorithm", "seed")


def summarize_by_algorithm(summaries: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sample standard deviation (n - 1) of every numeric summary column per algorithm.

    Args:
        summaries: rows from :func:`summarize`.

    Returns:
        One row per algorithm, in first-appearance order: ``algorithm``, ``runs`` (count), ``seeds``
        (space-separated), then ``<key>_mean`` and ``<key>_std`` for each numeric column. The std is
        ``None`` with fewer than two values; both are ``None`` when no run reports the value.
    """
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for summary in summaries:
        groups.setdefault(str(summary["algorithm"]), []).append(summary)
    result = []
    for algorithm, members in groups.items():
        row: dict[str, Any] = {
            "algorithm": algorithm,
            "runs": len(members),
            "seeds": " ".join(str(member["seed"]) for member in members if member.get("seed") is not None),
        }
        for column in SUMMARY_COLUMNS:
            if column.key in _GROUP_KEYS:
                continue
            values = _numbers(member.get(column.key) for member in members)
            row[f"{column.key}_mean"] = statistics.fmean(values) if values else None
            row[f"{column.key}_std"] = statistics.stdev(values) if len(values) >= 2 else None
        result.append(row)
    return result


def round_series(run: RunMetrics, key: str) -> tuple[list[int], list[float]]:
    """A round-line field over rounds: ``(rounds, values)`` with NaN where the value is missing."""
    rounds = [row["round"] for row in run.round_rows]
    values = [float(row[key]) if row.get(key) is not None else math.nan for row in run.round_rows]
    return rounds, values


def final_site_accuracies(run: RunMetrics) -> dict[str, tuple[float | None, float | None]]:
    """Per site: ``(personalized_acc, global_on_local_acc)`` as last reported (``personalized_dice`` and
    ``global_on_local_dice`` in a segmentation run).

    Personalized accuracy comes from the site's latest train line (``None`` if it was never sampled);
    global-on-local accuracy from its latest line of either task, so unsampled sites count too.
    Sites are in natural order.
    """
    latest: dict[str, dict[str, tuple[int, float]]] = {}
    for row in run.site_rows:
        site = str(row["site"])
        entry = latest.setdefault(site, {})
        for key, wanted in (("personalized_acc", _is_train(row)), ("global_on_local_acc", True)):
            value = row.get(key.replace("_acc", "_" + run.metric_suffix))
            # ">=" keeps the later line of the same round: file order is time order.
            if wanted and value is not None and row["round"] >= entry.get(key, (-1, 0.0))[0]:
                entry[key] = (row["round"], float(value))
    return {
        site: (
            latest[site]["personalized_acc"][1] if "personalized_acc" in latest[site] else None,
            latest[site]["global_on_local_acc"][1] if "global_on_local_acc" in latest[site] else None,
        )
        for site in sorted(latest, key=site_sort_key)
    }


def mean_per_class_forgetting(run: RunMetrics) -> list[float]:
    """Mean over rounds after the first of ``global_per_class_forgetting``, one value per class.

    NaN for a class no round reports. The length is that of :attr:`RunMetrics.forgetting_class_names`
    (the foreground classes of a segmentation run).
    """
    num_classes = len(run.forgetting_class_names)
    columns: list[list[Any]] = [[] for _ in range(num_classes)]
    for row in run.round_rows[1:]:
        for index, value in enumerate(row.get("global_per_class_forgetting") or []):
            columns[index].append(value)
    means = [_mean(column) for column in columns]
    return [math.nan if value is None else value for value in means]


def sampling_mismatches(runs: Sequence[RunMetrics]) -> list[str]:
    """Check that runs with the same seed sampled the same sites in every round they share.

    The comparison is only fair when every algorithm saw the same site sampling (issue 5).

    Returns:
        One human-readable line per disagreement (empty when all agree or nothing is comparable).
    """
    messages = []
    by_seed: dict[Any, list[RunMetrics]] = {}
    for run in runs:
        if run.seed is not None:
            # Only runs over the same sites are comparable (the centralized run pools them into one).
            sites = tuple(run.header.get("sites") or ())
            by_seed.setdefault((run.seed, sites), []).append(run)
    for (seed, _), members in by_seed.items():
        reference = members[0]
        reference_sampling = {row["round"]: row.get("sampled_sites") for row in reference.round_rows}
        for other in members[1:]:
            for row in other.round_rows:
                theirs, ours = row.get("sampled_sites"), reference_sampling.get(row["round"])
                if theirs is None or ours is None:
                    continue
                if sorted(map(str, theirs)) != sorted(map(str, ours)):
                    messages.append(
                        f"seed {seed}, round {row['round']}: {reference.label} sampled {sorted(map(str, ours))} "
                        f"but {other.label} sampled {sorted(map(str, theirs))}"
                    )
                    break  # one line per pair of runs is enough to flag it
    return messages
