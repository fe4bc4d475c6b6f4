#!/usr/bin/env bash
# The GPU check as one command for a fresh one-GPU machine:  bash bench/gpu_check.sh OUTDIR
# 60-12 d=512 and d=1024 x bf16 / fp16 x activation checkpointing off / on, through our DeepSpeed engine
# (ZeRO-2, FusedAdam), each (shape, precision) beside a stock nn.Transformer on the same batches:
# tokens/s, MFU, peak memory, padding share, host syncs (bench/gpu_check.py; docs/speed.md has the columns).
# One JSON line per row as it finishes (OUTDIR/gpu_check.jsonl), the whole log in OUTDIR/gpu_check.log,
# a table at the end. BUDGET_S (default 480) counts from the start: no row starts after it, and the
# command ends within BUDGET_S + 100 s.
#
# The machine has torch, nvcc and ninja but no DeepSpeed: carry it as wheels in .whl/ (git-ignored). Once,
# in the repository's root, on a machine with pip and torch (PyPI has DeepSpeed only as an sdist; the wheel
# built from it is pure Python, its CUDA ops are JIT-built on first use):
#   echo /.whl/ >> "$(git rev-parse --git-common-dir)/info/exclude"
#   DS_BUILD_OPS=0 python3 -m pip wheel --no-deps --no-build-isolation -w .whl deepspeed==0.19.8
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl hjson==3.1.0 pydantic==2.13.4 \
#     pydantic-core==2.46.4 annotated-types==0.7.0 typing-inspection==0.4.2 typing-extensions==4.15.0
set -uo pipefail
BUDGET_S=${BUDGET_S:-480}
DEADLINE=$(($(date +%s) + ${BUDGET_S%.*}))  # no row starts after it; gpu_check.py is killed 90 s later
OUT=${1:-${OUT:-/tmp/gpu_check}}
[ $# -gt 0 ] && shift
OUT=$(mkdir -p "$OUT" && cd "$OUT" && pwd) || exit 2
cd "$(dirname "$0")/.." || exit 2
WHEELS=${WHEELS:-.whl}  # the test points it elsewhere: these wheels are for the device's Python 3.12
if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "$WHEELS"/*.whl || { echo "gpu_check.sh: installing $WHEELS/ failed" >&2; exit 2; }
  export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
python3 -c "import deepspeed, pydantic, hjson" 2>/dev/null \
  || { echo "gpu_check.sh: DeepSpeed does not import: carry .whl/ (see this script's header)" >&2; exit 2; }
export PYTHONUNBUFFERED=1 TORCH_EXTENSIONS_DIR=/tmp/torch_ext
if python3 -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
  # DeepSpeed parses TORCH_CUDA_ARCH_LIST as plain numbers; an arch-specific "9.0a" entry breaks its op builder.
  TORCH_CUDA_ARCH_LIST=$(python3 -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
  MAX_JOBS=$(nproc)  # ninja's jobs for the FusedAdam JIT build
  export TORCH_CUDA_ARCH_LIST MAX_JOBS
  { nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader
    nvcc --version | tail -n 1; } 2>&1 | tee "$OUT/device.txt"
  # DeepSpeed JIT-builds FusedAdam (nvcc + ninja) on first use: build it here, timed, so rows do not pay for it.
  start=$SECONDS
  python3 -c "from deepspeed.accelerator import get_accelerator as a; a().create_op_builder('FusedAdamBuilder').load()" \
    >"$OUT/fused_adam_build.log" 2>&1
  echo "FusedAdam JIT build: rc=$? in $((SECONDS - start)) s (log: fused_adam_build.log)" | tee -a "$OUT/device.txt"
fi
python3 -c "import torch, deepspeed; print('torch', torch.__version__, 'deepspeed', deepspeed.__version__)" 2>&1 \
  | grep -v WARNING | tee -a "$OUT/device.txt"

limit=$((DEADLINE - $(date +%s) + 90))
[ "$limit" -lt 60 ] && limit=60
timeout --kill-after=10 "$limit" python3 -m bench.gpu_check --out "$OUT" --deadline "$DEADLINE" "$@" 2>&1 \
  | tee "$OUT/gpu_check.log"
rc=$?
if [ "$rc" -ne 0 ]; then  # killed or failed: the rows that finished, as a table
  echo "gpu_check.py ended with rc=$rc; the rows written so far:"
  [ -f "$OUT/gpu_check.jsonl" ] && python3 -m bench.gpu.report "$OUT/gpu_check.jsonl"
fi
exit "$rc"
