"""End to end in FLARE's real simulator (slow): the README demo and a FedKPer run on real RetinaMNIST sites."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from fedkper_monai.cli import main
from fedkper_monai.flare.jobspec import controller_args, load_job, save_job_configs, site_args
from fedkper_monai.flare.metrics import ROUND_FIELDS, SITE_TRAIN_FIELDS
from fedkper_monai.flare.workspace import allowed_classes
from fedkper_monai.launch.simulate import find_metrics
from fedkper_monai.report.metrics import summarize
from fedkper_monai.report.runs import load_run

pytestmark = pytest.mark.slow

FIXTURES = Path(__file__).parent / "fixtures"
# Wall-clock fields; everything else in metrics.jsonl is deterministic under the seed.
_TIMING_FIELDS = {"started", "seconds", "train_seconds"}


def _differences(expected, actual, where: str = "") -> list[str]:
    """Every place where two metrics records differ (numbers to 1e-6; timings ignored)."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        if set(expected) != set(actual):
            return [f"{where}: fields {sorted(set(expected) ^ set(actual))} differ"]
        return [d for key in expected if key not in _TIMING_FIELDS for d in _differences(expected[key], actual[key], f"{where}.{key}")]
    if isinstance(expected, list) and isinstance(actual, list) and len(expected) == len(actual):
        return [d for i, (e, a) in enumerate(zip(expected, actual)) for d in _differences(e, a, f"{where}[{i}]")]
    if isinstance(expected, float) and isinstance(actual, (int, float)) and not isinstance(actual, bool):
        return [] if math.isclose(expected, actual, rel_tol=0, abs_tol=1e-6) else [f"{where}: {expected} != {actual}"]
    return [] if expected == actual else [f"{where}: {expected!r} != {actual!r}"]


def assert_matches_golden(metrics: Path | list[dict], fixture: str, header_ignored: tuple[str, ...] = ()) -> None:
    """``metrics`` (a metrics.jsonl or its records) equals the recorded ``fixture`` line by line, header fields
    ``header_ignored`` aside (a change that alters a metric on purpose re-records the fixture and says why in
    its commit). Used by the simulator, recipe and POC tests alike."""
    expected = [json.loads(line) for line in (FIXTURES / fixture).read_text().splitlines()]
    actual = metrics if isinstance(metrics, list) else [json.loads(line) for line in metrics.read_text().splitlines()]
    for header in (expected[0]["run"], actual[0]["run"]):
        for key in header_ignored:
            header.pop(key, None)
    assert len(actual) == len(expected), f"{len(actual)} lines, fixture {fixture} has {len(expected)}"
    problems = [d for i, (e, a) in enumerate(zip(expected, actual)) for d in _differences(e, a, f"line {i + 1}")]
    assert not problems, f"metrics.jsonl differs from {fixture}:\n" + "\n".join(problems[:20])


def _lines(metrics: Path) -> tuple[dict, list[dict], list[dict]]:
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    header = records[0]["run"]
    sites = [r for r in records if "site" in r]
    rounds = [r for r in records if "round" in r and "site" not in r]
    return header, sites, rounds


