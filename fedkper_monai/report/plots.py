"""Comparison plots of several runs, drawn headless.

Every figure is a plain :class:`matplotlib.figure.Figure` on the Agg canvas: no pyplot, no global
backend switch, no display needed, and nothing shared between calls. Each ``plot_*`` function takes
loaded runs and returns a figure; :func:`figure_to_png` turns it into PNG bytes and
:func:`render_plots` makes all of them.

Colors follow the algorithm (so seeds of one algorithm share a color) and line styles tell the
seeds apart. Where an algorithm has several runs (seeds), the curves draw one line per algorithm instead,
the mean over its runs with a band from their minimum to their maximum: 20 and more seed lines that cross
every round cannot be read.
"""

from __future__ import annotations

import io
import math
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fedkper_monai.metrics_schema import site_sort_key
from fedkper_monai.report.metrics import (
    final_site_accuracies,
    for_metric,
    mean_per_class_forgetting,
    metric_word,
    round_series,
    summarize,
)
from fedkper_monai.report.runs import RunMetrics

__all__ = [
    "PlotSpec",
    "CURVES",
    "seed_band",
    "plot_curve",
    "plot_tradeoff",
    "plot_per_site_accuracy",
    "plot_forgetting_heatmap",
    "figure_to_png",
    "render_plots",
]

_LINE_STYLES = ("-", "--", ":", "-.")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X")


@dataclass(frozen=True)
class PlotSpec:
    """A curve over rounds: the round-line field, the file it goes to, its title and y label."""

    key: str
    file_name: str
    title: str
    y_label: str
    # Accuracies are drawn on [0, 1] so runs are read against the same scale.
    unit_range: bool = False


CURVES: tuple[PlotSpec, ...] = (
    PlotSpec("global_acc", "curve_global_acc.png", "Global model accuracy on the global test set, per round",
             "global accuracy", unit_range=True),
    PlotSpec("mean_personalized_acc", "curve_mean_personalized_acc.png",
             "Mean personalized accuracy (site models on their local test splits), per round",
             "mean personalized accuracy", unit_range=True),
    PlotSpec("global_nfr", "curve_global_nfr.png",
             "Global NFR: share of global test samples right last round and wrong now",
             "negative flip rate"),
    PlotSpec("bwt", "curve_bwt.png",
             "Backward transfer (BwT) of the global model on previously sampled sites, per round",
             "BwT (accuracy change; < 0 = forgetting)"),
)


def _styles(runs: Sequence[RunMetrics]) -> list[dict]:
    """Matplotlib style per run: color by algorithm, line style and marker by position within it."""
    colors: dict[str, str] = {}
    seen: dict[str, int] = {}
    styles = []
    for run in runs:
        color = colors.setdefault(run.algorithm, f"C{len(colors) % 10}")
        index = seen.get(run.algorithm, 0)
        seen[run.algorithm] = index + 1
        styles.append({"color": color, "linestyle": _LINE_STYLES[index % len(_LINE_STYLES)],
                       "marker": _MARKERS[index % len(_MARKERS)]})
    return styles


def _new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _no_data(axes, message: str) -> None:
    axes.text(0.5, 0.5, message, ha="center", va="center", transform=axes.transAxes, color="0.4")


def seed_band(runs: Sequence[RunMetrics], key: str) -> tuple[list[int], list[float], list[float], list[float]]:
    """Per round, over the runs that report ``key`` there (a finite value): ``(rounds, mean, min, max)``."""
    values: dict[int, list[float]] = {}
    for run in runs:
        for round_index, value in zip(*round_series(run, key)):
            if math.isfinite(value):
                values.setdefault(round_index, []).append(value)
    rounds = sorted(values)
    return (rounds, [sum(values[r]) / len(values[r]) for r in rounds], [min(values[r]) for r in rounds],
            [max(values[r]) for r in rounds])


