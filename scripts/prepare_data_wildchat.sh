#!/usr/bin/env bash
# (x, y, o) records from allenai/WildChat -> ./data/wildchat/wildchat_interactions_v1.jsonl
#   INPUT_FILE         a local export in WildChat's layout, or 'sample' (default: the hub dataset)
#   OUTPUT             output JSONL
#   MAX_CONVERSATIONS  cap on conversations (default 15000)
#   MAX_PAIRS          cap on records (default 50000)
#   SEED               shuffle seed (default 0)
# Extra arguments go to `sdpo prepare wildchat`; --dry-run prints the command.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
OUTPUT="${OUTPUT:-./data/wildchat/wildchat_interactions_v1.jsonl}"
INPUT_ARGS=()
[[ -n "${INPUT_FILE:-}" ]] && INPUT_ARGS=(--input_file "$INPUT_FILE")
run_or_print "$SDPO_BIN" prepare wildchat --output "$OUTPUT" \
  --max_conversations "${MAX_CONVERSATIONS:-15000}" --max_pairs "${MAX_PAIRS:-50000}" --seed "${SEED:-0}" \
  ${INPUT_ARGS[@]+"${INPUT_ARGS[@]}"} ${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"}
