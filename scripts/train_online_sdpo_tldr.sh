#!/usr/bin/env bash
# Online SDPO on TL;DR prompts with a local user simulator.
#   TRAIN_JSONL / VAL_JSONL   prompts (default ./data/tldr_prompts_unique/{train,validation}.jsonl)
#   MODEL_NAME_OR_PATH        policy                  (default Qwen/Qwen3-4B)
#   USER_MODEL_NAME_OR_PATH   local user simulator    (default Qwen/Qwen3-4B)
#   STYLE                     persona                 (default concise_casual_beginner)
#   LR (5e-6)  BS (4)  GA (1)  WORLD_SIZE (visible GPUs, 1 without; >1 launches accelerate)  MAX_STEPS (one pass)
#   TRAIN_N (256): training prompts, a seeded random subset (the reference's); MAX_PROMPT_TOKENS (512): longer prompts dropped
#   SYSTEM_PROMPT (tldr; a preset or text)  MAX_NEW_TOKENS (2048, the reference's completion length)  SEED (42)
#   OUTPUT_DIR                (default $SCRATCH/sdpo-tldr-runs/<run-id>, ./runs/... without SCRATCH)
#   ACCELERATE_CONFIG         (default configs/accelerate/multi_gpu.yaml)
# Extra arguments go to `sdpo train-online`; --dry-run prints the command.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
TRAIN_JSONL="${TRAIN_JSONL:-./data/tldr_prompts_unique/train.jsonl}"
VAL_JSONL="${VAL_JSONL:-./data/tldr_prompts_unique/validation.jsonl}"
if [[ "$DRY_RUN" == 0 && ! -f "$TRAIN_JSONL" ]]; then
  echo "error: TRAIN_JSONL=$TRAIN_JSONL: no such file (run scripts/prepare_data_tldr.sh first)" >&2; exit 2
fi
OUTPUT_DIR="${OUTPUT_DIR:-$(default_out_dir sdpo-tldr-runs)}"
STEP_ARGS=(); [[ -n "${MAX_STEPS:-}" ]] && STEP_ARGS=(--max_steps "$MAX_STEPS")
VAL_ARGS=(); [[ -f "$VAL_JSONL" || "$DRY_RUN" == 1 ]] && VAL_ARGS=(--val_jsonl "$VAL_JSONL")
resolve_world_size
launch_cmd "$WORLD_SIZE"
run_or_print "${LAUNCH[@]}" train-online \
  --train_jsonl "$TRAIN_JSONL" --model_name_or_path "${MODEL_NAME_OR_PATH:-Qwen/Qwen3-4B}" \
  --simulator local --simulator_model "${USER_MODEL_NAME_OR_PATH:-Qwen/Qwen3-4B}" --style "${STYLE:-concise_casual_beginner}" \
  --learning_rate "${LR:-5e-6}" --per_device_train_batch_size "${BS:-4}" --gradient_accumulation_steps "${GA:-1}" \
  --max_train_prompts "${TRAIN_N:-256}" --max_prompt_tokens "${MAX_PROMPT_TOKENS:-512}" \
  --system_prompt "${SYSTEM_PROMPT:-tldr}" --max_new_tokens "${MAX_NEW_TOKENS:-2048}" --seed "${SEED:-42}" \
  --output_dir "$OUTPUT_DIR" \
  ${VAL_ARGS[@]+"${VAL_ARGS[@]}"} ${STEP_ARGS[@]+"${STEP_ARGS[@]}"} ${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"}
