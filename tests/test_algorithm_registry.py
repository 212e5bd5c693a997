"""The algorithm registry: its entries, its invariants, and the docs and scripts that name its algorithms.

The jobs and ``compare`` are checked against it in ``tests/flare``, the strategies in ``tests/training``.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from fedkper_monai.algorithm_registry import ALGORITHMS, Algorithm, get_algorithm, strategy_defaults

ROOT = Path(__file__).resolve().parents[1]
BASELINES = ("fedkper", "fedavg", "fedprox", "fedntd", "ditto", "local")


def test_the_registry_holds_the_baselines_the_upper_bound_the_two_ablations_and_the_remedy():
    assert list(ALGORITHMS) == [*BASELINES, "centralized", "fedkper_loss_only", "fedkper_weighting_only", "fedkper_blend"]
    table = {a.name: (a.strategy, dict(a.params), a.weighting, a.site_model, a.pooled) for a in ALGORITHMS.values()}
    assert table == {
        # docs/design.md, The reference setting: tau = 1, lambda_max = 10, score-weighted aggregation.
        "fedkper": ("fedkper", {"tau": 1.0, "lambda_max": 10.0}, "score", "global", False),
        "fedavg": ("fedavg", {}, "samples", "global", False),
        "fedprox": ("fedprox", {"mu": 0.01}, "samples", "global", False),
        "fedntd": ("fedntd", {"tau": 1.0, "beta": 1.0}, "samples", "global", False),
        # lambda = 1 as in the Ditto authors' published runs (litian96/ditto, --lam=1).
        "ditto": ("ditto", {"mu": 1.0}, "samples", "personal", False),
        "local": ("local", {}, "samples", "own", False),
        "centralized": ("fedavg", {}, "samples", "global", True),
        # Each ablation keeps one half of FedKPer.
        "fedkper_loss_only": ("fedkper", {"tau": 1.0, "lambda_max": 10.0}, "samples", "global", False),
        "fedkper_weighting_only": ("fedavg", {}, "score", "global", False),
        # The opt-in remedy: FedKPer with the aggregator's blend toward sample counts.
        "fedkper_blend": ("fedkper", {"tau": 1.0, "lambda_max": 10.0}, "score", "global", False),
    }
    assert {a.name: a.min_effective_sites for a in ALGORITHMS.values() if a.min_effective_sites} == {"fedkper_blend": 1.5}
    assert [a.name for a in ALGORITHMS.values() if a.keeps_site_model] == ["ditto", "local"]


def test_every_strategy_has_a_baseline_named_after_it_that_holds_its_defaults():
    for algorithm in ALGORITHMS.values():
        baseline = ALGORITHMS[algorithm.strategy]
        assert baseline.strategy == algorithm.strategy, algorithm.name
        assert strategy_defaults(algorithm.strategy) == dict(baseline.params)
    with pytest.raises(ValueError, match="no algorithm is named after strategy 'centralized'"):
        strategy_defaults("centralized")  # a variant, not a strategy


def test_entries_are_read_only_and_validated():
    with pytest.raises(TypeError):
        ALGORITHMS["ditto"].params["mu"] = 0.1  # type: ignore[index]
    with pytest.raises(TypeError):
        ALGORITHMS["scaffold"] = ALGORITHMS["fedavg"]  # type: ignore[index]
    with pytest.raises(ValueError, match="weighting"):
        Algorithm("x", "fedavg", weighting="uniform")
    with pytest.raises(ValueError, match="site_model"):
        Algorithm("x", "fedavg", site_model="shared")
    with pytest.raises(ValueError, match="unknown algorithm 'scaffold'.*fedkper_weighting_only"):
        get_algorithm("scaffold")
    assert ALGORITHMS["fedprox"].summary() == "FedProx: cross-entropy + proximal term (mu=0.01)"


def test_the_registry_imports_nothing_heavy():
    code = ("import sys; import fedkper_monai.algorithm_registry; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'nvflare', 'monai', 'numpy'}))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]"


# --- the docs and scripts that name algorithms ----------------------------------------------------------------


def _algorithm_lists(text: str) -> list[list[str]]:
    """Every ``--algorithms a,b,c`` list of a command line in ``text``, and every ``ALGORITHMS=a,b`` setting or
    ``${ALGORITHMS:-a,b}`` default of a script."""
    patterns = (r"--algorithms\s+([\w,]+)", r"ALGORITHMS=([\w,]+)", r"ALGORITHMS:-([\w,]+)")
    return [match.split(",") for pattern in patterns for match in re.findall(pattern, text)]


# The README is a front door; the docs pages hold the algorithm table and the commands (issue 22).
DOC_PAGES = ["README.md", *sorted(path.relative_to(ROOT).as_posix() for path in (ROOT / "docs").glob("*.md"))]


def _docs_text() -> str:
    return "\n".join((ROOT / path).read_text() for path in DOC_PAGES)


@pytest.mark.parametrize("path", ["docs/compare-and-report.md", "benchmarks/run_comparison.sh"])
def test_commands_in_docs_and_scripts_name_registered_algorithms(path):
    lists = _algorithm_lists((ROOT / path).read_text())
    assert lists, f"{path} names no --algorithms list any more: update this test"
    for names in lists:
        assert set(names) <= set(ALGORITHMS), f"{path}: {sorted(set(names) - set(ALGORITHMS))} not in the registry"


def test_the_docs_name_every_algorithm_and_every_job():
    from fedkper_monai.flare.jobspec import STANDARD_JOBS

    text = _docs_text()
    named = set(re.findall(r"`([a-z0-9_]+)`", text))
    assert set(ALGORITHMS) <= named, f"the docs do not name {sorted(set(ALGORITHMS) - named)}"
    jobs = {name for name in named if name.endswith(("_medmnist", "_demo"))}
    assert jobs == set(STANDARD_JOBS), f"the docs' jobs {sorted(jobs)} are not jobspec's {sorted(STANDARD_JOBS)}"
    # The baselines by their display names ("FedProx", "Local-only", ...), as the layout table lists them.
    for name in BASELINES:
        title = ALGORITHMS[name].description.split(":")[0]
        assert title in text, f"the docs do not name {title}"


def test_parameter_values_the_docs_state_are_the_registry_values():
    """A ``mu=1`` or ``lambda_max = 10`` in the README or docs must be a value some algorithm of the registry uses."""
    text = _docs_text()
    used: dict[str, set[float]] = {}
    for algorithm in ALGORITHMS.values():
        for key, value in algorithm.params.items():
            used.setdefault(key, set()).add(value)
    pattern = r"\b(" + "|".join(map(re.escape, used)) + r")\s*=\s*(\d+(?:\.\d+)?(?:e-?\d+)?)"
    for key, value in re.findall(pattern, text):
        assert float(value) in used[key], f"the docs state {key}={value}; the registry uses {sorted(used[key])}"


def test_the_remedy_reaches_the_aggregator_and_leaves_other_jobs_alone():
    from fedkper_monai.flare.jobspec import job_component, load_job, set_algorithm

    meta, server, client = load_job(ROOT / "jobs" / "fedkper_medmnist")
    assert "min_effective_sites" not in job_component(server, "aggregator")["args"]
    set_algorithm(meta, server, client, ALGORITHMS["fedkper_blend"])
    args = job_component(server, "aggregator")["args"]
    assert (args["weighting"], args["min_effective_sites"]) == ("score", 1.5)
    set_algorithm(meta, server, client, ALGORITHMS["fedkper"])
    assert "min_effective_sites" not in job_component(server, "aggregator")["args"]
