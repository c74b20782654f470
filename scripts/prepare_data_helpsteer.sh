#!/usr/bin/env bash
# HelpSteer2 prompts (nvidia/HelpSteer2) -> ./data/helpsteer2_prompts/{train,validation}.jsonl
#   INPUT_FILE  a local export in the dataset's layout, or 'sample' (default: the hub dataset)
#   OUTPUT_DIR  output directory
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
INPUT_ARGS=()
[[ -n "${INPUT_FILE:-}" ]] && INPUT_ARGS=(--input_file "$INPUT_FILE")
run_or_print "$SDPO_BIN" prepare helpsteer2 --output "${OUTPUT_DIR:-./data/helpsteer2_prompts}" \
  ${INPUT_ARGS[@]+"${INPUT_ARGS[@]}"} ${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"}
