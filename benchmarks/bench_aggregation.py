"""Peak memory of the server's aggregation: streaming ``WeightedAverager`` vs collect-then-average.

Run from the repository root:

    python benchmarks/bench_aggregation.py

For each method (``streaming``, ``naive``, ``aggregator``) and each number of sites N (2 and 50) a fresh child
process averages N state dicts of a ~10M-parameter network. Each site's state dict is generated
on the fly from a seeded generator (as it would arrive from the network) and, for the streaming
method, released right after ``add()``. The naive method keeps all N and averages at the end. The
aggregator method runs one round of the server's ``FedKPerAggregator`` with ``max_weight=0.5``, so every
update goes to its spool file and is read back one at a time (the path of a clipped or capped round).

Peak memory is the child's peak resident set size (``getrusage(RUSAGE_SELF).ru_maxrss``) minus
the same value right after its imports and a warm-up; tracemalloc cannot see torch's allocations.
Writes ``benchmarks/results/bench_aggregation.json`` and prints the numbers. The target is a
streaming peak ratio (N=50 over N=2) of at most 1.2.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import provenance  # beside this file: commit, load average, CPU count and date of the run

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULT_PATH = REPO_ROOT / "benchmarks" / "results" / "bench_aggregation.json"
SITE_COUNTS = (2, 50)
METHODS = ("streaming", "naive", "aggregator")
TARGET_RATIO = 1.2

# A VGG-like classifier, ~10M parameters, with BatchNorm buffers (including the int64 counter).
LAYOUT: dict[str, tuple[int, ...]] = {
    "conv1.weight": (64, 3, 7, 7),
    "bn1.weight": (64,),
    "bn1.bias": (64,),
    "bn1.running_mean": (64,),
    "bn1.running_var": (64,),
    "bn1.num_batches_tracked": (),
    "conv2.weight": (128, 64, 3, 3),
    "conv3.weight": (256, 128, 3, 3),
    "conv4.weight": (512, 256, 3, 3),
    "conv5.weight": (512, 512, 3, 3),
    "conv6.weight": (512, 512, 3, 3),
    "fc1.weight": (1024, 3584),
    "fc1.bias": (1024,),
    "fc2.weight": (10, 1024),
    "fc2.bias": (10,),
}


def _peak_rss_mib() -> float:
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _site_state_dict(site: int):
    """One site's weights, generated from the site's seed: float32 tensors and an int64 buffer."""
    import torch

    generator = torch.Generator().manual_seed(1000 + site)
    state = {}
    for key, shape in LAYOUT.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(100 * (site + 1), dtype=torch.int64)
        else:
            state[key] = torch.randn(shape, generator=generator)
    return state


def _site_weight(site: int) -> float:
    # Deterministic, unequal positive weights (like FedKPer scores).
    return 0.1 + (site * 37 % 11) / 10.0


def _checksum(state) -> float:
    return float(sum(value.double().sum().item() for value in state.values()))


def _run_child(method: str, num_sites: int) -> dict:
    """Average ``num_sites`` generated state dicts with ``method``; report peak RSS growth."""
    import torch

    from fedkper_monai.algorithm import WeightedAverager

    if method == "aggregator":  # its imports (nvflare) belong to the baseline, not to the round
        import fedkper_monai.flare.aggregator  # noqa: F401

    # Warm up the allocator and torch's kernels on small tensors so the baseline includes them.
    warm = WeightedAverager()
    warm.add({"w": torch.randn(1000), "n": torch.tensor(1)}, 1.0)
    warm.result()
    del warm
    gc.collect()
    baseline = _peak_rss_mib()
    start = time.perf_counter()

    if method == "streaming":
        averager = WeightedAverager()
        for site in range(num_sites):
            state = _site_state_dict(site)
            averager.add(state, _site_weight(site))
            del state  # only the averager's running sums outlive the site
        result = averager.result()
    elif method == "naive":
        states = [_site_state_dict(site) for site in range(num_sites)]
        weights = [_site_weight(site) for site in range(num_sites)]
        total = sum(weights)
        result = {}
        for key, first in states[0].items():
            mean = sum(w * s[key].double() for s, w in zip(states, weights)) / total
            result[key] = (torch.round(mean) if not first.is_floating_point() else mean).to(first.dtype)
    elif method == "aggregator":
        result = _aggregator_round(num_sites)
    else:
        raise ValueError(f"unknown method {method!r}")

    seconds = time.perf_counter() - start
    peak = _peak_rss_mib()
    return {
        "method": method,
        "num_sites": num_sites,
        "baseline_mib": round(baseline, 1),
        "peak_mib": round(peak - baseline, 1),
        "seconds": round(seconds, 2),
        "checksum": _checksum(result),
    }


def _aggregator_round(num_sites: int):
    """One round of the server's FedKPerAggregator (its defaults plus ``max_weight=0.5``, so every update is
    read back from its spool file: the path a clipped or capped round takes)."""
    import numpy as np
    import torch
    from nvflare.app_common.abstract.fl_model import FLModel, ParamsType

    from fedkper_monai.flare.aggregator import FedKPerAggregator

    aggregator = FedKPerAggregator(max_weight=0.5, max_norm_ratio=0)
    aggregator.set_reference({key: value.numpy() for key, value in _site_state_dict(-1).items()})
    for site in range(num_sites):
        params = {key: value.numpy() for key, value in _site_state_dict(site).items()}
        meta = {"client_name": f"site-{site}", "score": _site_weight(site) / 1.2, "num_samples": 10}
        aggregator.accept_model(FLModel(params_type=ParamsType.FULL, params=params, meta=meta))
        del params
    return {key: torch.as_tensor(value) for key, value in aggregator.aggregate_model().params.items()}


def _measure(method: str, num_sites: int) -> dict:
    completed = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", method, str(num_sites)],
        check=True,
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
    )
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=2, metavar=("METHOD", "SITES"), help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, default=RESULT_PATH, help="where to write the JSON result")
    args = parser.parse_args(argv)

    if args.child:
        print(json.dumps(_run_child(args.child[0], int(args.child[1]))))
        return 0

    import torch

    from fedkper_monai.io import atomic_write_json

    record = provenance.start("bench_aggregation")
    parameter_count = 0
    for shape in LAYOUT.values():
        size = 1
        for dim in shape:
            size *= dim
        parameter_count += size

    runs = {method: {n: _measure(method, n) for n in SITE_COUNTS} for method in METHODS}
    peaks = {method: {str(n): runs[method][n]["peak_mib"] for n in SITE_COUNTS} for method in METHODS}
    low, high = SITE_COUNTS
    ratio = runs["streaming"][high]["peak_mib"] / runs["streaming"][low]["peak_mib"]
    naive_ratio = runs["naive"][high]["peak_mib"] / runs["naive"][low]["peak_mib"]
    aggregator_ratio = runs["aggregator"][high]["peak_mib"] / runs["aggregator"][low]["peak_mib"]
    # Both methods compute the same average: their checksums agree to float32 rounding.
    checksum_gap = max(
        abs(runs["streaming"][n]["checksum"] - runs["naive"][n]["checksum"]) for n in SITE_COUNTS
    )

    result = {
        "benchmark": "aggregation peak memory: streaming WeightedAverager vs collect-then-average, and the FedKPerAggregator round",
        "command": "python benchmarks/bench_aggregation.py",
        "parameter_count": parameter_count,
        "state_dict_mib": round(parameter_count * 4 / 2**20, 1),
        "site_counts": list(SITE_COUNTS),
        "peak_mib": peaks,
        "peak_ratio_50_over_2": round(ratio, 3),
        "naive_ratio_50_over_2": round(naive_ratio, 3),
        # FedKPerAggregator's round with every update read back from its spool file (max_weight 0.5)
        "aggregator_ratio_50_over_2": round(aggregator_ratio, 3),
        "target_peak_ratio": TARGET_RATIO,
        "meets_target": ratio <= TARGET_RATIO,
        "checksum_max_abs_gap": checksum_gap,
        "seconds": {method: {str(n): runs[method][n]["seconds"] for n in SITE_COUNTS} for method in METHODS},
        "measurement": "peak RSS (ru_maxrss) of a fresh child process per configuration, minus its peak "
        "right after imports and warm-up; state dicts generated per site and released after add()",
        "accumulators": "float64",
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "machine": platform.machine(),
        },
        "provenance": provenance.finish(record),
    }
    atomic_write_json(args.output, result)

    print(f"parameters: {parameter_count:,} ({result['state_dict_mib']} MiB per float32 state dict)")
    for method in METHODS:
        line = ", ".join(f"N={n}: {runs[method][n]['peak_mib']:.1f} MiB" for n in SITE_COUNTS)
        print(f"{method:>9} peak: {line}")
    print(f"peak_ratio_50_over_2 (streaming): {ratio:.3f} (target <= {TARGET_RATIO})")
    print(f"naive_ratio_50_over_2: {naive_ratio:.3f}")
    print(f"aggregator_ratio_50_over_2 (FedKPerAggregator, spooled): {aggregator_ratio:.3f}")
    print(f"checksum gap between methods: {checksum_gap:.3g}")
    print(f"wrote {args.output}")
    return 0 if ratio <= TARGET_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
