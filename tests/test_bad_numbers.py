"""Impossible numbers are one line and exit 2, before a model loads (issue: nothing lost, nothing mixed)."""

import pytest

from sdpo.cli import main

ONLINE = [("--learning_rate", "0", "learning_rate must be > 0"),
          ("--per_device_train_batch_size", "0", "per_device_train_batch_size must be >= 1"),
          ("--gradient_accumulation_steps", "0", "gradient_accumulation_steps must be >= 1"),
          ("--max_new_tokens", "0", "max_new_tokens must be >= 1"),
          ("--max_context_tokens", "0", "max_context_tokens must be >= 1"),
          ("--max_steps", "0", "max_steps must be >= 1 or unset"),
          ("--max_steps", "-3", "max_steps must be >= 1 or unset")]
OFFLINE = [("--learning_rate", "-1", "learning_rate must be > 0"),
           ("--per_device_train_batch_size", "0", "per_device_train_batch_size must be >= 1"),
           ("--gradient_accumulation_steps", "0", "gradient_accumulation_steps must be >= 1"),
           ("--max_context_tokens", "0", "max_context_tokens must be >= 1"),
           ("--max_steps", "0", "max_steps must be >= 1"),
           ("--num_train_epochs", "0", "num_train_epochs must be > 0")]


@pytest.mark.parametrize("command,flag,value,message",
                         [("train-online", *row) for row in ONLINE] + [("train-offline", *row) for row in OFFLINE])
def test_impossible_numbers_are_one_line(command, flag, value, message, tmp_path, capsys, monkeypatch):
    import sdpo.models

    def no_loading(*a, **k):  # the error must come before any model loads
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(sdpo.models, "load_model", no_loading)
    assert main([command, flag, value, "--train_jsonl", str(tmp_path / "missing.jsonl"),
                 "--output_dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


# every other command: NUMBER_RULES / OUTPUT_DIRS / OUTPUT_FILES, checked right after parsing
OTHERS = [
    (["eval", "checkpoints", "--eval_n", "0"], "--eval_n: must be >= 1, got 0"),
    (["eval", "checkpoints", "--max_new_tokens", "-1"], "--max_new_tokens: must be >= 1 (or leave it unset), got -1"),
    (["eval", "checkpoints", "--judge_timeout", "0"], "--judge_timeout: must be > 0, got 0.0"),
    (["eval", "checkpoints", "--judge_concurrency", "0"], "--judge_concurrency: must be >= 1"),
    (["signal", "--batch_size", "0"], "--batch_size: must be >= 1, got 0"),
    (["signal", "--max_context_tokens", "0"], "--max_context_tokens: must be >= 1"),
    (["signal-analysis", "--batch_size", "0"], "--batch_size: must be >= 1, got 0"),
    (["signal-analysis", "--n_cases", "-2"], "--n_cases: must be >= 1, got -2"),
    (["teacher-check", "--n_problems", "0"], "--n_problems: must be >= 1, got 0"),
    (["teacher-check", "--num_generations", "0"], "--num_generations: must be >= 1"),
    (["prepare", "wildfeedback", "--input_file", "sample", "--max_pairs", "0"], "--max_pairs: must be >= 1 (or leave it unset), got 0"),
    (["spo", "synthetic", "--n", "-5"], "--n: every value must be >= 1"),
    (["spo", "synthetic", "--blend", "nan"], "--blend: must be in [0, 1], got nan"),
    (["spo", "synthetic", "--epochs", "0"], "--epochs: must be >= 1, got 0"),
    (["spo", "generate", "--top_p", "0"], "--top_p: must be in (0, 1], got 0.0"),
    (["spo", "generate", "--num_samples", "0"], "--num_samples: must be >= 1"),
    (["spo", "train", "--learning_rate", "0"], "--learning_rate: must be > 0, got 0.0"),
    (["spo", "train", "--link_clip", "0.7"], "--link_clip: must be in (0, 0.5), got 0.7"),
    (["spo", "evaluate", "--eval_batch_size", "0"], "--eval_batch_size: must be >= 1"),
    (["spo", "grid", "--workers_per_gpu", "0"], "--workers_per_gpu: must be >= 1"),
    (["spo", "analyze", "--ci_z", "-1"], "--ci_z: must be > 0"),
]


@pytest.mark.parametrize("argv,message", OTHERS, ids=[" ".join(a) for a, _ in OTHERS])
def test_other_commands_check_numbers_before_loading(argv, message, capsys, monkeypatch):
    import sdpo.models

    def no_loading(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(sdpo.models, "load_model", no_loading)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err, err


def test_output_paths_are_checked_up_front(tmp_path, capsys):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    cases = [
        (["eval", "checkpoints", "--output_dir", str(a_file)], f"--output_dir {a_file} is a file, not a directory"),
        (["spo", "synthetic", "--output_dir", str(a_file / "sub")], f"--output_dir {a_file / 'sub'}: {a_file} is a file"),
        (["signal-analysis", "--out_dir", str(a_file)], "is a file, not a directory"),
        (["signal", "--output", str(tmp_path)], f"--output {tmp_path} is a directory; give a file name"),
        (["teacher-check", "--out", str(a_file / "x.json")], f"--out {a_file} is a file, not a directory"),
        (["spo", "train", "--output_dir", str(a_file)], "is a file, not a directory"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, (argv, err)
    # sane values pass the checks (the run then stops on the missing inputs, not on a number)
    assert main(["eval", "checkpoints", "--eval_n", "5"]) == 2
    assert "--run_dir and --data_path are required" in capsys.readouterr().err
