#!/usr/bin/env bash
# The comparison behind benchmarks/RESULTS.md, one data set per call:
#   bash benchmarks/run_comparison.sh medmnist/retinamnist.npz retina
#   bash benchmarks/run_comparison.sh brain_tumor_mri/brain_tumor_mri_28.npz brain28
# Settings: 20 sites, Dirichlet(0.1) label skew (seed 0), 10% of sites per round, reference CNN,
# 5 local epochs, batch 12, SGD 0.01; ROUNDS rounds (default 20) and 3 seeds (sampling, init, shuffling).
# Resumable: finished runs are skipped. Outputs: runs/<name>/ and benchmarks/results/<name>/ (report).
set -euo pipefail
npz="../shared/data/$1"
name="$2"
rounds="${ROUNDS:-20}"
runs="runs/$name"
fedkper-monai prepare medmnist --npz "$npz" --sites 20 --alpha 0.1 --seed 0 --out "$runs/data" 2>/dev/null \
  || echo "using the existing partition in $runs/data"
fedkper-monai compare --data-root "$runs/data" \
  --algorithms fedkper,fedavg,fedprox,fedntd,ditto,local,centralized \
  -n 20 -t 20 --rounds "$rounds" --validate-every 5 --seeds 0,1,2 --out "$runs/compare"
fedkper-monai report "$runs"/compare/*/seed* --out "benchmarks/results/$name" --overwrite
