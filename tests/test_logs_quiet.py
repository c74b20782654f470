"""Issue 19, item 4: a short run's log, piped to a file, holds our lines only: no trackio banner, no
redrawn progress-bar frames, no warnings that our own calls cause; warnings once per launch, not per rank;
an offline run at learning rate 0 says so (item 8)."""

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sdpo import progress
from sdpo.progress import LineProgress, progress_bar

ROOT = Path(__file__).resolve().parents[1]

# what the issue found in logs; none of it may come back
NOISE = [
    "Trackio project initialized", "View dashboard by running", "psutil detected", "Created new run",
    "Run finished. Uploading",  # trackio's banner and goodbye
    "Setting accelerator to CPU",  # DeepSpeed's guess
    "FutureWarning", "is_gradient_checkpointing", "gradient_checkpointing_enable",  # deprecated transformers names
    "Removed shared tensor", "missing keys",  # tied lm_head on save / resume
    "pin_memory",  # pinning without an accelerator
    "Writing model shards",  # a bar per save inside ours
    "requires_grad=True to a scalar",  # float(loss) in our SPO loop
    "/src/sdpo/",  # a Python warning raised in our code, printed with its source line
]


def _env(tmp_path, **extra):
    env = {k: v for k, v in os.environ.items() if k not in ("SDPO_PROGRESS", "RANK", "LOCAL_RANK", "WORLD_SIZE")}
    env.update(TRACKIO_DIR=str(tmp_path / "trackio"), PYTHONUNBUFFERED="1", **extra)
    return env


def _run_to_file(args, tmp_path, name, **env):
    log = tmp_path / f"{name}.log"
    with log.open("w") as f:  # stdout and stderr into one file, as `... > run.log 2>&1`
        done = subprocess.run([sys.executable, "-m", "sdpo.cli", *args], stdout=f, stderr=subprocess.STDOUT,
                              cwd=tmp_path, env=_env(tmp_path, **env), timeout=900)
    text = log.read_text(encoding="utf-8")
    assert done.returncode == 0, text
    return text


def _assert_quiet(text):
    assert "\r" not in text, "progress-bar frames in the log"
    assert "\x1b[" not in text, "terminal escape codes in the log"
    found = [n for n in NOISE if n in text]
    assert not found, (found, text)


@pytest.fixture(scope="module")
def tldr(tmp_path_factory):
    out = tmp_path_factory.mktemp("tldr")
    subprocess.run([sys.executable, "-m", "sdpo.cli", "prepare", "tldr", "--input_file", "sample", "--output",
                    str(out)], check=True, capture_output=True, timeout=300)
    return out


def test_online_run_log_is_quiet(tmp_path, tldr):
    text = _run_to_file(
        ["train-online", "--model_name_or_path", "tiny-random", "--train_jsonl", str(tldr / "train.jsonl"),
         "--simulator", "rule", "--style", "concise_casual_beginner", "--max_steps", "3", "--save_steps", "2",
         "--per_device_train_batch_size", "2", "--max_new_tokens", "8", "--summary_prompts", "0",
         "--gradient_checkpointing", "--output_dir", "runs/quiet"], tmp_path, "online")
    _assert_quiet(text)
    # our one tracker line and plain progress lines (one per third here, with the step's values)
    assert sum("trackio: project sdpo, run quiet" in line for line in text.splitlines()) == 1
    lines = [line for line in text.splitlines() if line.startswith("online SDPO: ") and "/3 steps" in line]
    assert [line.split()[2] for line in lines] == ["1/3", "2/3", "3/3"], text
    assert all("adv=" in line and "nonanswer=" in line for line in lines)
    # a resumed run (the checkpoint holds the tied lm_head once) is as quiet
    text = _run_to_file(
        ["train-online", "--model_name_or_path", "tiny-random", "--train_jsonl", str(tldr / "train.jsonl"),
         "--simulator", "rule", "--style", "concise_casual_beginner", "--max_steps", "4", "--save_steps", "2",
         "--per_device_train_batch_size", "2", "--max_new_tokens", "8", "--summary_prompts", "0",
         "--output_dir", "runs/quiet", "--resume_from_checkpoint", "last"], tmp_path, "resume")
    _assert_quiet(text)


def test_offline_one_step_run_says_learning_rate_zero_and_is_quiet(tmp_path):
    data = tmp_path / "wf.jsonl"
    subprocess.run([sys.executable, "-m", "sdpo.cli", "prepare", "wildfeedback", "--input_file", "sample",
                    "--output", str(data)], check=True, capture_output=True, timeout=300)
    text = _run_to_file(["train-offline", "--model_name_or_path", "tiny-random", "--train_jsonl", str(data),
                         "--max_steps", "1", "--per_device_train_batch_size", "2", "--gradient_accumulation_steps",
                         "1", "--save_steps", "1", "--output_dir", "runs/off"], tmp_path, "offline")
    _assert_quiet(text)
    warned = [line for line in text.splitlines() if "learning rate is 0" in line]
    assert len(warned) == 1 and "--warmup_steps 0" in warned[0], text
    # our own UserWarning (a context cut to 2048 tokens) is one plain line
    assert any(line.startswith("warning: 1 of 48 records have a context longer") for line in text.splitlines())
    assert sum("trackio: project sdpo, run off" in line for line in text.splitlines()) == 1
    # resumed: the checkpoint stores the tied lm_head once; that is not reported as a missing key
    text = _run_to_file(["train-offline", "--model_name_or_path", "tiny-random", "--train_jsonl", str(data),
                         "--max_steps", "2", "--per_device_train_batch_size", "2", "--gradient_accumulation_steps",
                         "1", "--save_steps", "1", "--output_dir", "runs/off", "--resume_from_checkpoint", "last"],
                        tmp_path, "offline-resume")
    _assert_quiet(text)
    assert "done: 2 steps" in text


