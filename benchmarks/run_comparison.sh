#!/usr/bin/env bash
# The comparison behind benchmarks/RESULTS.md, one data set per call:
#   bash benchmarks/run_comparison.sh brain_tumor_mri/brain_tumor_mri_28.npz brain28
#   bash benchmarks/run_comparison.sh medmnist/retinamnist.npz retina
#   SITES=9 ALGORITHMS=fedkper,fedavg bash benchmarks/run_comparison.sh bccd_wbc/bccd_wbc_64.npz bccd
#   SITES=9 ALGORITHMS=fedkper,fedavg BASE_JOB=benchmarks/jobs/fedkper_densenet121 bash benchmarks/run_comparison.sh \
#     bccd_wbc/bccd_wbc_64.npz bccd_densenet121      # the same with MONAI's DenseNet121 (batch normalization)
#   SITES=10 SAMPLE_FRACTION=0.2 ALGORITHMS=fedkper,fedavg,fedkper_blend bash benchmarks/run_comparison.sh \
#     medmnist/breastmnist.npz breast                  # two classes: few sites reach 10 samples at Dirichlet(0.1)
#   SITES=16 SAMPLE_FRACTION=0.125 ALGORITHMS=fedkper,fedavg,fedkper_blend bash benchmarks/run_comparison.sh \
#     medmnist/pneumoniamnist.npz pneumonia            # (10 + 2, 16 + 2), so 2 sites a round are 20% / 12.5%
# (BCCD's 245 training images: 10 + 2 sites leave a site under the 10-sample minimum at Dirichlet(0.1), 9 + 2 do not.)
# Settings (issue 10's budget): SITES training sites (default 20) plus HOLDOUT held-out sites (default 2: never
# trained; the server scores the global model on them every round), Dirichlet(0.1) label skew (seed 0), 10% of
# the training sites per round (SAMPLE_FRACTION; 10% of 20 sites is 2, of 9-16 sites is 1, and with one site a
# round the aggregation weights are always 1: FedKPer's score then does nothing), reference CNN, 5 local epochs,
# batch 12, SGD 0.01; ROUNDS rounds (default 100), every site validated every round (BwT), seeds SEEDS (default
# 0,1,2: sampling, init, shuffling); Centralized ROUNDS/10 rounds (see below).
# A 100-round run takes 4-5 (RetinaMNIST), 8-13 (brain MRI) or 12-14 (BCCD: at 64x64 the CNN is a 34 MB model)
# minutes here: the comparison is resumable (finished runs are skipped, a stopped run continues from its last
# round), so it can be stopped and continued across sessions. Outputs: RUNS_DIR/<name>/ (default benchmarks/runs; its
# small files, done.json and each run's metrics.jsonl, are kept in git so a later session resumes) and
# benchmarks/results/<name>/ (the report).
set -euo pipefail
npz="../shared/data/$1"
name="$2"
rounds="${ROUNDS:-100}"
sites="${SITES:-20}"
holdout="${HOLDOUT:-2}"
seeds="${SEEDS:-0,1,2}"
algorithms="${ALGORITHMS:-fedkper,fedavg,fedntd,ditto,local,centralized}"
sample_fraction="${SAMPLE_FRACTION:-0.1}"
base_job="${BASE_JOB:-jobs/fedkper_medmnist}"   # the job every algorithm derives from (its network, transforms)
runs="${RUNS_DIR:-benchmarks/runs}/$name"
# The partition is deterministic: a later session rebuilds the same one (git keeps only its summary.json).
if [ ! -f "$runs/data/site-1.json" ]; then
  fedkper-monai prepare medmnist --npz "$npz" --sites $((sites + holdout)) --holdout-sites "$holdout" --alpha 0.1 \
    --seed 0 --out "$runs/data" --no-progress --overwrite
fi
# Centralized (the upper bound) trains on all pooled training data every round, ten times what a federated
# round of 10% of the sites trains: it runs ROUNDS/10 rounds (CENTRAL_ROUNDS), the same 50 passes over the
# training data as 100 federated rounds on average, not 500.
federated=$(tr ',' '\n' <<<"$algorithms" | { grep -vx centralized || true; } | paste -sd, -)
central_rounds="${CENTRAL_ROUNDS:-$(( rounds >= 10 ? rounds / 10 : 1 ))}"
if [ -n "$federated" ]; then
  fedkper-monai compare --data-root "$runs/data" --algorithms "$federated" \
    -n "$sites" -t "$sites" --rounds "$rounds" --sample-fraction "$sample_fraction" --validate-every 1 --seeds "$seeds" \
    --base-job "$base_job" --out "$runs/compare"
fi
if [ "$federated" != "$algorithms" ]; then
  fedkper-monai compare --data-root "$runs/data" --algorithms centralized \
    -n "$sites" -t "$sites" --rounds "$central_rounds" --validate-every 1 --seeds "$seeds" --base-job "$base_job" --out "$runs/compare"
fi
fedkper-monai report "$runs"/compare/*/seed* --out "benchmarks/results/$name" --overwrite
