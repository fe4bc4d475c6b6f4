#!/usr/bin/env bash
# The 60L-12L Admin recipe of Liu et al. 2020 ("Very Deep Transformers for NMT"), WMT14 En-Fr:
# d_model 512, FFN 2048, 8 heads, shared embeddings, dropout 0.1, attention dropout 0.1, ReLU dropout 0.1,
# label smoothing 0.1, RAdam (betas 0.9, 0.98), lr 7e-4 with 8000 warm-up updates (inverse sqrt), no
# clipping, fp16, about 1.28M tokens per update; then average the last 10 checkpoints and decode with
# beam 5, length penalty 0.8.
#
# RAdam is a torch.optim optimizer, so the DeepSpeed config has no optimizer section
# (ds_configs/zero2_torchoptim_fp16.json) and --optimizer radam builds it.
# 1.28M tokens per update = GPUS x MAX_TOKENS x gradient_accumulation_steps (in the DeepSpeed config):
# 8 GPUs x 4096 tokens x 40, or 64 GPUs x 4096 x 5. Set "gradient_accumulation_steps" in a copy of the
# config accordingly and pass it as DS_CONFIG.
#
#   RAW=wmt14_en_fr/ (train.en train.fr valid.en valid.fr test.en test.fr) OUT=runs/enfr-60-12 \
#     launch/recipes/wmt14_en_fr_admin_60_12.sh [--dry-run] [more admin-ds train flags]
#
# --dry-run prints every command it would run, with the exact hyper-parameters, and runs none.
set -euo pipefail
DRY_RUN=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY_RUN=1; shift; fi
: "${RAW:?set RAW to the folder with train/valid/test .en/.fr files}"
: "${OUT:?set OUT to a working folder}"
HERE="$(cd "$(dirname "$0")" && pwd)"

run() {
  if (( DRY_RUN )); then printf '%q ' "$@"; echo; else "$@"; fi
}

run admin-ds prepare --train-prefix "$RAW/train" --valid-prefix "$RAW/valid" --test-prefix "$RAW/test" \
  --source-lang en --target-lang fr --vocab-size 40000 --out "$OUT/data"

dry=()
if (( DRY_RUN )); then dry=(--dry-run); fi
DATA="$OUT/data" SAVE="$OUT/checkpoints" ARCH=admin-60-12 LR=7e-4 WARMUP=8000 MAX_TOKENS=4096 \
  DS_CONFIG="${DS_CONFIG:-$HERE/../../ds_configs/zero2_torchoptim_fp16.json}" \
  "$HERE/../train_single_node.sh" "${dry[@]}" --optimizer radam --adam-betas 0.9,0.98 --clip-norm 0 \
  --dropout 0.1 --attention-dropout 0.1 --activation-dropout 0.1 --save-interval 2000 --keep-last 10 "$@"

run admin-ds average-checkpoints --save-dir "$OUT/checkpoints" --last 10 --output "$OUT/averaged"
run admin-ds evaluate --checkpoint "$OUT/averaged" --data "$OUT/data" --split test --beam 5 --lenpen 0.8 \
  --output "$OUT/test_bleu.json"
run admin-ds convert "$OUT/averaged" "$OUT/plain" --plain
