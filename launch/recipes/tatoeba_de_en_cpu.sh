#!/usr/bin/env bash
# A real German->English translator on a CPU in about an hour of training.
#
# Tatoeba de-en (156k training pairs): prepare (joint 8k sentencepiece), train an Admin 6-6 model
# (d=256, FFN 1024, 4 heads, dropout 0.1) for MINUTES of training time, average the last checkpoints,
# keep whichever of {last, averaged} scores the higher dev BLEU, then score it on the whole
# tatoeba-test-v2021-08-07 (17,565 lines) and, out of domain, on newstest2014 (3,003 news sentences),
# with sacrebleu (BLEU 13a and chrF, signatures printed), beam 5. Finally export it as a plain PyTorch
# model and plot its curves. The model, lr and batch were chosen by measurement on 2 cores: docs/results.md
# ("A real translator on a CPU") has the figures and the runs behind the choice.
#
#   launch/recipes/tatoeba_de_en_cpu.sh [--dry-run]
#
# Environment (defaults in brackets): OUT [runs/tatoeba-de-en-cpu], MINUTES [60], PRECISION [bf16 when the
# CPU has native bf16 (avx512_bf16 / amx_bf16), else fp32], RAW [../shared/data/tatoeba-de-en beside the
# checkout], NEWSTEST [../shared/data/eval-de-en]. --dry-run prints every command and runs none.
# Re-running continues an interrupted training run from its last checkpoint; the other steps are redone.
set -euo pipefail
DRY_RUN=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY_RUN=1; shift; fi
REPO="$(cd "$(dirname "$0")/../.." && pwd)"
RAW=${RAW:-$REPO/../shared/data/tatoeba-de-en}
NEWSTEST=${NEWSTEST:-$REPO/../shared/data/eval-de-en}
OUT=${OUT:-runs/tatoeba-de-en-cpu}
MINUTES=${MINUTES:-60}
if [[ -z "${PRECISION:-}" ]]; then
  if grep -qwE 'avx512_bf16|amx_bf16' /proc/cpuinfo 2>/dev/null; then PRECISION=bf16; else PRECISION=fp32; fi
fi
case "$PRECISION" in
  bf16) DS_CONFIG="$REPO/ds_configs/cpu_bf16.json" ;;  # one process: ZeRO-0 (docs/speed.md)
  fp32) DS_CONFIG="$REPO/ds_configs/cpu_fp32.json" ;;
  *) echo "PRECISION must be bf16 or fp32, not '$PRECISION'" >&2; exit 2 ;;
esac
if (( ! DRY_RUN )) && [[ ! -f "$RAW/train.de" ]]; then
  echo "Tatoeba de-en not found at $RAW (set RAW to a folder with train/dev/test .de/.en)" >&2; exit 2
fi

run() {
  if (( DRY_RUN )); then printf '%q ' "$@"; echo; else "$@"; fi
}

# Scores the checkpoint $1 on source $2 / reference $3; the JSON goes to $4, the translations beside it.
# Decoding runs in fp32 whatever the training precision: small incremental steps gain little from bf16.
score() {
  run admin-ds evaluate --checkpoint "$1" --src "$2" --ref "$3" --beam 5 --device cpu \
    --max-tokens 6000 --output "$4" --write-hyp "${4%.json}.hyp"
}

if [[ ! -f "$OUT/data/meta.json" ]]; then
  run admin-ds prepare --train-prefix "$RAW/train" --valid-prefix "$RAW/dev" --test-prefix "$RAW/test" \
    --source-lang de --target-lang en --vocab-size 8000 --out "$OUT/data"
fi
run admin-ds train --data "$OUT/data" --save-dir "$OUT/checkpoints" --deepspeed_config "$DS_CONFIG" \
  --arch admin-small --residual admin --dropout 0.1 --attention-dropout 0.1 --activation-dropout 0.1 \
  --max-tokens 4096 --lr 1e-3 --warmup-updates 500 --label-smoothing 0.1 --max-minutes "$MINUTES" \
  --save-interval 200 --keep-last 5 --validate-interval 200 --log-interval 50 "$@"
# The last 5 checkpoints (fewer when a short MINUTES left fewer).
LAST=5
if (( ! DRY_RUN )); then
  SAVED=$(find "$OUT/checkpoints" -maxdepth 1 -name 'global_step*' -type d | wc -l)
  LAST=$(( SAVED < LAST ? SAVED : LAST ))
fi
run admin-ds average-checkpoints --save-dir "$OUT/checkpoints" --last "$LAST" --output "$OUT/averaged" --force

# The test sets are scored once, with the model that dev chose.
score "$OUT/checkpoints" "$RAW/dev.de" "$RAW/dev.en" "$OUT/dev_last.json"
score "$OUT/averaged" "$RAW/dev.de" "$RAW/dev.en" "$OUT/dev_averaged.json"
if (( DRY_RUN )); then
  BEST="$OUT/averaged"
else
  BEST=$(python3 - "$OUT" <<'EOF'
import json, sys
out = sys.argv[1]
bleu = {name: json.load(open(f"{out}/dev_{name}.json"))["bleu"] for name in ("last", "averaged")}
print(f"{out}/averaged" if bleu["averaged"] >= bleu["last"] else f"{out}/checkpoints")
print(f"dev BLEU: last {bleu['last']:.2f}, averaged {bleu['averaged']:.2f}", file=sys.stderr)
EOF
  )
fi
echo "model chosen on dev: $BEST" >&2
score "$BEST" "$RAW/test.de" "$RAW/test.en" "$OUT/test_bleu.json"
score "$BEST" "$NEWSTEST/newstest2014.deu" "$NEWSTEST/newstest2014.eng" "$OUT/newstest2014_bleu.json"
run admin-ds convert "$BEST" "$OUT/plain" --plain --force
run admin-ds plot "$OUT/checkpoints/metrics.jsonl" --out "$OUT/plots"
