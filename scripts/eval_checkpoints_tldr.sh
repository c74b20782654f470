#!/usr/bin/env bash
# Win rate of each checkpoint vs a baseline on TL;DR prompts, judged by a local model.
#   RUN_DIR (required)  DATA_PATH (default ./data/tldr_prompts_unique/validation.jsonl)
#   CKPTS ("3 6 9 12 15", or "all")  BASELINE (Qwen/Qwen3-8B)  JUDGE_MODEL (Qwen/Qwen3-8B)
#   EVAL_N (256)  STYLE (concise_casual_beginner)  OUTPUT_DIR (<RUN_DIR>/eval)
#   JUDGE (local): --judge; local (JUDGE_MODEL answers), rule (no model: a deterministic style check, for
#     smoke tests), claude or openai (API keys from the environment; set JUDGE_MODEL to an API model name)
#   SYSTEM_PROMPT (tldr; must match training)  MAX_NEW_TOKENS (1024, the reference's)
#   WORLD_SIZE: processes sharing the generations (>1 launches accelerate; ACCELERATE_CONFIG as in training);
#     default the number of visible GPUs (CUDA_VISIBLE_DEVICES, else nvidia-smi -L), 1 without any
# Extra arguments go to `sdpo eval checkpoints`; --dry-run prints the command.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
if [[ -z "${RUN_DIR:-}" ]]; then echo "error: set RUN_DIR (a training run directory)" >&2; exit 2; fi
OUT_ARGS=(); [[ -n "${OUTPUT_DIR:-}" ]] && OUT_ARGS=(--output_dir "$OUTPUT_DIR")
resolve_world_size
launch_cmd "$WORLD_SIZE"
run_or_print "${LAUNCH[@]}" eval checkpoints --run_dir "$RUN_DIR" \
  --data_path "${DATA_PATH:-./data/tldr_prompts_unique/validation.jsonl}" --ckpts "${CKPTS:-3 6 9 12 15}" \
  --baseline "${BASELINE:-Qwen/Qwen3-8B}" --judge "${JUDGE:-local}" --judge_model "${JUDGE_MODEL:-Qwen/Qwen3-8B}" \
  --eval_n "${EVAL_N:-256}" --system_prompt "${SYSTEM_PROMPT:-tldr}" --max_new_tokens "${MAX_NEW_TOKENS:-1024}" --style "${STYLE:-concise_casual_beginner}" \
  ${OUT_ARGS[@]+"${OUT_ARGS[@]}"} ${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"}
