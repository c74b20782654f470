#!/usr/bin/env bash
# Online SDPO on HelpSteer2 prompts with Claude as the user simulator (needs ANTHROPIC_API_KEY).
#   TRAIN_JSONL / VAL_JSONL   prompts (default ./data/helpsteer2_prompts/{train,validation}.jsonl)
#   MODEL_NAME_OR_PATH        policy                  (default Qwen/Qwen3-8B)
#   USER_MODEL                Claude model            (default claude-haiku-4-5-20251001)
#   STYLE                     persona                 (default no_emojis)
#   LR (5e-6)  BS (2)  GA (4)  WORLD_SIZE (visible GPUs, 1 without; >1 launches accelerate)  MAX_STEPS (one pass)
#   TRAIN_N (512): training prompts, a seeded random subset (the reference's); MAX_PROMPT_TOKENS (512): longer prompts dropped
#   SYSTEM_PROMPT (general; a preset or text)  MAX_NEW_TOKENS (2048, the reference's completion length)  SEED (42)
#   OUTPUT_DIR                (default $SCRATCH/sdpo-runs/<run-id>, ./runs/... without SCRATCH)
#   ACCELERATE_CONFIG         (default configs/accelerate/multi_gpu.yaml)
# Extra arguments go to `sdpo train-online`; --dry-run prints the command (the key masked).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
TRAIN_JSONL="${TRAIN_JSONL:-./data/helpsteer2_prompts/train.jsonl}"
VAL_JSONL="${VAL_JSONL:-./data/helpsteer2_prompts/validation.jsonl}"
show_secret ANTHROPIC_API_KEY
if [[ "$DRY_RUN" == 0 ]]; then
  [[ -f "$TRAIN_JSONL" ]] || { echo "error: TRAIN_JSONL=$TRAIN_JSONL: no such file (run scripts/prepare_data_helpsteer.sh)" >&2; exit 2; }
  [[ -n "${ANTHROPIC_API_KEY:-}" ]] || { echo "error: ANTHROPIC_API_KEY is not set (the Claude user simulator needs it)" >&2; exit 2; }
fi
OUTPUT_DIR="${OUTPUT_DIR:-$(default_out_dir sdpo-runs)}"
STEP_ARGS=(); [[ -n "${MAX_STEPS:-}" ]] && STEP_ARGS=(--max_steps "$MAX_STEPS")
VAL_ARGS=(); [[ -f "$VAL_JSONL" || "$DRY_RUN" == 1 ]] && VAL_ARGS=(--val_jsonl "$VAL_JSONL")
resolve_world_size
launch_cmd "$WORLD_SIZE"
run_or_print "${LAUNCH[@]}" train-online \
  --train_jsonl "$TRAIN_JSONL" --model_name_or_path "${MODEL_NAME_OR_PATH:-Qwen/Qwen3-8B}" \
  --simulator claude --simulator_model "${USER_MODEL:-claude-haiku-4-5-20251001}" --style "${STYLE:-no_emojis}" \
  --learning_rate "${LR:-5e-6}" --per_device_train_batch_size "${BS:-2}" --gradient_accumulation_steps "${GA:-4}" \
  --max_train_prompts "${TRAIN_N:-512}" --max_prompt_tokens "${MAX_PROMPT_TOKENS:-512}" \
  --system_prompt "${SYSTEM_PROMPT:-general}" --max_new_tokens "${MAX_NEW_TOKENS:-2048}" --seed "${SEED:-42}" \
  --output_dir "$OUTPUT_DIR" \
  ${VAL_ARGS[@]+"${VAL_ARGS[@]}"} ${STEP_ARGS[@]+"${STEP_ARGS[@]}"} ${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"}