def plot_curve(runs: Sequence[RunMetrics], spec: PlotSpec) -> Figure:
    """The round-line field ``spec.key`` over (0-based) rounds: one line per run, or, where an algorithm has
    several runs, one line per algorithm (mean over its runs, band from min to max; see the module).

    Missing values (``null``) leave gaps; a run that never reports the field is named in a note.
    """
    figure = _new_figure(9.0, 4.8)
    axes = figure.add_subplot()
    missing = []
    all_rounds = [row["round"] for run in runs for row in run.round_rows]
    reporting: dict[str, list[RunMetrics]] = {}
    for run in runs:
        if any(math.isfinite(value) for value in round_series(run, spec.key)[1]):
            reporting.setdefault(run.algorithm, []).append(run)
        else:
            missing.append(run.label)
    banded = any(len(group) > 1 for group in reporting.values())
    if banded:
        # The colors _styles gives every run, so an algorithm has one color in every plot of the report.
        colors = {run.algorithm: style["color"] for run, style in zip(runs, _styles(runs))}
        for algorithm, group in reporting.items():
            rounds, mean, low, high = seed_band(group, spec.key)
            color = colors[algorithm]
            label = f"{algorithm} ({len(group)} run{'s' if len(group) > 1 else ''})"
            axes.plot(rounds, mean, label=label, color=color, linewidth=1.4)
            axes.fill_between(rounds, low, high, color=color, alpha=0.15, linewidth=0)
    else:
        shown = [run for group in reporting.values() for run in group]
        for run, style in zip(shown, _styles(shown)):
            rounds, values = round_series(run, spec.key)
            # About 15 markers per line: enough to tell runs apart, few enough to see the curve.
            axes.plot(rounds, values, label=run.label, markersize=4, markevery=max(1, len(rounds) // 15), **style)
    # Segmentation runs hold Dice in the accuracy fields: the titles say so.
    word = metric_word(runs)
    axes.set_title(for_metric(spec.title, word))
    axes.set_xlabel("round (0-based)")
    axes.set_ylabel(for_metric(spec.y_label, word))
    axes.grid(True, alpha=0.3)
    if spec.key == "bwt":
        axes.axhline(0.0, color="0.5", linewidth=0.8)  # the no-forgetting line
    if spec.unit_range:
        axes.set_ylim(0.0, 1.02)
    if len(missing) < len(runs):
        # Beside the axes, so the legend never covers a curve however many runs there are.
        axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0,
                    title="line: mean of runs\nband: min to max" if banded else None, title_fontsize="small")
    if missing:
        note = f"not reported by: {', '.join(missing)}"
        if len(missing) == len(runs):
            _no_data(axes, f"no run reports {spec.key}")
        else:
            axes.annotate(note, xy=(0.0, -0.18), xycoords="axes fraction", fontsize="small", color="0.4")
    if all_rounds:
        # The same round range on every curve plot, even where a metric starts later (BwT).
        span = max(all_rounds) - min(all_rounds)
        axes.set_xlim(min(all_rounds) - 0.03 * max(span, 1), max(all_rounds) + 0.03 * max(span, 1))
    axes.xaxis.get_major_locator().set_params(integer=True)
    return figure


def plot_tradeoff(runs: Sequence[RunMetrics]) -> Figure:
    """Global-vs-personalized trade-off: one point per run, labelled beside it, or, where an algorithm has
    several runs, named once in a legend (color: algorithm; marker: its runs in order).

    x = final global accuracy (global test set), y = final mean personalized accuracy (local test
    splits). Up and to the right is better on both; runs without a global accuracy are named in a note.
    """
    counts = Counter(run.algorithm for run in runs)
    by_algorithm = any(count > 1 for count in counts.values())
    figure = _new_figure(9.0 if by_algorithm else 7.0, 6.0)  # room for the legend beside the axes
    axes = figure.add_subplot()
    missing = []
    points = []
    named: set[str] = set()
    for run, style in zip(runs, _styles(runs)):
        summary = summarize(run)
        x, y = summary["final_global_acc"], summary["final_mean_personalized_acc"]
        if x is None or y is None:
            missing.append(run.label)
            continue
        # Dozens of labels beside their points overlap; by algorithm, the legend names each color once.
        label = None if not by_algorithm or run.algorithm in named else f"{run.algorithm} ({counts[run.algorithm]})"
        named.add(run.algorithm)
        axes.scatter([x], [y], color=style["color"], marker=style["marker"], s=60, zorder=3, label=label)
        if not by_algorithm:
            axes.annotate(run.label, (x, y), xytext=(6, 6), textcoords="offset points", fontsize="small")
        points.append((x, y))
    if by_algorithm and points:
        axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0,
                    title="algorithm (runs);\nmarker: run in order", title_fontsize="small")
    word = metric_word(runs)
    axes.set_title(for_metric("Trade-off after the last round: global vs mean personalized accuracy", word))
    axes.set_xlabel(for_metric("final global accuracy (global model, global test set)", word))
    axes.set_ylabel(for_metric("final mean personalized accuracy (site models, local test splits)", word))
    axes.grid(True, alpha=0.3)
    if points:
        # Pad the data range so labels fit, but never leave the [0, 1] accuracy scale.
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        pad = 0.05
        axes.set_xlim(max(0.0, min(xs) - pad), min(1.05, max(xs) + 2 * pad))
        axes.set_ylim(max(0.0, min(ys) - pad), min(1.05, max(ys) + pad))
    else:
        _no_data(axes, for_metric("no run reports both accuracies", word))
    if missing:
        axes.annotate(for_metric("no global accuracy: ", word) + ", ".join(missing), xy=(0.0, -0.14), xycoords="axes fraction",
                      fontsize="small", color="0.4")
    return figure


