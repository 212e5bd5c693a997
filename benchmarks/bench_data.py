"""2D data pipeline throughput: images/s without cache (PNG decoded every epoch) and with CacheDataset.

Imports a real data set from ../shared/data (brain_tumor_mri_64 by default) into a temporary folder with
``fedkper-monai prepare medmnist``, then times full passes over the pooled training images of all sites
through ``transforms/classification_2d.json`` with the loader the learner uses (batch 12, shuffled, main
process). Writes ``benchmarks/results/bench_data.json`` atomically and prints it.

Run: ``python benchmarks/bench_data.py [--npz PATH] [--epochs 3]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import provenance  # beside this file: commit, load average, CPU count and date of the run
import torch

from fedkper_monai.data import build_transforms, import_medmnist, load_datalist, make_dataset, make_loader
from fedkper_monai.io import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_NPZ = ROOT.parent / "shared" / "data" / "brain_tumor_mri" / "brain_tumor_mri_64.npz"


def _images_per_second(dataset, epochs: int, batch_size: int) -> tuple[float, float]:
    """(images/s over ``epochs`` full passes, seconds of one pass)."""
    loader = make_loader(dataset, batch_size=batch_size, shuffle=True, seed=0)
    count, start = 0, time.perf_counter()
    for _ in range(epochs):
        for batch in loader:
            count += batch["image"].shape[0]
    elapsed = time.perf_counter() - start
    return count / elapsed, elapsed / epochs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--npz", default=str(DEFAULT_NPZ))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=12)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_data.json"))
    args = parser.parse_args()
    record = provenance.start("bench_data")
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        start = time.perf_counter()
        import_medmnist(data_dir, npz=args.npz, num_sites=4, alpha=0.5, seed=0, progress=False)
        import_seconds = time.perf_counter() - start
        sites = [load_datalist(p) for p in sorted(data_dir.glob("site-*.json"))]
        entries = [e for s in sites for e in s.training]
        transform = build_transforms("classification_2d", image_size=sites[0].image_size)

        cold_ips, cold_pass = _images_per_second(make_dataset(entries, transform, cache="none"), args.epochs, args.batch_size)
        start = time.perf_counter()
        cached = make_dataset(entries, transform, cache="memory")
        fill_seconds = time.perf_counter() - start
        cached_ips, cached_pass = _images_per_second(cached, args.epochs, args.batch_size)

    result = {
        "benchmark": "2D data pipeline throughput (transforms/classification_2d.json, monai DataLoader, main process)",
        "data": str(Path(args.npz).relative_to(ROOT.parent)) if Path(args.npz).is_relative_to(ROOT.parent) else args.npz,
        "images": len(entries),
        "image_size": sites[0].image_size,
        "batch_size": args.batch_size,
        "epochs_timed": args.epochs,
        "import_seconds": round(import_seconds, 2),
        "cold_images_per_s": round(cold_ips, 1),
        "cold_seconds_per_epoch": round(cold_pass, 3),
        "cache_fill_seconds": round(fill_seconds, 2),
        "cached_images_per_s": round(cached_ips, 1),
        "cached_seconds_per_epoch": round(cached_pass, 3),
        "cached_over_cold": round(cached_ips / cold_ips, 2),
        "target_cached_over_cold": 5.0,
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, torch {torch.__version__}, python {sys.version.split()[0]}",
        "command": "python benchmarks/bench_data.py",
        "provenance": provenance.finish(record),
    }
    atomic_write_json(args.out, result)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
