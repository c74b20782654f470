"""A quiet terminal (issue 26 item 3): our progress line instead of the Trainer's metric dicts, repeated
diagnostics once with a count, no SDPO wording in GRPO runs, a line while a model loads."""

import io
import json
from types import SimpleNamespace

import pytest

from sdpo import progress


def test_repeated_warning_prints_once_then_a_count(capsys):
    tally = progress.WarningTally()
    for _ in range(3):
        tally.warn("flat", "flat rewards")
    tally.warn("quiet", "counted only", show_first=False)
    assert capsys.readouterr().err == "warning: flat rewards\n"
    tally.print_summary(steps=10)
    assert capsys.readouterr().err.splitlines() == ["warning (3 of 10 steps): flat rewards",
                                                    "warning (1 of 10 steps): counted only"]


def test_postfix_shows_a_few_metrics():
    logs = {"loss": 0.01522, "grad_norm": 0.4223, "self_distillation/reward_mean": 0.125, "epoch": 0.5,
            "completions/mean_length": 11.9}
    assert progress.progress_postfix(logs) == "loss=0.0152 reward=0.125 grad=0.422"


def test_trainer_callback_lines_carry_the_step_values_and_metrics_go_to_a_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SDPO_PROGRESS", "lines")
    callback = progress.trainer_progress_callback(tmp_path / "metrics.jsonl")
    state = SimpleNamespace(is_world_process_zero=True, global_step=0, max_steps=2)
    callback.on_train_begin(None, state, None)
    for step, loss in ((1, 0.5), (2, 0.25)):
        callback.on_step_begin(None, state, None)
        state.global_step = step
        callback.on_step_end(None, state, None)
        callback.on_log(None, state, None, logs={"loss": loss, "grad_norm": 1.0})
    callback.on_train_end(None, state, None)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split()[1] for line in lines] == ["1/2", "2/2"]
    assert "loss=0.5 " in lines[0] + " " and "loss=0.25" in lines[1]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["loss"]) for r in rows] == [(1, 0.5), (2, 0.25)]


def test_quiet_trainer_replaces_the_printing_callbacks(tmp_path):
    from transformers.trainer_callback import CallbackHandler, PrinterCallback, ProgressCallback

    handler = CallbackHandler([PrinterCallback()], None, None, None, None)
    trainer = SimpleNamespace(remove_callback=handler.remove_callback, add_callback=handler.add_callback)
    progress.quiet_trainer(trainer, tmp_path / "m.jsonl")
    kinds = [type(c).__name__ for c in handler.callbacks]
    assert kinds == ["StepProgress"] and not any(isinstance(c, (PrinterCallback, ProgressCallback))
                                                 for c in handler.callbacks)


def _stub(enabled):
    from collections import defaultdict

    from sdpo.trainers.rich import SDPOTrainer

    return SimpleNamespace(_DIAGNOSTICS=SDPOTrainer._DIAGNOSTICS, _GRPO_DIAGNOSTICS=SDPOTrainer._GRPO_DIAGNOSTICS,
                           args=SimpleNamespace(diagnostics_warning_interval=10),
                           _diagnostic_counters={"train": defaultdict(int)},
                           sdpo_config=SimpleNamespace(enabled=enabled), warning_tally=progress.WarningTally())


@pytest.mark.parametrize("enabled", [True, False])
def test_trl_diagnostics_once_and_none_about_sdpo_in_grpo_runs(enabled, capsys):
    from sdpo.trainers.rich import SDPOTrainer

    stub = _stub(enabled)
    for _ in range(4):
        for key in ("flat_rewards", "no_successful_rollouts"):
            SDPOTrainer._warn_on_degenerate_diagnostics(stub, "train", key, "SDPO will not learn")
    err = capsys.readouterr().err
    stub.warning_tally.print_summary(steps=4)
    summary = capsys.readouterr().err
    assert "SDPO will not learn" not in err + summary
    if enabled:
        assert err.count("warning:") == 2 and summary.count("(4 of 4 steps)") == 2
    else:  # plain GRPO: nothing during the run, one GRPO line at the end
        assert err == "" and "SDPO" not in summary and summary.count("\n") == 1 and "GRPO" in summary


def test_loading_a_model_says_so_only_for_the_command(capsys):
    from sdpo.models import load_model

    load_model("tiny-random")
    assert "loading model" not in capsys.readouterr().err  # a library call prints nothing
    progress.set_command_line(True)
    try:
        load_model("tiny-random")
    finally:
        progress.set_command_line(False)
    assert capsys.readouterr().err.startswith("loading model tiny-random ...")
