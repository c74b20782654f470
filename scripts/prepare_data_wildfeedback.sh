#!/usr/bin/env bash
# (x, y, o) records from microsoft/WildFeedback -> ./data/wildfeedback/wildfeedback_interactions.jsonl
#   INPUT_FILE  a local export in WildFeedback's layout, or 'sample' (default: the hub dataset)
#   OUTPUT      output JSONL
# Extra arguments go to `sdpo prepare wildfeedback` (e.g. --dedupe); --dry-run prints the command.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
OUTPUT="${OUTPUT:-./data/wildfeedback/wildfeedback_interactions.jsonl}"
INPUT_ARGS=()
[[ -n "${INPUT_FILE:-}" ]] && INPUT_ARGS=(--input_file "$INPUT_FILE")
run_or_print "$SDPO_BIN" prepare wildfeedback --output "$OUTPUT" \
  ${INPUT_ARGS[@]+"${INPUT_ARGS[@]}"} ${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"}
