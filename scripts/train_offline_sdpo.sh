#!/usr/bin/env bash
# Offline SDPO on logged interactions.
#   TRAIN_JSONL       records from prepare_data_*.sh (required)
#   MODEL_NAME_OR_PATH policy model, as in the other scripts (default Qwen/Qwen3-8B);
#                     BASE_MODEL (the original script's name) is accepted as an alias
#   LR                learning rate                       (default 2e-6)
#   BS                per-device batch size               (default 4)
#   GA                gradient accumulation steps         (default 8)
#   EPOCHS            epochs                              (default 2)
#   WORLD_SIZE        processes/GPUs; >1 uses accelerate  (default: the visible GPUs, 1 without any)
#   OUTPUT_DIR        (default $SCRATCH/sdpo-offline-runs/<run-id>, ./runs/sdpo-offline-runs/<run-id> without SCRATCH)
#   ACCELERATE_CONFIG accelerate config for WORLD_SIZE>1  (default configs/accelerate/multi_gpu.yaml)
# Extra arguments go to `sdpo train-offline` (any TrainingArguments flag); --dry-run prints the command.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
if [[ -z "${TRAIN_JSONL:-}" ]]; then
  echo "error: set TRAIN_JSONL (records from scripts/prepare_data_wildfeedback.sh or prepare_data_wildchat.sh)" >&2
  exit 2
fi
if [[ "$DRY_RUN" == 0 && ! -f "$TRAIN_JSONL" ]]; then
  echo "error: TRAIN_JSONL=$TRAIN_JSONL: no such file" >&2
  exit 2
fi
resolve_world_size
if [[ -n "${MODEL_NAME_OR_PATH:-}" && -n "${BASE_MODEL:-}" && "$MODEL_NAME_OR_PATH" != "$BASE_MODEL" ]]; then
  echo "warning: MODEL_NAME_OR_PATH=$MODEL_NAME_OR_PATH and BASE_MODEL=$BASE_MODEL (its alias) differ; using MODEL_NAME_OR_PATH" >&2
fi
MODEL_NAME_OR_PATH="${MODEL_NAME_OR_PATH:-${BASE_MODEL:-Qwen/Qwen3-8B}}"
OUTPUT_DIR="${OUTPUT_DIR:-$(default_out_dir sdpo-offline-runs)}"
launch_cmd "$WORLD_SIZE"
run_or_print "${LAUNCH[@]}" train-offline \
  --train_jsonl "$TRAIN_JSONL" --model_name_or_path "$MODEL_NAME_OR_PATH" \
  --learning_rate "${LR:-2e-6}" --per_device_train_batch_size "${BS:-4}" --gradient_accumulation_steps "${GA:-8}" \
  --num_train_epochs "${EPOCHS:-2}" --output_dir "$OUTPUT_DIR" \
  ${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"}
