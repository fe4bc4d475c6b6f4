#!/usr/bin/env bash
# A real number (issue 6): train a small Admin model (6-6, d=256) on Tatoeba de->en on this CPU for a
# fixed time budget, then score the 17,565-line test set with the last and with the averaged checkpoints.
#
#   bench/tatoeba_real.sh [WORKDIR] [MINUTES]      (defaults: /tmp/tatoeba-real, 20)
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
DATA=${SHARED_DATA:-$REPO/../shared/data}/tatoeba-de-en
WORK=${1:-/tmp/tatoeba-real}
MINUTES=${2:-20}
[[ -f $DATA/train.de ]] || { echo "tatoeba-de-en not found at $DATA" >&2; exit 1; }
mkdir -p "$WORK"
cd "$REPO"

admin-ds prepare --train-prefix "$DATA/train" --valid-prefix "$DATA/dev" --test-prefix "$DATA/test" \
  --source-lang de --target-lang en --vocab-size 8000 --out "$WORK/data" --force
time admin-ds train --data "$WORK/data" --save-dir "$WORK/run" --no-resume --arch admin-small \
  --max-minutes "$MINUTES" --max-tokens 4096 --lr 1.5e-3 --warmup-updates 60 --dropout 0.1 \
  --save-interval 40 --keep-last 4 --validate-interval 80 --log-interval 20 --no-tensorboard
admin-ds average-checkpoints --save-dir "$WORK/run" --last 4 --output "$WORK/averaged" --force
for name in run averaged; do
  start=$(date +%s)
  admin-ds evaluate --checkpoint "$WORK/$name" --src "$DATA/test.de" --ref "$DATA/test.en" --beam 5 \
    --max-tokens 6000 --output "$WORK/test_$name.json" --write-hyp "$WORK/test_$name.hyp"
  echo "$name: decoding + scoring took $(( $(date +%s) - start )) s"
done
