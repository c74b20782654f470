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


# --- help and "did you mean" (item 6) ---

def _help(capsys, *argv):
    from sdpo.cli import main

    with pytest.raises(SystemExit) as stop:
        main([*argv, "--help"])
    assert stop.value.code == 0
    return capsys.readouterr().out.splitlines()


def test_train_offline_help_lists_our_options_first(capsys):
    lines = _help(capsys, "train-offline")
    first = "\n".join(lines[:30])
    for opt in ("--model_name_or_path", "--train_jsonl", "--learning_rate", "--output_dir"):
        assert opt in first, opt
    heading = lines.index("Hugging Face TrainingArguments (all accepted):")
    ours = lines.index("basic options:")
    assert ours < lines.index("generation options:") < heading
    assert "--template" in "\n".join(lines[:heading])
    after = "\n".join(lines[heading:])
    for opt in ("--adam_beta1", "--eval_strategy", "--push_to_hub"):  # inherited flags still listed, at the end
        assert opt in after and opt not in "\n".join(lines[:heading]), opt
    assert "--learning_rate" not in after  # a default we set is listed with ours, once
    assert lines[0].startswith("usage: sdpo train-offline [options]")


@pytest.mark.parametrize("command", ["signal", "signal-analysis", "prepare", "train-online", "train-offline", "eval",
                                     "personas", "models"])
def test_every_command_help_starts_with_its_own_options(capsys, command):
    import dataclasses
    import importlib

    from sdpo.cli import COMMANDS

    module = importlib.import_module(f"sdpo.commands.{COMMANDS[command].module}")
    own = [f.name for f in dataclasses.fields(module.ARGUMENTS)
           if f.name in vars(module.ARGUMENTS).get("__annotations__", {})]
    lines = _help(capsys, command)
    options = [line.split()[0].rstrip(",") for line in lines if line.startswith("  --")]
    assert options[:1] == ["--config"] or options[0] == f"--{own[0]}"
    first_own = next(i for i, o in enumerate(options) if o.lstrip("-").replace("-", "_") in own)
    assert first_own <= 1 and len(lines) < 600


@pytest.mark.parametrize("command, typed, expected", [
    ("train-offline", "--lr", "--learning_rate"),
    ("train-offline", "--model", "--model_name_or_path"),
    ("train-online", "--model", "--model_name_or_path"),
    ("train-offline", "--epochs", "--num_train_epochs"),
    ("train-offline", "--Learning-Rate", "--learning_rate"),
    ("signal", "--templat", "--template"),
    ("train-online", "--simulator-modl", "--simulator_model"),
])
def test_did_you_mean_is_sensible(capsys, command, typed, expected):
    from sdpo.cli import main

    assert main([command, typed, "1"]) == 2
    err = capsys.readouterr().err
    assert f"{typed} (did you mean {expected}" in err, err
    assert "--help?" not in err and "--lora_r" not in err


def test_suggestions_never_offer_help():
    from sdpo.cli import suggest_options

    known = ["-h", "--help", "--model_name_or_path", "--model-name-or-path", "--learning_rate", "--lora_r",
             "--lr_scheduler_type"]
    assert suggest_options("--lr", known) == ["--learning_rate"]
    assert suggest_options("--model", known) == ["--model_name_or_path"]
    assert suggest_options("--hel", known) == [] and suggest_options("--h", known) == []
    assert suggest_options("--lr_sched", known) == ["--lr_scheduler_type"]
    assert suggest_options("--zzzz", known) == []


@pytest.mark.parametrize("example", ["basic_sdpo.py", "sdpo_rich_feedback.py", "sdpo_with_unsloth.py"])
def test_examples_help_shows_defaults(example):
    done = subprocess.run([sys.executable, str(ROOT / "examples" / example), "--help"], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    out = " ".join(done.stdout.split())
    for default in ("(default: smollm2-135m)" if example != "sdpo_with_unsloth.py" else
                    "(default: unsloth/Qwen2.5-0.5B-Instruct)", "--learning-rate LEARNING_RATE learning rate (default:",
                    "--seed SEED random seed (default: 0)"):
        assert default in out, default