def plot_per_site_accuracy(runs: Sequence[RunMetrics]) -> Figure:
    """Per-site bars, one panel per run: final personalized and global-on-local accuracy.

    Both on the site's local test split. Personalized = the site's own model after its last training
    round; global-on-local = the global model at the site's latest evaluation (train or validate).
    A site never sampled has no personalized bar and is marked "not trained".
    """
    all_sites = sorted({str(row["site"]) for run in runs for row in run.site_rows}, key=site_sort_key)
    width = max(7.0, 0.45 * len(all_sites) + 3.0)
    figure = _new_figure(width, 2.4 * max(len(runs), 1) + 1.0)
    panels = figure.subplots(max(len(runs), 1), 1, sharex=True, squeeze=False)[:, 0]
    bar_width = 0.38
    positions = list(range(len(all_sites)))
    for axes, run in zip(panels, runs):
        accuracies = final_site_accuracies(run)
        personalized = [accuracies.get(site, (None, None))[0] for site in all_sites]
        global_on_local = [accuracies.get(site, (None, None))[1] for site in all_sites]
        axes.bar([p - bar_width / 2 for p in positions], [math.nan if v is None else v for v in personalized],
                 bar_width, label="personalized (site model)", color="C0")
        axes.bar([p + bar_width / 2 for p in positions], [math.nan if v is None else v for v in global_on_local],
                 bar_width, label="global-on-local (global model)", color="C1")
        for position, value in zip(positions, personalized):
            if value is None:
                axes.text(position - bar_width / 2, 0.02, "not trained", rotation=90, fontsize="x-small",
                          ha="center", va="bottom", color="0.4")
        seed = f", seed {run.seed}" if run.seed is not None else ""
        axes.set_title(f"{run.label} ({run.algorithm}{seed})", fontsize="medium", loc="left")
        axes.set_ylim(0.0, 1.05)
        axes.set_ylabel(run.metric_word)
        axes.grid(True, axis="y", alpha=0.3)
    # Below the panels, so the legend never covers a bar or the title.
    handles, labels = panels[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncols=2, fontsize="small")
    panels[-1].set_xticks(positions, all_sites, rotation=45 if len(all_sites) > 8 else 0, ha="right"
                          if len(all_sites) > 8 else "center")
    panels[-1].set_xlabel("site")
    figure.suptitle(for_metric("Final accuracy per site on its local test split: personalized model vs global model", metric_word(runs)))
    return figure


def plot_forgetting_heatmap(runs: Sequence[RunMetrics]) -> Figure:
    """Runs x classes heatmap of the global model's per-class forgetting on the global test set.

    Each cell: the share of that class's global test samples that were right the round before and
    wrong now, averaged over rounds after the first. Class names come from the run headers.
    """
    # A segmentation run's forgetting is per foreground class (no background column).
    class_names = max((run.forgetting_class_names for run in runs), key=len, default=[])
    rows = []
    for run in runs:
        values = mean_per_class_forgetting(run)
        rows.append(values + [math.nan] * (len(class_names) - len(values)))
    figure = _new_figure(max(7.5, 1.0 * len(class_names) + 4.0), max(3.5, 0.5 * len(runs) + 2.0))
    axes = figure.add_subplot()
    finite = [value for row in rows for value in row if math.isfinite(value)]
    title = "Per-class forgetting of the global model on the global test set,\nmean over rounds after the first"
    if not class_names or not finite:
        _no_data(axes, "no run reports global_per_class_forgetting")
        axes.set_title(title)
        axes.set_axis_off()
        return figure
    high = max(max(finite), 1e-6)
    image = axes.imshow(rows, cmap="Reds", vmin=0.0, vmax=high, aspect="auto")
    for row_index, row in enumerate(rows):
        for column_index, value in enumerate(row):
            text = "n/a" if not math.isfinite(value) else f"{value:.3f}"
            dark = math.isfinite(value) and value > 0.6 * high
            axes.text(column_index, row_index, text, ha="center", va="center", fontsize="small",
                      color="white" if dark else "black")
    axes.set_xticks(range(len(class_names)), class_names, rotation=45 if len(class_names) > 6 else 0,
                    ha="right" if len(class_names) > 6 else "center")
    axes.set_yticks(range(len(runs)), [run.label for run in runs])
    axes.set_xlabel("class")
    axes.set_ylabel("run")
    axes.set_title(title, fontsize="medium")
    colorbar = figure.colorbar(image, ax=axes)
    unit = "voxels" if metric_word(runs) == "Dice" else "samples"
    colorbar.set_label(f"share of class {unit}\nright before, wrong now")
    return figure


def figure_to_png(figure: Figure) -> bytes:
    """Render ``figure`` to PNG bytes (the caller writes them atomically)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def render_plots(runs: Sequence[RunMetrics]) -> list[tuple[str, str, bytes]]:
    """Draw every report plot.

    Returns:
        ``(file_name, title, png_bytes)`` per plot, in the order the report shows them.
    """
    word = metric_word(runs)
    makers: list[tuple[str, str, Callable[[], Figure]]] = [
        (spec.file_name, for_metric(spec.title, word), lambda spec=spec: plot_curve(runs, spec)) for spec in CURVES
    ]
    makers += [
        ("tradeoff_global_vs_personalized.png", for_metric("Global vs personalized accuracy trade-off (final round)", word),
         lambda: plot_tradeoff(runs)),
        ("per_site_accuracy.png", for_metric("Final per-site accuracy: personalized vs global-on-local", word),
         lambda: plot_per_site_accuracy(runs)),
        ("per_class_forgetting.png", "Per-class forgetting of the global model (mean over rounds)",
         lambda: plot_forgetting_heatmap(runs)),
    ]
    return [(file_name, title, figure_to_png(make())) for file_name, title, make in makers]
