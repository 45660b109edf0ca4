#!/usr/bin/env bash
# The GPU checks of one short device session: the CUDA tests, then the step and epoch
# tables on the GPU (eager, JitTrace_ELBO, --compile, which takes CUDA graphs there via
# torch.compile(mode="reduce-overhead"), and the compiled plain-PyTorch reference).
# About 8 minutes on one H100/H200; each part is cut off by its own time limit so that
# the tables written so far still come back.
#
#   bash benchmarks/gpu.sh [OUT]          # default OUT: gpu-results
#
# Writes OUT/tests.log, OUT/step.md, OUT/epoch.md (Markdown tables) and OUT/env.txt.
# Fashion-MNIST is read from DATA_DIR (default: Debian's /usr/share/datasets/fashion-mnist);
# without it the epoch table runs on the bundled digits.
set -uo pipefail
OUT=${1:-gpu-results}
PY=${PYTHON:-python}
DATA_DIR=${DATA_DIR:-/usr/share/datasets/fashion-mnist}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; "$PY" -c \
  'import torch, pyro; print("torch", torch.__version__, "cuda", torch.version.cuda, "pyro", pyro.__version__)'
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

timeout 120 "$PY" -m pytest -q -p no:cacheprovider -m cuda tests 2>&1 | tee "$OUT/tests.log"

elbos=(--elbo Trace_ELBO TraceMeanField_ELBO JitTrace_ELBO)
timeout 180 "$PY" benchmarks/svi_step.py --device cuda "${elbos[@]}" --batch-sizes 128 256 1024 \
    --rounds 5 --markdown "$OUT/step.md"
data=(--dataset fashion-mnist --data-dir "$DATA_DIR")
[ -d "$DATA_DIR" ] || data=(--dataset digits)
timeout 240 "$PY" benchmarks/svi_epoch.py --device cuda "${elbos[@]}" --batch-sizes 128 256 1024 \
    --rounds 3 "${data[@]}" --markdown "$OUT/epoch.md"
