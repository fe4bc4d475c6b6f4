#!/usr/bin/env bash
# Train on the GPUs of one machine with the deepspeed launcher.
#
#   DATA=data-bin/wmt14_en_de SAVE=runs/admin-60-12 launch/train_single_node.sh [more admin-ds train flags]
#
# Environment (defaults in brackets): NUM_GPUS [all visible], DS_CONFIG [ds_configs/zero2_fp16.json],
# ARCH [admin-60-12], MAX_TOKENS [4096], MAX_STEPS [300000], LR [7e-4], WARMUP [8000], MASTER_PORT [29500].
# Flags after the script name are passed to `admin-ds train` and override these; --dry-run first prints
# the command instead of running it.
set -euo pipefail
DRY_RUN=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY_RUN=1; shift; fi
: "${DATA:?set DATA to a directory written by admin-ds prepare}"
: "${SAVE:?set SAVE to the run directory}"
NUM_GPUS=${NUM_GPUS:-$(python3 -c "import torch; print(max(torch.cuda.device_count(), 1))")}
DS_CONFIG=${DS_CONFIG:-ds_configs/zero2_fp16.json}

command=(deepspeed --num_gpus "$NUM_GPUS" --master_port "${MASTER_PORT:-29500}" --module admin_ds.train
  --deepspeed_config "$DS_CONFIG"
  --data "$DATA" --save-dir "$SAVE"
  --arch "${ARCH:-admin-60-12}" --max-tokens "${MAX_TOKENS:-4096}" --max-steps "${MAX_STEPS:-300000}"
  --lr "${LR:-7e-4}" --warmup-updates "${WARMUP:-8000}" --label-smoothing 0.1
  "$@")
if (( DRY_RUN )); then printf '%q ' "${command[@]}"; echo; exit 0; fi
exec "${command[@]}"
