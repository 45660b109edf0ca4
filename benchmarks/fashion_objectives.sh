#!/usr/bin/env bash
# The Fashion-MNIST objectives table of the README: one network (MLP 784-400-50,
# dynamically binarized pixels, Bernoulli likelihood, batch 128, Adam 1e-3) and one
# epoch budget for every row; held-out ELBO and IWAE log p(x) with K = 5000 on the
# first 1000 test images. Two runs at a time, one torch thread each (2 cores).
#
#   bash benchmarks/fashion_objectives.sh [EPOCHS] [OUT]     # defaults: 5 runs/objectives
#
# Writes OUT/<row>/ (run folders), OUT/<row>/eval5000.json and prints the table.
set -euo pipefail
EPOCHS=${1:-5}
OUT=${2:-runs/objectives}
PY=${PYTHON:-python}
mkdir -p "$OUT"
common=(--dataset fashion-mnist --binarize dynamic --hidden 400 --latent-dim 50
        --batch-size 128 --num-epochs "$EPOCHS" --num-threads 1 --num-eval-samples 10
        --no-progress -q)

row() {  # name, then extra flags
    local name=$1; shift
    local start=$SECONDS
    if [ ! -f "$OUT/$name/checkpoint.pt" ]; then
        "$PY" -m pyrovae train "${common[@]}" --workdir "$OUT/$name" "$@" > "$OUT/$name.train.json"
    fi
    local trained=$SECONDS
    OMP_NUM_THREADS=1 "$PY" -m pyrovae evaluate "$OUT/$name" -k 5000 --num-items 1000 \
        --batch-size 10 -q > "$OUT/$name/eval5000.json"
    echo "$name train_s=$((trained - start)) eval_s=$((SECONDS - trained))" >> "$OUT/times.txt"
}

begin=$SECONDS
: > "$OUT/times.txt"
row iwae50 --elbo IWAE --num-particles 50 &
( row trace --elbo Trace_ELBO
  row meanfield --elbo TraceMeanField_ELBO
  row iwae5 --elbo IWAE --num-particles 5
  row iaf --elbo Trace_ELBO --guide iaf --num-flows 2 ) &
wait
echo "total wall clock: $((SECONDS - begin)) s ($EPOCHS epochs)" >> "$OUT/times.txt"
cat "$OUT/times.txt"

"$PY" - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
rows = [("trace", "Trace_ELBO"), ("meanfield", "TraceMeanField_ELBO"), ("iwae5", "IWAE, K = 5"),
        ("iwae50", "IWAE, K = 50"), ("iaf", "Trace_ELBO, IAF guide (2 steps)")]
print("| objective | held-out ELBO | IWAE log p(x), K = 5000 | gap |")
print("|---|---:|---:|---:|")
for name, label in rows:
    r = json.loads((out / name / "eval5000.json").read_text())
    print(f"| {label} | {r['elbo']:.2f} | {r['log_likelihood']:.2f} | {r['kl_gap']:.2f} |")
PY
