"""Global accuracy under attacking sites: a 10-site in-process federation with 0, 1 and 2 attackers.

Run from the repository root:

    python benchmarks/bench_robustness.py

Real data and the real components, no FLARE process: ``--train-images`` (default 600) training images drawn
(seed 0) from ``../shared/data/medmnist/pneumoniamnist.npz``'s train split, with its whole test split, are split
by the project's importer (``fedkper-monai prepare medmnist``) into 10 sites (Dirichlet(1.0), seed 0) in a
temporary folder (small, so the 9 runs take ~10 minutes on 2 shared cores);
each site is the project's :class:`~fedkper_monai.training.site.Site` (FedKPer's local round), the server is
:class:`~fedkper_monai.flare.aggregator.FedKPerAggregator` with its defaults (score weighting, the 10x norm
bound, the 3x-median clip, the 4x-median claim cap) and :class:`~fedkper_monai.flare.evaluator.GlobalEvaluator`
on the official test split. Every site trains every round (10 updates a round).

Attacks (sites ``site-1`` and ``site-2`` attack, the others are honest):

- ``sign_flip``: the attacker trains honestly, then sends ``g - s (w - g)`` with ``s`` putting it at 0.99x the
  absolute norm bound (``||w_sent - g|| = 9.9 ||g||``), and claims score 1.0;
- ``noise``: ``g`` plus Gaussian noise scaled to 0.99x the norm bound, score 1.0;
- ``label_flip``: the attacker trains on constantly wrong labels (``(y + 1) mod C``) and reports what its
  site round computes.

Also two runs against one sign-flip attacker: the round-relative bounds off (``clip_multiple=0,
claim_multiple=0``), to show what the clip holds back, and the bounds with ``max_weight=0.1`` (1 / sites). Prints the final global accuracy of each run beside the
honest run's and writes ``benchmarks/results/bench_robustness.json`` (with the commit and load average).
Goal: within 0.05 of the honest run with one attacker.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import provenance  # beside this file: commit, load average, CPU count and date of the run
import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_NPZ = ROOT.parent / "shared" / "data" / "medmnist" / "pneumoniamnist.npz"
RESULT_PATH = ROOT / "benchmarks" / "results" / "bench_robustness.json"
NUM_SITES = 10
ALPHA = 1.0
ATTACKS = ("sign_flip", "noise", "label_flip")
ATTACKERS = ("site-1", "site-2")
GOAL = 0.05
SENT_FRACTION_OF_BOUND = 0.99


def _subsampled_npz(npz: Path, out: Path, train_images: int) -> Path:
    """``npz`` with ``train_images`` of its training images (a seeded draw) and its whole val and test splits."""
    with np.load(npz) as data:
        arrays = {key: data[key] for key in data.files}
    keep = np.sort(np.random.default_rng(0).choice(len(arrays["train_labels"]), size=train_images, replace=False))
    arrays["train_images"], arrays["train_labels"] = arrays["train_images"][keep], arrays["train_labels"][keep]
    np.savez(out, **arrays)
    return out


def _flipped_datalist(path: Path) -> Path:
    """A copy of a site's datalist whose training labels are all wrong, beside it (image paths stay relative)."""
    datalist = json.loads(path.read_text())
    classes = int(datalist["num_classes"])
    for entry in datalist["training"]:
        entry["label"] = (int(entry["label"]) + 1) % classes
    flipped = path.with_name(f"{path.stem}-flipped.json")
    flipped.write_text(json.dumps(datalist))
    return flipped


def _float_norm(state: dict[str, np.ndarray]) -> float:
    return float(np.sqrt(sum(float(np.sum(v.astype(np.float64) ** 2)) for v in state.values() if v.dtype.kind == "f")))


def _at_the_bound(direction: dict[str, np.ndarray], reference: dict[str, np.ndarray], bound: float) -> dict[str, np.ndarray]:
    """``reference + s * direction`` on the float keys, ``s`` putting it at 0.99x the absolute norm bound."""
    size = max(_float_norm(reference), 1.0)
    scale = SENT_FRACTION_OF_BOUND * bound * size / max(_float_norm(direction), 1e-12)
    return {k: (reference[k] + scale * direction[k]).astype(reference[k].dtype) if reference[k].dtype.kind == "f" else reference[k]
            for k in reference}


def _attack(attack: str, model: Any, reference: dict[str, np.ndarray], bound: float, rng: np.random.Generator) -> None:
    """Turn an honest train result into the attacker's (in place)."""
    if attack == "sign_flip":
        direction = {k: -(np.asarray(model.params[k], np.float64) - reference[k]) for k in reference}
    elif attack == "noise":
        direction = {k: rng.standard_normal(reference[k].shape) for k in reference}
    else:
        return  # label_flip: the site itself trained on wrong labels
    model.params = _at_the_bound(direction, reference, bound)
    model.meta["score"] = 1.0


