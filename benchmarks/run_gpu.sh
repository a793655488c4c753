#!/usr/bin/env bash
# The one script a GPU run executes (repo root on the GPU machine): installs the carried wheels
# and the repo, then runs the benchmarks under a time budget so the final table always prints.
#
#   bash benchmarks/run_gpu.sh h100 [LIMIT_S] [extra step_throughput.py args]   # step, 1 GPU
#   bash benchmarks/run_gpu.sh x2   [LIMIT_S] [extra multi_gpu.py args]         # DDP/FSDP, 2 GPUs
#   bash benchmarks/run_gpu.sh fit  [LIMIT_S] [extra fit_throughput.py args]    # salt fit, shipped config
#   bash benchmarks/run_gpu.sh probe 340      # online probe step vs V-JEPA 2's (1 GPU, <= 6 min)
#   bash benchmarks/run_gpu.sh probe2 340     # the same salt step under torchrun on 2 GPUs
#     (probe: V-JEPA 2's checkout at $VJEPA2, default .peers/vjepa2, carried with the wheels)
#   bash benchmarks/run_gpu.sh perf 420 [extra step_throughput.py args]   # final: salt vs V-JEPA 2
#   bash benchmarks/run_gpu.sh explore [LIMIT_S]   # the exploratory list (levers one at a time)
#
# perf: V-JEPA 2's files come from $VJEPA2 (default .peers/vjepa2, staged beforehand with
#   python benchmarks/peers/vjepa2_step.py --vjepa2 CHECKOUT --stage-to .peers/vjepa2
# and carried); without them its rows are left out. FP8 rows use torchao when its wheel is in
# wheels/ (else salt's torch._scaled_mm fallback).
#   bash benchmarks/run_gpu.sh study [LIMIT_S] [extra experiments/claims/run.py args]  # the claims study
#
# LIMIT_S (default 580) is the whole call's wall-clock budget; give the GPU job a timeout a
# little above it. Results land in $OUT (default /tmp/salt_out): env.txt, *.json, *_log.txt and
# the kernel profiles (at most 8 files: what a remote GPU job may hand back).
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
from importlib import metadata  # versions only: importing xformers/torchao costs seconds
for dist in ("xformers", "torchao"):
    try:
        print(dist, metadata.version(dist))
    except metadata.PackageNotFoundError:
        print(dist, "not installed")
print("compute capability", torch.cuda.get_device_capability(0))
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
  probe)
    # budget: salt ViT-L variants, then V-JEPA 2's own step (B=4, 8), then salt ViT-g; every
    # stage prints its rows as it goes and stops starting work at its own deadline
    NOW=$(date +%s); LEFT=$((DEADLINE - NOW))
    D1=$((NOW + LEFT * 45 / 100)); D2=$((NOW + LEFT * 70 / 100))
    timeout $((D1 - NOW + 60)) $PY benchmarks/probe_throughput.py --models vit_large \
      --deadline "$D1" --json "$OUT/probe_vitl.json" "$@" 2>&1 | tee "$OUT/probe_log.txt"
    VJEPA2=${VJEPA2:-.peers/vjepa2}
    if [ -d "$VJEPA2/src" ]; then
      timeout $((D2 - $(date +%s) + 45)) $PY benchmarks/peers/vjepa2_probe.py --vjepa2 "$VJEPA2" \
        --batches 4 8 --deadline "$D2" --json "$OUT/probe_vjepa2.json" 2>&1 \
        | grep -v "INFO:root" | tee -a "$OUT/probe_log.txt"
    else
      echo "no V-JEPA 2 checkout at $VJEPA2: peer step skipped" | tee -a "$OUT/probe_log.txt"
    fi
    timeout $((DEADLINE - $(date +%s) + 10)) $PY benchmarks/probe_throughput.py --models vit_giant \
      --deadline "$DEADLINE" --json "$OUT/probe_vitg.json" "$@" 2>&1 | tee -a "$OUT/probe_log.txt"
    ;;
  probe2)
    timeout "$BACKSTOP" $PY -m torch.distributed.run --nproc-per-node 2 \
      benchmarks/probe_throughput.py --models vit_large --deadline "$DEADLINE" \
      --json "$OUT/probe_2gpu.json" "$@" 2>&1 | tee "$OUT/probe2_log.txt"
    ;;
  perf|explore)
    # one process per row (forked from a preloaded server), each with its own hard limit; every
    # row prints as it finishes, the whole table at the end
    VJ=${VJEPA2:-.peers/vjepa2}
    VJARG=()
    if [ -f "$VJ/app/vjepa/utils.py" ]; then VJARG=(--vjepa2 "$VJ")
    else echo "no V-JEPA 2 files at $VJ: its rows are left out"; fi
    timeout "$BACKSTOP" $PY benchmarks/step_throughput.py --suite "$MODE" --json "$OUT/$MODE.json" \
      --workdir /tmp --deadline "$DEADLINE" "${VJARG[@]}" "$@" 2>&1 | tee "$OUT/${MODE}_log.txt"
    cp /tmp/salt_bench/profile_student_compile.txt "$OUT/" 2>/dev/null
    ;;
  study)
    # results.json, table.md and the two plots land in $OUT; checkpoints stay in /tmp
    timeout "$BACKSTOP" $PY experiments/claims/run.py --out "$OUT" --workdir /tmp/salt_claims \
      --deadline "$DEADLINE" "$@" 2>&1 | tee "$OUT/study_log.txt"
    ;;
  *) echo "unknown mode $MODE (h100 | x2 | fit | probe | probe2 | perf | explore | study)"; exit 2 ;;
esac
echo "run_gpu.sh done in $(( $(date +%s) - START ))s"
