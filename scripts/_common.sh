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

# visible_gpus: how many GPUs this process may use: the entries of CUDA_VISIBLE_DEVICES when it is
# set, else the GPUs `nvidia-smi -L` lists, else 0.
visible_gpus() {
  if [[ -n "${CUDA_VISIBLE_DEVICES+set}" ]]; then
    local devices="${CUDA_VISIBLE_DEVICES// /}"
    if [[ -z "$devices" || "$devices" == -* ]]; then echo 0; return; fi
    local ids; IFS=, read -ra ids <<< "$devices"; echo "${#ids[@]}"; return
  fi
  if command -v nvidia-smi >/dev/null 2>&1; then
    { nvidia-smi -L 2>/dev/null || true; } | grep -c '^GPU' || true
  else
    echo 0
  fi
}

# resolve_world_size: sets WORLD_SIZE. Unset: the number of visible GPUs (1 without any).
# Above the visible GPUs (when there are some): one warning, and the GPUs there are.
resolve_world_size() {
  local gpus; gpus="$(visible_gpus)"
  if [[ -z "${WORLD_SIZE:-}" ]]; then
    WORLD_SIZE=$(( gpus > 0 ? gpus : 1 ))
    echo "# WORLD_SIZE=$WORLD_SIZE ($gpus GPU(s) visible; set WORLD_SIZE to change)"
  elif ! [[ "$WORLD_SIZE" =~ ^[1-9][0-9]*$ ]]; then
    echo "error: WORLD_SIZE=$WORLD_SIZE: expected a positive whole number (processes/GPUs)" >&2; exit 2
  elif (( gpus > 0 && WORLD_SIZE > gpus )); then
    echo "warning: WORLD_SIZE=$WORLD_SIZE asks for more GPUs than the $gpus visible; using WORLD_SIZE=$gpus" >&2
    WORLD_SIZE=$gpus
  elif (( gpus == 0 && WORLD_SIZE > 1 )); then
    echo "note: no GPU visible; WORLD_SIZE=$WORLD_SIZE starts $WORLD_SIZE CPU processes" >&2
  fi
  export WORLD_SIZE  # a plain `sdpo` run (WORLD_SIZE=1) must not see a larger value the user exported
}

# launch_cmd WORLD_SIZE: the launcher prefix for an sdpo subcommand.
# WORLD_SIZE=1 runs sdpo directly; more goes through accelerate (python -m sdpo.launch) with ACCELERATE_CONFIG
# (default configs/accelerate/multi_gpu.yaml) and --num_processes WORLD_SIZE.
launch_cmd() {
  local world="$1"
  if [[ "$world" -le 1 ]]; then
    LAUNCH=("$SDPO_BIN")
  else
    # python -m sdpo.launch = accelerate launch, but a failing rank's one-line error is printed last
    # and once, without the launcher's traceback
    local python_bin="python"
    [[ -x "$REPO_ROOT/.venv/bin/python" ]] && python_bin="$REPO_ROOT/.venv/bin/python"
    LAUNCH=("$python_bin" -m sdpo.launch --config_file "${ACCELERATE_CONFIG:-$REPO_ROOT/configs/accelerate/multi_gpu.yaml}"
            --num_processes "$world" -m sdpo.cli)
  fi
}

# show_secret VAR: say whether a secret is set, never its value
show_secret() {
  if [[ -n "${!1:-}" ]]; then echo "# $1=****** (set, masked)"; else echo "# $1 is not set"; fi
}