def test_learning_rate_note_matches_the_schedule():
    from transformers import TrainingArguments

    from sdpo.trainers.offline import learning_rate_note, planned_steps

    def args(**kw):
        base = dict(output_dir="/tmp/unused", learning_rate=2e-6, lr_scheduler_type="cosine", warmup_steps=0.05,
                    per_device_train_batch_size=4, gradient_accumulation_steps=8, num_train_epochs=2, use_cpu=True,
                    report_to="none")
        base.update(kw)
        return TrainingArguments(**base)

    # the Trainer's own count: ceil(48/4) = 12 batches, ceil(12/8) = 2 updates per epoch, 2 epochs
    assert planned_steps(args(), 48) == 4
    assert planned_steps(args(max_steps=7), 48) == 7
    assert "learning rate is 0 at the run's only optimizer step" in learning_rate_note(args(max_steps=1), 48)
    assert learning_rate_note(args(max_steps=1, warmup_steps=0), 48) is None
    assert learning_rate_note(args(max_steps=40), 48) is None  # 2 warm-up steps of 40
    # 5 warm-up steps in a 3-step run: the rates used are lr * k / 5 for k = 0, 1, 2, at most 0.4 lr
    note = learning_rate_note(args(max_steps=3, warmup_steps=5, learning_rate=1e-3), 48)
    assert "covers the whole run" in note and "at most 0.0004" in note


def test_line_progress_prints_whole_lines_each_tenth():
    out = io.StringIO()
    bar = LineProgress(total=20, desc="work", unit="step", file=out, every_seconds=1e9, every_percent=10)
    for i in range(20):
        bar.set_postfix(i=i)
        bar.update(1)
    bar.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert [line.split()[1] for line in lines] == [f"{k}/20" for k in range(2, 21, 2)]
    assert lines[-1].startswith("work: 20/20 steps (100%)") and lines[-1].endswith("[i=19]")
    # by default a quarter at a time (the evaluation loops); training loops ask for 20 %
    out = io.StringIO()
    for _ in LineProgress(range(200), desc="held-out", unit="batch", file=out, every_seconds=1e9):
        pass
    assert [line.split()[1] for line in out.getvalue().splitlines()] == ["50/200", "100/200", "150/200", "200/200"]
    # without a total: by time only, and one line at the end
    out = io.StringIO()
    for _ in LineProgress(iter(range(5)), desc="n", file=out, every_seconds=1e9):
        pass
    assert out.getvalue().splitlines() == [out.getvalue().splitlines()[0]] and out.getvalue().startswith("n: 5 it")


def test_library_bars_in_a_log_file_speak_only_when_slow(monkeypatch):
    from transformers.utils import logging as hf_logging

    monkeypatch.setenv("SDPO_PROGRESS", "lines")
    progress.quiet_library_output()
    out = io.StringIO()
    for _ in hf_logging.tqdm(range(50), desc="Loading weights", file=out):
        pass
    assert out.getvalue() == ""  # quick: nothing
    bar = hf_logging.tqdm(total=4, desc="Loading weights", file=out)
    assert isinstance(bar, LineProgress)
    bar.every_seconds = 0.0  # as if a minute passed at every update
    bar.update(2)
    bar.close()
    assert out.getvalue().startswith("Loading weights: 2/4 it (50%)")
    assert hf_logging.tqdm(range(3), desc="Writing model shards").__class__.__name__ == "EmptyTqdm"


def test_progress_bar_follows_the_stream(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.delenv("SDPO_PROGRESS", raising=False)
    assert isinstance(progress_bar(total=3, file=io.StringIO()), LineProgress)
    assert not isinstance(progress_bar(total=3, file=Tty()), LineProgress)  # tqdm in a terminal
    monkeypatch.setenv("SDPO_PROGRESS", "bar")
    assert progress.mode(io.StringIO()) == "bar"
    monkeypatch.setenv("SDPO_PROGRESS", "off")
    out = io.StringIO()
    with progress_bar(total=3, file=out) as bar:
        bar.update(3)
    assert out.getvalue() == ""


def test_warnings_only_on_the_main_rank(tmp_path):
    code = ("import warnings, sdpo.progress as d; d.quiet_logs(); "
            "warnings.warn('library says hello', UserWarning); print('done')")
    for rank, shown in (("0", True), ("1", False)):
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                              env=_env(tmp_path, RANK=rank, LOCAL_RANK=rank, WORLD_SIZE="2"))
        assert done.returncode == 0 and done.stdout.strip() == "done", done.stderr
        assert ("library says hello" in done.stderr) is shown, (rank, done.stderr)
