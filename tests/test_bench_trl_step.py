"""benchmarks/bench_trl_step.py: the smallest run end to end (tiny random model), its JSON line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_trl_step.py"


def test_bench_trl_step_smoke():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # a smoke run; keep it light next to other work
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--model", "tiny-random", "--repeats", "1", "--prompts", "2",
         "--max-new-tokens", "4"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, proc.stdout
    row = json.loads(lines[0])

    for key in ("ours_s", "trl_s", "ratio", "response_tokens", "student_context_tokens",
                "ours_teacher_context_tokens", "trl_teacher_context_tokens", "threads"):
        assert isinstance(row[key], (int, float)) and not isinstance(row[key], bool), key
        assert row[key] > 0, (key, row[key])
    assert len(row["ours_times_s"]) == len(row["trl_times_s"]) == 1
    assert abs(row["ratio"] - row["ours_s"] / row["trl_s"]) < 0.01
    assert row["prompts"] == 2 and row["max_new_tokens"] == 4
    # the completions are capped at 4 new tokens per prompt, and both sides score all of them
    assert row["response_tokens"] == sum(row["response_tokens_per_row"]) <= 2 * 4
    assert row["trl_student_forward_shape"][0] == row["trl_teacher_forward_shape"][0] == 2
    # the teacher contexts hold the follow-up, so they are longer than the student contexts
    assert row["ours_teacher_context_tokens"] > row["student_context_tokens"]
    assert row["trl_teacher_context_tokens"] > row["student_context_tokens"]
    # both sides ran forwards (the probes saw them) under the same precision recipe
    assert row["ours_autocast"] != "not-run" and row["ours_autocast"] == row["trl_autocast"]
    assert row["trl_bf16"] == (row["trl_autocast"] == "bfloat16")
    assert row["trl_teacher"] == "live" and row["trl_distillation_mode"] == "sampled_token"
    assert row["trl_gradient_checkpointing"] is False
    assert isinstance(row["trl_prompt_tokenization_matches"], bool)
    for key in ("torch", "trl", "transformers", "date", "command", "dtype_arg", "param_dtype"):
        assert isinstance(row[key], str) and row[key], key
    assert "--model tiny-random" in row["command"]
    assert len(row["load_avg"]) == 3
