"""`sdpo <command> --help`: grouped, honest texts, answered without the heavy imports (issue 26 item 4).

Timings are measured by benchmarks/bench_help.py, not asserted here."""

import os
import subprocess
import sys

import pytest

from sdpo.cli import HELP_GROUPS, main, option_group


def _help(capsys, *argv):
    with pytest.raises(SystemExit) as stop:
        main([*argv, "--help"])
    assert stop.value.code == 0
    return capsys.readouterr().out


def _headings(text):
    return [line[:-1] for line in text.splitlines() if line.endswith(" options:")]


def test_train_online_help_is_grouped(capsys):
    text = _help(capsys, "train-online")
    headings = _headings(text)
    for group in ("basic", "model", "training", "generation", "simulator", "vLLM", "checkpoint", "logging"):
        assert f"{group} options" in headings, headings
    order = [HELP_GROUPS.index(h.removesuffix(" options")) for h in headings]
    assert order == sorted(order)
    section = text.split("vLLM options:")[1].split("options:")[0]
    assert "--vllm_server_port" in section and "--learning_rate" not in section
    assert text.splitlines()[0] == "usage: sdpo train-online [options]"


def test_help_texts_read_sensibly(capsys):
    text = _help(capsys, "train-online")
    assert "(default: None)" not in text
    assert "--no_progress" in text
    no_progress = next(line for line in text.splitlines() if line.strip().startswith("--no_progress"))
    assert "the same as --progress false" in no_progress and "show a progress bar" not in no_progress
    assert "--progress [true|false]" in text and "[PROGRESS]" not in text


def test_short_command_help_is_one_list(capsys):
    text = _help(capsys, "personas")
    assert _headings(text) == []
    assert "--style" in text


def test_group_of_a_field():
    assert option_group("learning_rate") == "basic"
    assert option_group("vllm_server_port") == "vLLM"
    assert option_group("simulator_timeout") == "simulator"
    assert option_group("no_progress") == "logging"
    assert option_group("lora_r") == "model"
    assert option_group("anything_else") == "other"
    assert option_group("port", {"group": "server"}) == "server"


def test_top_level_help_describes_prepare(capsys):
    assert main(["--help"]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.strip().startswith("prepare"))
    assert "TL;DR" in line and "HelpSteer2" in line and "WildFeedback" in line


def test_chat_losses_match_the_update_module():
    from sdpo.chat.config import LOSSES
    from sdpo.trainers.update import LOSSES as UPDATE_LOSSES

    assert LOSSES == UPDATE_LOSSES


def test_help_comes_from_the_cache_once_built(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SDPO_CACHE", str(tmp_path))
    first = _help(capsys, "eval")
    assert list((tmp_path / "help").glob("sdpo-eval@*.txt"))
    from sdpo import cli

    calls = []
    monkeypatch.setattr(cli, "build_parser", lambda *a, **k: calls.append(a))
    assert _help(capsys, "eval") == first and not calls  # served from the cache
    assert _help(capsys, "eval", "checkpoints") == first  # the positional word does not change the help


@pytest.mark.parametrize("command", ["eval", "chat", "prepare", "signal", "personas"])
def test_help_imports_neither_torch_nor_transformers(tmp_path, command):
    code = ("import sys\nfrom sdpo.cli import main\ntry:\n    main([%r, '--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'transformers', 'trl', 'datasets') if m in sys.modules))" % command)
    env = dict(os.environ, SDPO_CACHE=str(tmp_path))  # a cold cache: the help is built
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
