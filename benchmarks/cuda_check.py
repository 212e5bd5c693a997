"""CUDA check of the site round: FedKPer's training step in fp32 and with AMP on a GPU, beside the CPU's round.

A site's defaults are ``device: auto`` and ``amp: true`` (``fedkper_monai.training.site_config.SiteConfig``), so every
site with a GPU trains with float16 autocast and gradient scaling; the tests run on CPUs, where AMP is off. This
script runs that path on a GPU and exits 1 when a check fails (2 when there is no CUDA device). It is a check run
by hand on a GPU machine, never part of the tests.

Data: the real BCCD white-blood-cell images at 64x64 (``../shared/data/bccd_wbc/bccd_wbc_64.npz``, or ``--npz``),
made into a 3-site Dirichlet(0.5) federation (seed 0) in a temporary folder by the importer behind
``fedkper-monai prepare medmnist``.

1. **Site rounds.** For the reference CNN and for ``densenet121`` (batch normalization), with the settings of
   ``benchmarks/jobs/fedkper_densenet121`` (5 local epochs, batch 12, SGD 0.01), one ``Site`` (the round FLARE's
   executor runs) per configuration -- CPU fp32, CUDA fp32, CUDA AMP -- runs ``--rounds`` FedKPer rounds from the
   same initial weights (CPU tensors, as FLARE hands them over), each round starting from the previous round's
   upload. Checks: every reported metric is finite; the upload has the received keys and dtypes and differs from
   what was received (AMP's scaler did not skip every step); the site model's parameters stay float32 under
   autocast; the initial model's local test accuracy is the same on every configuration within one sample.
   Reported: seconds of the last round (the first pays for start-up and cuDNN's choices) and their ratios, and
   the round's metrics side by side (they differ by floating-point order, not by design).
2. **Clipping under AMP.** One SGD step (no momentum, no weight decay) with ``max_grad_norm`` far below the
   gradient's norm moves the weights by lr * max_grad_norm, in fp32 and with AMP: the loop unscales the gradients
   before it clips them (clipping the scaled gradients would make the AMP step thousands of times too small).

Writes ``benchmarks/results/cuda_check.json`` (``--output``) atomically and prints a summary. Run from the
repository root: ``python benchmarks/cuda_check.py [--npz PATH] [--rounds 2] [--commit SHA]`` (``--commit`` names
the commit of a copied tree, such as a GPU machine's copy of the checkout).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import provenance  # beside this file: commit, load average, CPU count and date of the run

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_NPZ = ROOT.parent / "shared" / "data" / "bccd_wbc" / "bccd_wbc_64.npz"
DENSENET_JOB = ROOT / "benchmarks" / "jobs" / "fedkper_densenet121"
RESULT_PATH = ROOT / "benchmarks" / "results" / "cuda_check.json"
CLIP_TOLERANCE = 0.02  # relative: float16 gradients still clip to the same norm within this
CONFIGURATIONS = {"cpu_fp32": ("cpu", False), "cuda_fp32": ("cuda", False), "cuda_amp": ("cuda", True)}  # (device, amp)
CLIP_TRIES = 3  # GradScaler skips a step whose float16 gradients overflow (then halves its scale): try other batches


def _job_settings() -> dict[str, Any]:
    """The executor arguments of the DenseNet121 benchmark job that are site settings (network, epochs, ...)."""
    from fedkper_monai.flare.jobspec import load_job, site_args  # no FLARE import: plain JSON helpers
    from fedkper_monai.training.site_config import SiteConfig

    args = site_args(load_job(DENSENET_JOB)[2])
    fields = set(SiteConfig.__dataclass_fields__)
    return {key: value for key, value in args.items() if key in fields}


def _finite_metrics(metrics: dict[str, Any]) -> list[str]:
    return [key for key, value in metrics.items() if isinstance(value, float) and not math.isfinite(value)]


def _site_rounds(datalist: Path, settings: dict[str, Any], device: str, amp: bool, rounds: int,
                 state_dir: Path) -> tuple[dict[str, Any], list[str]]:
    """``rounds`` FedKPer rounds of one site; the figures of the last and the failed checks."""
    import torch

    from fedkper_monai.training import build_network
    from fedkper_monai.training.site import Site, SiteConfig

    config = SiteConfig(**{**settings, "device": device, "amp": amp, "share_diagnostics": True})
    torch.manual_seed(0)
    weights = build_network(**config.network).state_dict()
    site = Site("site-1", datalist, config, state_dir=state_dir)
    failures: list[str] = []
    label = f"{config.network['name']} {device}{' amp' if amp else ''}"
    seconds = 0.0
    report = None
    initial_accuracy = None
    for round_index in range(rounds):
        # The received weights are CPU tensors, as FLARE's message layer hands them over.
        evaluation = site.evaluate_global(weights, version=round_index, initial=round_index == 0)
        if round_index == 0:
            initial_accuracy = evaluation["global_on_local_acc"]
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        report = site.train_round(weights, round_index=round_index, version=round_index)
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        if report is None:
            failures.append(f"{label}: round {round_index} returned no report")
            break
        if set(report.upload) != set(weights):
            failures.append(f"{label}: the upload's keys differ from the received model's")
        # What FLARE's message layer sends: the upload copied to the CPU.
        upload = {key: value.detach().cpu().clone() for key, value in report.upload.items()}
        moved = max(float((upload[k].double() - weights[k].double()).abs().max())
                    for k in weights if weights[k].is_floating_point())
        if not moved > 0:
            failures.append(f"{label}: round {round_index} left the weights unchanged")
        for key, tensor in upload.items():
            if tensor.dtype != weights[key].dtype:
                failures.append(f"{label}: upload {key} is {tensor.dtype}, the model's is {weights[key].dtype}")
                break
        failures += [f"{label}: metric {key} is not finite" for key in _finite_metrics(report.metrics)]
        weights = upload
    wrong = sorted({str(p.dtype) for p in site.model.parameters()} - {"torch.float32"})
    if wrong:
        failures.append(f"{label}: the site model's parameters are {wrong}, not float32")
    metrics = report.metrics if report is not None else {}
    keep = {"score", "global_on_local_acc", "personalized_acc", "num_samples"}
    kept = {k: v for k, v in metrics.items() if k in keep or k.startswith(("train_", "strategy_"))}
    return {"last_round_seconds": round(seconds, 3), "initial_global_on_local_acc": initial_accuracy,
            "local_test_size": site.local_test_size, **kept}, failures


def _clip_step(device: str, amp: bool, network: dict[str, Any], max_norm: float = 1e-3, lr: float = 0.1) -> float:
    """The weights' move of one clipped SGD step over lr * max_norm (1.0 when the loop unscales before clipping).

    0.0 only when every try's step was skipped by the scaler (float16 overflow).
    """
    import torch

    from fedkper_monai.training import FedAvgStrategy, build_network, make_optimizer, select_device, train_local

    target = select_device(device)
    for attempt in range(CLIP_TRIES):
        torch.manual_seed(attempt)
        model = build_network(**network).to(target)
        generator = torch.Generator().manual_seed(attempt)
        batch = {"image": torch.randn(12, network["in_channels"], *network["image_size"], generator=generator),
                 "label": torch.randint(0, network["num_classes"], (12,), generator=generator)}
        before = torch.cat([p.detach().flatten().double().cpu() for p in model.parameters()])
        optimizer = make_optimizer(model, lr=lr, momentum=0.0, weight_decay=0.0)
        train_local(model, [batch], FedAvgStrategy(), epochs=1, optimizer=optimizer, device=target, amp=amp,
                    max_grad_norm=max_norm)
        after = torch.cat([p.detach().flatten().double().cpu() for p in model.parameters()])
        move = float((after - before).norm()) / (lr * max_norm)
        if move > 0:
            return move
    return 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--npz", type=Path, default=DEFAULT_NPZ, help="BCCD 64x64 .npz (default in ../shared/data)")
    parser.add_argument("--rounds", type=int, default=2, help="FedKPer rounds per configuration (default 2)")
    parser.add_argument("--configurations", default=",".join(CONFIGURATIONS),
                        help=f"comma-separated, of {', '.join(CONFIGURATIONS)} (default all; cpu_fp32 alone: "
                        "a dry run on a machine without CUDA)")
    parser.add_argument("--commit", default=None, help="the commit measured (a copied tree)")
    parser.add_argument("--output", type=Path, default=RESULT_PATH, help="where to write the JSON result")
    args = parser.parse_args(argv)

    import torch

    chosen = [name.strip() for name in args.configurations.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(CONFIGURATIONS))
    if unknown or not chosen:
        parser.error(f"--configurations: unknown {unknown or 'none given'}; valid: {', '.join(CONFIGURATIONS)}")
    if any(CONFIGURATIONS[name][0] == "cuda" for name in chosen) and not torch.cuda.is_available():
        print("cuda_check: no CUDA device on this machine; run it on a GPU machine", file=sys.stderr)
        return 2
    if not args.npz.is_file():
        print(f"cuda_check: {args.npz} not found (--npz)", file=sys.stderr)
        return 2

    from fedkper_monai.data.sources.npz import import_medmnist
    from fedkper_monai.io import atomic_write_json

    record = provenance.start("cuda_check")
    if args.commit:  # a copied tree's .git, if any, need not be the commit that was copied
        record["commit"] = args.commit
    settings = _job_settings()
    networks = {"reference_cnn": {**settings["network"], "name": "reference_cnn"}, "densenet121": settings["network"]}
    failures: list[str] = []
    rounds: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        federation = Path(tmp) / "federation"
        import_medmnist(federation, npz=args.npz, num_sites=3, alpha=0.5, seed=0)
        for name, network in networks.items():
            for configuration in chosen:
                device, amp = CONFIGURATIONS[configuration]
                key = f"{name}/{configuration}"
                state = Path(tmp) / key.replace("/", "_")
                figures, failed = _site_rounds(federation / "site-1.json", {**settings, "network": network},
                                               device, amp, args.rounds, state)
                rounds[key] = figures
                failures += failed
                print(f"{key}: {json.dumps(figures)}", flush=True)
    # The clipped step on both networks: DenseNet121's batch normalization is where float16 overflows first.
    clip = {f"{name}/{configuration}": round(_clip_step(*CONFIGURATIONS[configuration], network), 4)
            for name, network in networks.items() for configuration in chosen}
    failures += [f"clipping {key}: the step moved {value} x lr * max_grad_norm, not 1"
                 + (f" (the scaler skipped the step in all {CLIP_TRIES} tries)" if value == 0 else "")
                 for key, value in clip.items() if abs(value - 1.0) > CLIP_TOLERANCE]
    # The same initial weights on the same local test split: devices and precisions may differ by one borderline
    # sample at most.
    for name in networks:
        scored = {c: rounds[f"{name}/{c}"] for c in chosen}
        accuracies = [figures["initial_global_on_local_acc"] for figures in scored.values()]
        size = next(iter(scored.values()))["local_test_size"]
        if accuracies and (max(accuracies) - min(accuracies)) * size > 1 + 1e-9:
            failures.append(f"{name}: the initial model's local test accuracy differs by more than one sample "
                            f"between {', '.join(scored)}: {accuracies}")
    ratios = {}
    for name in networks:
        seconds = {configuration: rounds[f"{name}/{configuration}"]["last_round_seconds"] for configuration in chosen}
        if {"cpu_fp32", "cuda_fp32"} <= set(seconds):
            ratios.setdefault(name, {})["cuda_fp32_over_cpu"] = round(seconds["cuda_fp32"] / seconds["cpu_fp32"], 3)
        if {"cuda_fp32", "cuda_amp"} <= set(seconds):
            ratio = seconds["cuda_amp"] / seconds["cuda_fp32"]
            ratios.setdefault(name, {})["cuda_amp_over_cuda_fp32"] = round(ratio, 3)
    result = {
        "benchmark": "the site round on CUDA in fp32 and with AMP, beside the CPU; clipping under AMP",
        "command": "python benchmarks/cuda_check.py",
        "data": str(args.npz.name),
        "federation": "3 sites, Dirichlet(0.5), seed 0; site-1",
        "settings": {k: v for k, v in settings.items() if k != "network"},
        "configurations": chosen,
        "rounds_per_configuration": args.rounds,
        "rounds": rounds,
        "ratios": ratios,
        "clip_move_over_lr_times_max_norm": clip,
        "failures": failures,
        "passed": not failures,
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
        "provenance": provenance.finish(record),
    }
    atomic_write_json(args.output, result)
    for name, values in ratios.items():
        print(f"{name}: round-time ratios {json.dumps(values)}")
    print(f"clipping (move / lr*max_norm, 1 expected): {clip}")
    print("passed" if not failures else "FAILED:\n  " + "\n  ".join(failures))
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
