"""Issue 19 ("a new user's first hour"): scripts that agree, help that starts with our options,
sensible "did you mean" suggestions, examples whose --help shows defaults."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.name for p in (ROOT / "scripts").glob("*.sh") if not p.name.startswith("_"))
LAUNCHING = ["eval_checkpoints.sh", "eval_checkpoints_tldr.sh", "train_offline_sdpo.sh", "train_online_sdpo.sh",
             "train_online_sdpo_tldr.sh"]
NEEDS = {"RUN_DIR": "runs/x", "TRAIN_JSONL": "x.jsonl"}  # required variables (the dry run does not read them)


def _script(name, *args, path=None, **env):
    base = {k: v for k, v in os.environ.items()
            if k not in ("SCRATCH", "WORLD_SIZE", "ANTHROPIC_API_KEY", "CUDA_VISIBLE_DEVICES", "MODEL_NAME_OR_PATH",
                         "BASE_MODEL", "MODEL")}
    base["SDPO_BIN"] = str(Path(sys.executable).parent / "sdpo")
    base.update(NEEDS)
    if path is not None:
        base["PATH"] = f"{path}{os.pathsep}{base['PATH']}"
    return subprocess.run(["bash", f"scripts/{name}", "--dry-run", *args], capture_output=True, text=True, cwd=ROOT,
                          env={**base, **env}, timeout=120)


def _fake_nvidia_smi(tmp_path, n):
    exe = tmp_path / "bin" / "nvidia-smi"
    exe.parent.mkdir(exist_ok=True)
    lines = "\\n".join(f"GPU {i}: NVIDIA Fake (UUID: GPU-{i})" for i in range(n))
    exe.write_text(f"#!/usr/bin/env bash\nprintf '{lines}\\n'\n")
    exe.chmod(0o755)
    return exe.parent


def test_every_script_has_a_dry_run():
    assert set(LAUNCHING) <= set(SCRIPTS)
    for name in SCRIPTS:
        done = _script(name)
        assert done.returncode == 0, (name, done.stderr)
        assert done.stdout.count("\n+ ") + done.stdout.startswith("+ ") == 1, name  # one printed command


@pytest.mark.parametrize("name", LAUNCHING)
def test_world_size_defaults_to_the_visible_gpus(name, tmp_path):
    # no GPU visible: one process, sdpo run directly (not the former default of 4)
    done = _script(name, CUDA_VISIBLE_DEVICES="")
    assert done.returncode == 0, done.stderr
    assert "# WORLD_SIZE=1 (0 GPU(s) visible" in done.stdout and "accelerate" not in done.stdout
    # two GPUs listed by nvidia-smi: two processes through accelerate
    done = _script(name, path=_fake_nvidia_smi(tmp_path, 2))
    assert "# WORLD_SIZE=2 (2 GPU(s) visible" in done.stdout and "--num_processes 2" in done.stdout
    # CUDA_VISIBLE_DEVICES wins over nvidia-smi
    done = _script(name, path=_fake_nvidia_smi(tmp_path, 2), CUDA_VISIBLE_DEVICES="3")
    assert "accelerate" not in done.stdout
    # asking for more than there is: one warning, and what there is
    done = _script(name, path=_fake_nvidia_smi(tmp_path, 2), WORLD_SIZE="8")
    assert done.returncode == 0 and "--num_processes 2" in done.stdout
    assert done.stderr.count("WORLD_SIZE=8 asks for more GPUs than the 2 visible; using WORLD_SIZE=2") == 1
    # an explicit value on a machine without GPUs is kept (CPU processes), with a note
    done = _script(name, CUDA_VISIBLE_DEVICES="", WORLD_SIZE="3")
    assert "--num_processes 3" in done.stdout and "no GPU visible" in done.stderr
    done = _script(name, WORLD_SIZE="four")
    assert done.returncode == 2 and "WORLD_SIZE=four: expected a positive whole number" in done.stderr


def test_world_size_defaults_to_1_on_this_machine():
    """Here (no GPU, no nvidia-smi) the default is a single process; elsewhere this checks nothing extra."""
    if shutil.which("nvidia-smi") or os.environ.get("CUDA_VISIBLE_DEVICES"):
        pytest.skip("a GPU may be visible here")
    for name in LAUNCHING:
        done = _script(name)
        assert "# WORLD_SIZE=1 (0 GPU(s) visible" in done.stdout and "accelerate" not in done.stdout, name


def test_offline_script_accepts_both_model_variables():
    flag = "--model_name_or_path"
    assert f"{flag} Qwen/Qwen3-8B" in _script("train_offline_sdpo.sh").stdout
    assert f"{flag} tiny-random" in _script("train_offline_sdpo.sh", MODEL_NAME_OR_PATH="tiny-random").stdout
    assert f"{flag} tiny-random" in _script("train_offline_sdpo.sh", BASE_MODEL="tiny-random").stdout  # alias
    done = _script("train_offline_sdpo.sh", MODEL_NAME_OR_PATH="a-model", BASE_MODEL="b-model")
    assert f"{flag} a-model" in done.stdout and "differ; using MODEL_NAME_OR_PATH" in done.stderr
    for name in ("train_online_sdpo.sh", "train_online_sdpo_tldr.sh"):
        assert f"{flag} tiny-random" in _script(name, MODEL_NAME_OR_PATH="tiny-random").stdout
    assert "--model tiny-random" in _script("run_signal_analysis.sh", MODEL_NAME_OR_PATH="tiny-random").stdout
    assert "--model other" in _script("run_signal_analysis.sh", MODEL_NAME_OR_PATH="x", MODEL="other").stdout


def test_eval_script_judge_variable():
    assert "--judge rule" in _script("eval_checkpoints_tldr.sh", JUDGE="rule").stdout
    header = (ROOT / "scripts" / "eval_checkpoints_tldr.sh").read_text()
    assert "JUDGE (local)" in header


def test_scripts_document_their_variables():
    """Every variable a script reads with a default (${VAR:-...}) is named in its header comment."""
    import re

    ignore = {"SDPO_BIN", "SCRATCH", "CUDA_VISIBLE_DEVICES"}
    for name in SCRIPTS:
        text = (ROOT / "scripts" / name).read_text()
        header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
        used = set(re.findall(r"\$\{([A-Z_]+):-", text)) - ignore
        missing = sorted(v for v in used if v not in header)
        assert not missing, (name, missing)
