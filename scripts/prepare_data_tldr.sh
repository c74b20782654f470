#!/usr/bin/env bash
# TL;DR prompts (openai/summarize_from_feedback) -> ./data/tldr_prompts_unique/{train,validation}.jsonl
#   INPUT_FILE  a local export in the dataset's layout, or 'sample' (default: the hub dataset)
#   OUTPUT_DIR  output directory
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
INPUT_ARGS=()
[[ -n "${INPUT_FILE:-}" ]] && INPUT_ARGS=(--input_file "$INPUT_FILE")
run_or_print "$SDPO_BIN" prepare tldr --output "${OUTPUT_DIR:-./data/tldr_prompts_unique}" \
  ${INPUT_ARGS[@]+"${INPUT_ARGS[@]}"} ${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"}
