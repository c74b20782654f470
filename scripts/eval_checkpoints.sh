#!/usr/bin/env bash
# Win rate of each checkpoint vs a baseline on HelpSteer2 prompts, judged by Claude (needs ANTHROPIC_API_KEY).
#   RUN_DIR (required)  DATA_PATH (default ./data/helpsteer2_prompts/validation.jsonl)
#   CKPTS ("3 6 9 12 15", or "all")  BASELINE (Qwen/Qwen3-8B)  JUDGE_MODEL (claude-haiku-4-5-20251001)
#   EVAL_N (256)  STYLE (no_emojis)  OUTPUT_DIR (<RUN_DIR>/eval)
#   SYSTEM_PROMPT (general; must match training)  MAX_NEW_TOKENS (1024, the reference's)
#   WORLD_SIZE: processes sharing the generations (>1 launches accelerate; ACCELERATE_CONFIG as in training);
#     default the number of visible GPUs (CUDA_VISIBLE_DEVICES, else nvidia-smi -L), 1 without any
#   The judge is always Claude here (--judge claude); for a local or rule judge use eval_checkpoints_tldr.sh (JUDGE).
# Extra arguments go to `sdpo eval checkpoints`; --dry-run prints the command (the key masked).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
show_secret ANTHROPIC_API_KEY
if [[ -z "${RUN_DIR:-}" ]]; then echo "error: set RUN_DIR (a training run directory)" >&2; exit 2; fi
if [[ "$DRY_RUN" == 0 && -z "${ANTHROPIC_API_KEY:-}" ]]; then
  echo "error: ANTHROPIC_API_KEY is not set (the Claude judge needs it)" >&2; exit 2
fi
OUT_ARGS=(); [[ -n "${OUTPUT_DIR:-}" ]] && OUT_ARGS=(--output_dir "$OUTPUT_DIR")
resolve_world_size
launch_cmd "$WORLD_SIZE"
run_or_print "${LAUNCH[@]}" eval checkpoints --run_dir "$RUN_DIR" \
  --data_path "${DATA_PATH:-./data/helpsteer2_prompts/validation.jsonl}" --ckpts "${CKPTS:-3 6 9 12 15}" \
  --baseline "${BASELINE:-Qwen/Qwen3-8B}" --judge claude --judge_model "${JUDGE_MODEL:-claude-haiku-4-5-20251001}" \
  --eval_n "${EVAL_N:-256}" --system_prompt "${SYSTEM_PROMPT:-general}" --max_new_tokens "${MAX_NEW_TOKENS:-1024}" --style "${STYLE:-no_emojis}" \
  ${OUT_ARGS[@]+"${OUT_ARGS[@]}"} ${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"}
