"""Each rich-feedback example's code path, 2 steps on a tiny random model, as a user runs it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(script, tmp_path, *extra):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script), "--model", "tiny-random", "--max-steps", "2",
         "--output-dir", str(out), *extra],
        capture_output=True, text=True, timeout=600, env={**os.environ, "TRL_EXPERIMENTAL_SILENCE": "1"},
    )
    return proc, out


@pytest.mark.parametrize("script, extra", [
    ("basic_sdpo.py", ["--eval-size", "6", "--train-size", "8"]),
    ("basic_sdpo.py", ["--eval-size", "6", "--train-size", "8", "--method", "routing"]),
    ("basic_sdpo.py", ["--eval-size", "6", "--train-size", "8", "--method", "grpo"]),
    pytest.param("sdpo_rich_feedback.py", ["--eval-size", "4", "--max-completion-length", "24"],
                 marks=pytest.mark.system_package("bubblewrap")),  # code checked in the sandbox
])
def test_example_runs_two_steps_and_reports(script, extra, tmp_path):
    proc, out = _run(script, tmp_path, *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["max_steps"] == 2
    assert summary["held_out_before"] is not None and summary["held_out_after"] is not None
    assert 0.0 <= summary["held_out_after"] <= 1.0
    answers = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert len(answers) == summary["eval_size"]
    assert "held-out score:" in proc.stdout
    # a quiet terminal (issue 26 item 3): our progress lines, no metric dicts, diagnostics counted once
    log = proc.stdout + proc.stderr
    assert "{'loss'" not in log and "[RANK 0]" not in log and "FutureWarning" not in log, log[-3000:]
    assert "training: 2/2 steps" in proc.stderr and "loss=" in proc.stderr
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2]
    if "grpo" in extra:
        assert "SDPO" not in proc.stderr


def test_unsloth_example_explains_why_it_cannot_run(tmp_path):
    import importlib.util

    import torch

    if importlib.util.find_spec("unsloth") is not None and torch.cuda.is_available():
        pytest.skip("unsloth and a GPU are available here")
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "sdpo_with_unsloth.py")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "cannot run here" in proc.stderr


def test_example_method_names(tmp_path):
    from sdpo.tasks import method_config

    assert method_config("grpo").enabled is False
    assert method_config("routing").sample_routing is True
    assert method_config("mix:0.25").grpo_mix == 0.25
    assert method_config("sdpo", alpha=1.0).alpha == 1.0
    with pytest.raises(ValueError, match="'dpo' is unknown"):
        method_config("dpo")
    with pytest.raises(ValueError, match="expected a number"):
        method_config("mix:abc")
    proc, _ = _run("basic_sdpo.py", tmp_path, "--method", "ppo")
    assert proc.returncode != 0 and "--method 'ppo' is unknown" in proc.stderr.strip().splitlines()[-1]