def test_fedkper_on_real_retinamnist_sites(golden_fedkper_run):
    # `fedkper-monai simulate jobs/fedkper_medmnist` with the golden options (tests/conftest.py: one run per
    # session, which tests/bundle reads as well).
    workspace, printed = golden_fedkper_run.workspace, golden_fedkper_run.printed
    assert "metrics:" in printed and "tensorboard --logdir" in printed
    metrics = find_metrics(workspace)
    assert_matches_golden(metrics, "golden_fedkper_retina_3sites.jsonl")
    header, sites, rounds = _lines(metrics)
    assert header["algorithm"] == "fedkper" and header["num_sites"] == 3 and header["num_classes"] == 5
    assert [r["round"] for r in rounds] == [0, 1]
    for line in rounds:
        assert set(ROUND_FIELDS) <= set(line)
        assert 0.0 <= line["global_acc"] <= 1.0 and len(line["sampled_sites"]) == 2
        assert line["bytes_sent"] > 0 and line["seconds"] > 0
    train_lines = [s for s in sites if s["task"] == "train"]
    assert len(train_lines) == 4
    for line in train_lines:
        # train_acc stays at the site unless it shares diagnostics (beside the score it gives away the label mix).
        assert line["train_acc"] is None
        assert all(line[field] is not None for field in SITE_TRAIN_FIELDS if field != "train_acc"), line
        assert line["weight"] > 0
    # Every site (sampled or not) reports global-on-local accuracy of every round's global model.
    validate_lines = [s for s in sites if s["task"] == "validate"]
    assert sorted((s["round"], s["site"]) for s in validate_lines) == [(r, f"site-{i}") for r in (0, 1) for i in (1, 2, 3)]
    # Round 0's model is validated in round 1's broadcast: a site sampled in round 1 evaluates it before
    # training, so its validate line of round 0 is its round-1 train line's global-on-local figure.
    for line in train_lines:
        if line["round"] == 1:
            validated = next(v for v in validate_lines if v["round"] == 0 and v["site"] == line["site"])
            assert validated["global_on_local_acc"] == line["global_on_local_acc"]
    # BwT as docs/design.md, Forgetting: NFR and BwT defines it, recomputed from the file's own validate lines and sampled sites.
    baselines: dict[str, float] = {}
    for line in rounds:
        current = {v["site"]: v["global_on_local_acc"] for v in validate_lines if v["round"] == line["round"]}
        references = {site: acc for site, acc in baselines.items() if site in current}
        expected = sum(current[site] - acc for site, acc in references.items()) / len(references) if references else None
        assert line["bwt"] == pytest.approx(expected) and line["bwt_sites"] == len(references)
        baselines.update({site: current[site] for site in line["sampled_sites"]})
    # File order: round r's validate lines and round line come before round r + 1's train lines.
    order = [(r.get("task", "round"), r["round"]) for r in (json.loads(x) for x in metrics.read_text().splitlines()[1:])]
    assert order.index(("round", 0)) < order.index(("train", 1)) and order[-1] == ("round", 1)
    # Each site set itself up when the job started (START_RUN), before its first task.
    for site in ("site-1", "site-2", "site-3"):
        log = (workspace / site / "log.txt").read_text()
        assert log.index("local test samples from") < log.index("got task assignment"), site
    round_one = [s for s in train_lines if s["round"] == 1]
    assert sum(s["weight"] for s in round_one) == pytest.approx(1.0)
    # Artifacts the README points to.
    assert (metrics.parent / "global_model.pt").exists()
    # Model selection on global_val.json (the federation has one): the best round's model is kept beside the
    # latest, and best_val_round is the running argmax of val_acc (earliest on ties).
    assert all(isinstance(line["val_acc"], float) for line in rounds)
    best = [max(range(r + 1), key=lambda i: (rounds[i]["val_acc"], -i)) for r in range(len(rounds))]
    assert [line["best_val_round"] for line in rounds] == best
    assert (metrics.parent / "best_global_model.pt").exists()
    if best[-1] == rounds[-1]["round"]:  # the last round's model was the best: the two files hold the same weights
        import torch

        latest, kept = (torch.load(metrics.parent / name, weights_only=True) for name in ("global_model.pt", "best_global_model.pt"))
        assert all(torch.equal(latest[key], kept[key]) for key in latest)
    trained = {line["site"] for line in train_lines}
    checkpoints = {path.parts[-3] for path in workspace.glob("site-*/simulate_job/personalized_model.pt")}
    assert checkpoints == trained, "every site that trained keeps its personalized model"
    assert list((metrics.parent / "tb_events").rglob("events.out.tfevents.*"))
    # The report reads what the server wrote: every summary figure is there.
    summary = summarize(load_run(workspace))
    # (no site is held out here, so there is no unseen-site accuracy)
    missing = [key for key, value in summary.items() if value is None and key != "final_mean_unseen_site_acc"]
    assert not missing, f"report found no value for {missing}"
    # FLARE enforced the allow-list: our prefix was added, never "*".
    allow_list = json.loads((workspace / "local" / "resources.json").read_text())["class_allow_list"]
    assert "fedkper_monai." not in allow_list and "*" not in allow_list
    assert set(allowed_classes()) <= set(allow_list)
    assert [entry for entry in allow_list if entry.startswith("fedkper_monai")] == allowed_classes()


# Ditto's recorded run is reproduced by the comparison of tests/system/test_compare_resume.py (one process per
# site, as here) and by tests/system/test_threads.py (the simulate command, -t 2): one FLARE start fewer.
@pytest.mark.parametrize(("algorithm", "algorithm_args"), [("local", {})], ids=["local"])
def test_personal_model_algorithms_reproduce_their_recorded_metrics(algorithm, algorithm_args, retina_federation, golden_run_args, tmp_path):
    # The sites that keep their own model across rounds (Ditto's personal model, Local-only's) take the
    # other branch of the site round; their metrics were recorded with the same partition and settings.
    meta, server, client = load_job("jobs/fedavg_medmnist")
    site_args(client).update(algorithm=algorithm, algorithm_args=algorithm_args)
    controller_args(server)["algorithm"] = algorithm
    job = save_job_configs(tmp_path / "job" / algorithm, meta, server, client)
    workspace = tmp_path / "ws"
    assert main(["simulate", str(job), "-w", str(workspace), "--data-root", str(retina_federation), *golden_run_args]) == 0
    assert_matches_golden(find_metrics(workspace), f"golden_{algorithm}_retina_3sites.jsonl")
