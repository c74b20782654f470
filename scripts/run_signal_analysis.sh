#!/usr/bin/env bash
# Per-token signal heatmaps, report.html and selectivity for a set of cases.
#   MODEL       model to score with            (default Qwen/Qwen3-8B; MODEL_NAME_OR_PATH is accepted too)
#   CASES_JSON  cases file                     (default auxiliary/signal_analysis_cases.json)
#   N_CASES     number of cases                (default 24)
#   OUT_DIR     output directory               (default $SCRATCH/signal-analysis/<run-id>, ./runs/... without SCRATCH)
#   TEMPLATE    teacher-context template, or all (default: sdpo's default template)
# Extra arguments go to `sdpo signal-analysis`; --dry-run prints the command only.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

MODEL="${MODEL:-${MODEL_NAME_OR_PATH:-Qwen/Qwen3-8B}}"
CASES_JSON="${CASES_JSON:-auxiliary/signal_analysis_cases.json}"
N_CASES="${N_CASES:-24}"
OUT_DIR="${OUT_DIR:-$(default_out_dir signal-analysis)}"
TEMPLATE_ARGS=()
if [[ -n "${TEMPLATE:-}" ]]; then TEMPLATE_ARGS=(--template "$TEMPLATE"); fi

run_or_print "$SDPO_BIN" signal-analysis \
  --model "$MODEL" --cases "$CASES_JSON" --n_cases "$N_CASES" --out_dir "$OUT_DIR" \
  ${TEMPLATE_ARGS[@]+"${TEMPLATE_ARGS[@]}"} ${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"}
