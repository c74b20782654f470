# Shared by the scripts: --dry-run handling, run ids, the sdpo executable.
# shellcheck shell=bash
DRY_RUN=0
EXTRA_ARGS=()
for arg in "$@"; do
  if [[ "$arg" == "--dry-run" ]]; then DRY_RUN=1; else EXTRA_ARGS+=("$arg"); fi
done

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -n "${SDPO_BIN:-}" ]]; then :
elif [[ -x "$REPO_ROOT/.venv/bin/sdpo" ]]; then SDPO_BIN="$REPO_ROOT/.venv/bin/sdpo"
else SDPO_BIN="sdpo"; fi

run_id() { date +%Y%m%d-%H%M%S; }

# default_out_dir NAME: $SCRATCH/NAME/<run-id>, or ./runs/NAME/<run-id> when SCRATCH is unset
default_out_dir() {
  if [[ -n "${SCRATCH:-}" ]]; then echo "$SCRATCH/$1/$(run_id)"; else echo "./runs/$1/$(run_id)"; fi
}

# run_or_print CMD...: print the resolved command; run it unless --dry-run
run_or_print() {
  printf '+'; printf ' %q' "$@"; printf '\n'
  if [[ "$DRY_RUN" == 1 ]]; then return 0; fi
  exec "$@"
}
