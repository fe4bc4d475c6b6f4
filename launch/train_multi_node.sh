#!/usr/bin/env bash
# Train across machines with the deepspeed launcher and a hostfile (passwordless ssh between nodes).
#
#   HOSTFILE=launch/hostfile.example DATA=... SAVE=... launch/train_multi_node.sh [admin-ds train flags]
#
# DATA and SAVE must be on a filesystem every node sees. Environment as in train_single_node.sh, plus
# HOSTFILE [launch/hostfile.example], MASTER_ADDR [the first host of the hostfile] and LAUNCHER_FLAGS [none]:
# more deepspeed launcher flags, split on spaces (e.g. "--ssh_port 2222"). --dry-run first prints the command
# instead of running it.
set -euo pipefail
DRY_RUN=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY_RUN=1; shift; fi
: "${DATA:?set DATA to a directory written by admin-ds prepare}"
: "${SAVE:?set SAVE to the run directory}"
HOSTFILE=${HOSTFILE:-launch/hostfile.example}
MASTER_ADDR=${MASTER_ADDR:-$(awk 'NF && $1 !~ /^#/ {print $1; exit}' "$HOSTFILE")}
read -r -a launcher_flags <<< "${LAUNCHER_FLAGS:-}"

command=(deepspeed --hostfile "$HOSTFILE" --master_addr "$MASTER_ADDR" --master_port "${MASTER_PORT:-29500}"
  "${launcher_flags[@]}"
  --module admin_ds.train
  --deepspeed_config "${DS_CONFIG:-ds_configs/zero2_fp16.json}"
  --data "$DATA" --save-dir "$SAVE"
  --arch "${ARCH:-admin-60-12}" --max-tokens "${MAX_TOKENS:-4096}" --max-steps "${MAX_STEPS:-300000}"
  --lr "${LR:-7e-4}" --warmup-updates "${WARMUP:-8000}" --label-smoothing 0.1
  "$@")
if (( DRY_RUN )); then printf '%q ' "${command[@]}"; echo; exit 0; fi
exec "${command[@]}"