def run_federation(data_dir: Path, work: Path, network: dict, rounds: int, epochs: int, lr: float, attack: str | None,
                   attackers: tuple[str, ...], aggregator_args: dict) -> dict[str, Any]:
    """One federation run; returns the global accuracy per round and what the aggregator clipped."""
    from fedkper_monai.flare.aggregator import FedKPerAggregator
    from fedkper_monai.flare.evaluator import GlobalEvaluator
    from fedkper_monai.flare.messages import report_to_flmodel
    from fedkper_monai.flare.persistor import NetworkPersistor
    from fedkper_monai.flare.weights import to_numpy, to_torch
    from fedkper_monai.training.site import Site, SiteConfig

    config = SiteConfig.from_mapping({"network": network, "local_epochs": epochs, "lr": lr, "seed": 0})
    sites = [f"site-{index}" for index in range(1, NUM_SITES + 1)]
    built = {}
    for site in sites:
        datalist = data_dir / f"{site}.json"
        if attack == "label_flip" and site in attackers:
            datalist = _flipped_datalist(datalist)
        built[site] = Site(site, datalist, config, state_dir=work / site)
    aggregator = FedKPerAggregator(**aggregator_args)
    evaluator = GlobalEvaluator(network=network, data_root=str(data_dir))
    params = to_numpy(NetworkPersistor(network=network, seed=0).initial_state())
    rng = np.random.default_rng(0)
    accuracies, clipped, weights = [], [], []
    for round_index in range(rounds):
        aggregator.reset_stats()
        aggregator.set_reference(params)
        reference = {k: np.asarray(v) for k, v in params.items()}
        for site in sites:
            report = built[site].train_round(to_torch(params), round_index, round_index, initial=round_index == 0)
            model = report_to_flmodel(report)
            model.meta["client_name"] = site
            if attack is not None and site in attackers:
                _attack(attack, model, reference, aggregator.max_norm_ratio, rng)
            aggregator.accept_model(model)
        params = aggregator.aggregate_model().params
        accuracies.append(float(evaluator.evaluate(params)["accuracy"]))
        clipped.append({site: round(c, 4) for site, c in aggregator.last_clipped.items()})
        weights.append({site: round(w, 4) for site, w in aggregator.last_weights.items() if site in attackers})
        print(f"    round {round_index}: global acc {accuracies[-1]:.3f}, clipped {clipped[-1]}, dropped {sorted(aggregator.last_dropped)}", flush=True)
    return {"global_acc": accuracies, "final_global_acc": accuracies[-1], "clipped": clipped, "attacker_weights": weights}


def _summarize(result: dict[str, Any], started: float) -> None:
    """Gaps to the honest run, whether the goal holds (over the one-attacker runs measured so far), load, time."""
    honest = result["runs"]["honest"]["final_global_acc"]
    result["gap_to_honest"] = {name: round(honest - run["final_global_acc"], 4) for name, run in result["runs"].items()}
    one = [result["gap_to_honest"][f"{attack}_1"] for attack in ATTACKS if f"{attack}_1" in result["runs"]]
    result["goal_met"] = bool(one) and all(gap <= GOAL for gap in one)
    result["load_average_end"] = provenance.finish(result["provenance"])["load_average_end"]
    result["wall_seconds"] = round(time.perf_counter() - started, 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--npz", default=str(DEFAULT_NPZ), help="MedMNIST-layout .npz (default pneumoniamnist)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--train-images", type=int, default=600, help="training images drawn from the npz (default 600)")
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=0.05, help="site SGD lr (default 0.05: few rounds must learn)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--out", default=str(RESULT_PATH))
    args = parser.parse_args()
    record = provenance.start("bench_robustness")
    torch.set_num_threads(args.threads)
    from fedkper_monai.data import import_medmnist
    from fedkper_monai.io import atomic_write_json

    result: dict[str, Any] = {
        "benchmark": "global accuracy with 0, 1 and 2 attacking sites of 10 (in-process, real Site and FedKPerAggregator)",
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
        "commit": record["commit"],
        "data": str(Path(args.npz).name),
        "settings": {"sites": NUM_SITES, "alpha": ALPHA, "partition_seed": 0, "rounds": args.rounds,
                     "local_epochs": args.local_epochs, "lr": args.lr, "train_images": args.train_images, "sample_fraction": 1.0, "attackers": list(ATTACKERS),
                     "torch_threads": args.threads},
        "goal": f"within {GOAL} of the honest run's final global accuracy with one attacker",
        "load_average_start": record["load_average_start"],
        "provenance": record,
        "runs": {},
    }
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_robustness_") as tmp:
        data_dir = Path(tmp) / "data"
        npz = _subsampled_npz(Path(args.npz), Path(tmp) / "train_subset.npz", args.train_images)
        summary = import_medmnist(data_dir, npz=npz, num_sites=NUM_SITES, alpha=ALPHA, seed=0, progress=False)
        network = {"name": "reference_cnn", "spatial_dims": 2, "in_channels": 1, "num_classes": int(summary["num_classes"]),
                   "image_size": [28, 28]}
        # Most telling first: the JSON is rewritten after every run, so a stopped benchmark keeps what it measured.
        plan = [("honest", None, (), {})]
        plan += [(f"{attack}_1", attack, ATTACKERS[:1], {}) for attack in ATTACKS]
        plan += [("sign_flip_1_unbounded", "sign_flip", ATTACKERS[:1], {"clip_multiple": 0, "claim_multiple": 0})]
        plan += [(f"{attack}_2", attack, ATTACKERS, {}) for attack in ATTACKS]
        plan += [("sign_flip_1_max_weight_0.1", "sign_flip", ATTACKERS[:1], {"max_weight": 0.1})]
        for name, attack, attackers, aggregator_args in plan:
            print(f"{name}: attackers {list(attackers)}", flush=True)
            run_started = time.perf_counter()
            run = run_federation(data_dir, Path(tmp) / name, network, args.rounds, args.local_epochs, args.lr, attack, attackers, aggregator_args)
            run["seconds"] = round(time.perf_counter() - run_started, 1)
            result["runs"][name] = run
            _summarize(result, started)
            atomic_write_json(args.out, result)
    honest = result["runs"]["honest"]["final_global_acc"]
    print(f"\nfinal global accuracy after {args.rounds} rounds (honest run: {honest:.3f})")
    for name, run in result["runs"].items():
        print(f"  {name:24s} {run['final_global_acc']:.3f}  gap {result['gap_to_honest'][name]:+.3f}")
    print(f"goal (one attacker within {GOAL} of honest): {'met' if result['goal_met'] else 'MISSED'}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
