#!/usr/bin/env bash
# The one script a device call runs (repo root on the GPU machine): installs the carried wheels
# and the repo, then runs the benchmarks under a time budget so the final table always prints.
#
#   bash benchmarks/run_gpu.sh h100 [LIMIT_S] [extra step_throughput.py args]   # issue 7, 1 GPU
#   bash benchmarks/run_gpu.sh x2   [LIMIT_S] [extra multi_gpu.py args]         # issue 6.6, 2 GPUs
#   bash benchmarks/run_gpu.sh fit  [LIMIT_S] [extra fit_throughput.py args]    # salt fit, shipped config
#   bash benchmarks/run_gpu.sh study [LIMIT_S] [extra experiments/claims/run.py args]  # the claims study
#
# LIMIT_S (default 580) is the whole call's wall-clock budget; give the device call a timeout a
# little above it. Results land in $OUT (default /tmp/salt_out): env.txt, *.json, *_log.txt and
# the kernel profiles (at most 8 files come back from a device call).
set -uo pipefail
MODE=${1:-h100}
LIMIT=${2:-580}
shift 2 2>/dev/null || shift $#
START=$(date +%s)
OUT=${OUT:-/tmp/salt_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
# NVLink multicast off on every kind (KINDS.md: it can take the host's GPUs out of service).
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
PY=python3

{
  echo "mode=$MODE limit=${LIMIT}s date=$(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=index,name,memory.total,clocks.sm,clocks.max.sm,power.limit,temperature.gpu \
    --format=csv 2>&1
} | tee "$OUT/env.txt"

# Wheels the image lacks (webdataset, braceexpand, jsonargparse, ...), then the repo itself.
if ls wheels/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
    wheels/*.whl 2>&1 | tail -3
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
if ! $PY -m pip install -q --no-deps --no-build-isolation --no-index -e . >/tmp/pip_e.log 2>&1; then
  # fallback: a package tree with salt.data/models/probes mapped as pyproject's package-dir does
  echo "editable install failed ($(tail -1 /tmp/pip_e.log)); using a symlinked package tree"
  mkdir -p /tmp/pkg && rm -rf /tmp/pkg/salt && cp -r salt /tmp/pkg/salt
  for d in data models probes; do ln -sfn "$PWD/$d" "/tmp/pkg/salt/$d"; done
  export PYTHONPATH=/tmp/pkg:$PYTHONPATH
fi
$PY - <<'EOF' 2>&1 | tee -a "$OUT/env.txt"
import torch, pytorch_lightning as pl, salt.student, salt.strategies
print("torch", torch.__version__, "cuda", torch.version.cuda, "lightning", pl.__version__,
      "gpus", torch.cuda.device_count(), torch.cuda.get_device_name(0))
try:
    import xformers, xformers.ops
    print("xformers", xformers.__version__, "imports")
except Exception as e:
    print("xformers not usable:", type(e).__name__, str(e)[:200])
EOF

# Children stop by DEADLINE (variants get what is left); `timeout` is only a backstop, so the
# final table prints from what finished.
DEADLINE=$((START + LIMIT - 20))
BACKSTOP=$((DEADLINE - $(date +%s) + 12))
case "$MODE" in
  h100|1gpu)
    timeout "$BACKSTOP" $PY benchmarks/step_throughput.py --json "$OUT/step.json" \
      --workdir /tmp --deadline "$DEADLINE" "$@" 2>&1 | tee "$OUT/step_log.txt"
    cp /tmp/salt_bench/profile_*.txt "$OUT/" 2>/dev/null
    ;;
  x2|multi)
    timeout "$BACKSTOP" $PY benchmarks/multi_gpu.py --json "$OUT/multi.json" \
      --workdir /tmp --deadline "$DEADLINE" "$@" 2>&1 | tee "$OUT/multi_log.txt"
    ;;
  fit)
    timeout "$BACKSTOP" $PY benchmarks/fit_throughput.py --json "$OUT/fit.json" \
      --deadline "$DEADLINE" "$@" 2>&1 | tee "$OUT/fit_log.txt"
    ;;
  study)
    # results.json, table.md and the two plots land in $OUT; checkpoints stay in /tmp
    timeout "$BACKSTOP" $PY experiments/claims/run.py --out "$OUT" --workdir /tmp/salt_claims \
      --deadline "$DEADLINE" "$@" 2>&1 | tee "$OUT/study_log.txt"
    ;;
  *) echo "unknown mode $MODE (h100 | x2 | fit | study)"; exit 2 ;;
esac
echo "run_gpu.sh done in $(( $(date +%s) - START ))s"
