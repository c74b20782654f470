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

# launch_cmd WORLD_SIZE: the launcher prefix for an sdpo subcommand.
# WORLD_SIZE=1 runs sdpo directly; more goes through accelerate with ACCELERATE_CONFIG
# (default configs/accelerate/multi_gpu.yaml) and --num_processes WORLD_SIZE.
launch_cmd() {
  local world="$1"
  if [[ "$world" -le 1 ]]; then
    LAUNCH=("$SDPO_BIN")
  else
    local accelerate_bin="accelerate"
    [[ -x "$REPO_ROOT/.venv/bin/accelerate" ]] && accelerate_bin="$REPO_ROOT/.venv/bin/accelerate"
    LAUNCH=("$accelerate_bin" launch --config_file "${ACCELERATE_CONFIG:-$REPO_ROOT/configs/accelerate/multi_gpu.yaml}"
            --num_processes "$world" -m sdpo.cli)
  fi
}

# show_secret VAR: say whether a secret is set, never its value
show_secret() {
  if [[ -n "${!1:-}" ]]; then echo "# $1=****** (set, masked)"; else echo "# $1 is not set"; fi
}
