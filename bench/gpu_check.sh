#!/usr/bin/env bash
# The GPU check, as one script for a fresh GPU machine (under 8 minutes on one H100):
#   1. bench/gpu_check.py: 60-12 d=512 and d=1024, fp16 + ZeRO-2 + FusedAdam + fused SDPA, activation
#      checkpointing off/on: tokens/s, MFU, peak memory, loss-scale history;
#   2. the product path: prepare the built-in corpus, `deepspeed --module admin_ds.train` with
#      ds_configs/zero2_fp16.json for 40 steps, then translate and convert.
# Wheels for what the machine lacks may be carried in .whl/ (see bench/README.md). Results go to $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
# DeepSpeed parses TORCH_CUDA_ARCH_LIST as plain numbers; an arch-specific "9.0a" entry breaks its op builder.
TORCH_CUDA_ARCH_LIST=$(python3 -c "import torch; print(\"%d.%d\" % torch.cuda.get_device_capability())")
export TORCH_CUDA_ARCH_LIST
export PYTHONUNBUFFERED=1 TORCH_EXTENSIONS_DIR=/tmp/torch_ext
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"

echo "== 1. throughput, MFU, memory"
timeout 200 python3 -m deepspeed.launcher.runner --num_gpus 1 bench/gpu_check.py --out "$OUT" --steps 12 \
  2>&1 | grep -E '^\{|Error|error' | tee "$OUT/throughput.log"

echo "== 2. the product path on GPU"
python3 - <<'PY'
from pathlib import Path
from admin_ds.data import PrepareConfig, prepare, write_synthetic_corpus
p = write_synthetic_corpus("/tmp/gc/text", n_train=20000, n_valid=200, n_test=200)
prepare(PrepareConfig(train_prefix=p["train"], valid_prefix=p["valid"], test_prefix=p["test"], source_lang="src",
                      target_lang="tgt", out_dir=Path("/tmp/gc/bin"), vocab_size=500, progress=False, force=True))
PY
timeout 90 python3 -m deepspeed.launcher.runner --num_gpus 1 --module admin_ds.train --data /tmp/gc/bin \
  --save-dir /tmp/gc/run --arch admin-demo --max-tokens 8192 --max-steps 40 --log-interval 10 \
  --save-interval 40 --warmup-updates 20 --lr 1e-3 --deepspeed_config ds_configs/zero2_fp16.json \
  > "$OUT/train.log" 2>&1
echo "train rc=$?"; cp /tmp/gc/run/metrics.jsonl "$OUT/" 2>/dev/null; tail -n 4 "$OUT/metrics.jsonl"
head -n 20 /tmp/gc/text/test.src > /tmp/gc/in.txt
timeout 45 python3 -m admin_ds translate --checkpoint /tmp/gc/run --input /tmp/gc/in.txt --output "$OUT/hyp.txt" \
  --spm /tmp/gc/bin/spm.model --beam 5 2>&1 | tail -n 2; echo "translate rc=$?"
timeout 45 python3 -m admin_ds convert /tmp/gc/run /tmp/gc/plain --plain 2>&1 | tail -n 2; echo "convert rc=$?"
