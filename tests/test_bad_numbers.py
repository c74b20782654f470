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
