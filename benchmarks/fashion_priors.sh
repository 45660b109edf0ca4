#!/usr/bin/env bash
# The Fashion-MNIST priors table of the README: one network width (MLP 784-300-300 with
# latent 40, as in the VampPrior paper's code), dynamically binarized pixels, Bernoulli
# likelihood, batch 100, Adam 5e-4 and one epoch budget for every row; held-out ELBO and
# IWAE log p(x) with K = 5000 on the first 1000 test images; active units of the last
# epoch. Two runs at a time, one torch thread each (2 cores). Resumable: rerun the same
# command and finished rows are kept, unfinished ones continue from their checkpoint.
#
#   bash benchmarks/fashion_priors.sh [EPOCHS] [OUT]     # defaults: 10 runs/priors
#
# Writes OUT/<row>/ (run folders), OUT/<row>/eval5000.json and prints the table.
set -euo pipefail
EPOCHS=${1:-10}
OUT=${2:-runs/priors}
PY=${PYTHON:-python}
mkdir -p "$OUT"
common=(--dataset fashion-mnist --binarize dynamic --hidden 300 300 --latent-dim 40
        --batch-size 100 --learning-rate 5e-4 --num-epochs "$EPOCHS" --num-threads 1
        --num-eval-samples 10 --diagnostic-items 1000 --no-progress -q)

row() {  # name, then extra flags
    local name=$1; shift
    local start=$SECONDS
    if [ -f "$OUT/$name/eval5000.json" ]; then return; fi
    if [ -f "$OUT/$name/checkpoint.pt" ]; then
        "$PY" -m pyrovae train --workdir "$OUT/$name" --resume --no-progress -q > "$OUT/$name.train.json"
    else
        "$PY" -m pyrovae train "${common[@]}" --workdir "$OUT/$name" "$@" > "$OUT/$name.train.json"
    fi
    local trained=$SECONDS
    OMP_NUM_THREADS=1 "$PY" -m pyrovae evaluate "$OUT/$name" -k 5000 --num-items 1000 \
        --batch-size 10 -q > "$OUT/$name/eval5000.tmp" && mv "$OUT/$name/eval5000.tmp" "$OUT/$name/eval5000.json"
    echo "$name train_s=$((trained - start)) eval_s=$((SECONDS - trained))" >> "$OUT/times.txt"
}

begin=$SECONDS
( row normal
  row flow --prior flow --num-flows 2
  row hvae --model hvae
  row hvae_vamp --model hvae --prior vamp --num-pseudo-inputs 500 ) &
( row mixture --prior mixture --num-components 500
  row vamp --prior vamp --num-pseudo-inputs 500 ) &
wait
echo "total wall clock: $((SECONDS - begin)) s ($EPOCHS epochs)" >> "$OUT/times.txt"
cat "$OUT/times.txt"

"$PY" - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
rows = [("normal", "vae, normal prior"), ("mixture", "vae, mixture prior (500 components)"),
        ("vamp", "vae, VampPrior (500 pseudo-inputs)"), ("flow", "vae, flow prior (2 MAF steps)"),
        ("hvae", "hvae, normal prior on z2"), ("hvae_vamp", "hvae, VampPrior on z2")]
print("| model | held-out ELBO | IWAE log p(x), K = 5000 | active units | train s |")
print("|---|---:|---:|---:|---:|")
for name, label in rows:
    r = json.loads((out / name / "eval5000.json").read_text())
    metrics = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
    last = metrics[-1]
    sites = sorted(k.split("/")[1] for k in last if k.startswith("active_units/"))
    units = " + ".join(f"{last['active_units/' + s]} ({s})" for s in sites) or str(last["active_units"])
    seconds = sum(m["seconds"] for m in metrics)
    print(f"| {label} | {r['elbo']:.2f} | {r['log_likelihood']:.2f} | {units} | {seconds:.0f} |")
PY
