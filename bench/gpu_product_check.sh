#!/usr/bin/env bash
# The product path on one GPU (what an earlier bench/gpu_check.sh also did; not part of its timed matrix):
# prepare the built-in synthetic corpus, `deepspeed --module admin_ds.train` with ds_configs/zero2_fp16.json
# for 40 steps, then translate and convert --plain. About 3 minutes:  bash bench/gpu_product_check.sh OUTDIR
# DeepSpeed comes from the wheels in .whl/, prepared as bench/gpu_check.sh's header says.
set -uo pipefail
OUT=${1:-${OUT:-/tmp/gpu_product_check}}
OUT=$(mkdir -p "$OUT" && cd "$OUT" && pwd) || exit 2
cd "$(dirname "$0")/.." || exit 2
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 2
  export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
# DeepSpeed parses TORCH_CUDA_ARCH_LIST as plain numbers; an arch-specific "9.0a" entry breaks its op builder.
TORCH_CUDA_ARCH_LIST=$(python3 -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())") || exit 2
export TORCH_CUDA_ARCH_LIST PYTHONUNBUFFERED=1 TORCH_EXTENSIONS_DIR=/tmp/torch_ext
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
