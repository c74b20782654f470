import json
import subprocess
import sys

import pytest

from sdpo.cli import main

INLINE = ["--model", "tiny-random", "--prompt", "Name a fruit.", "--response", "Apple 🍎", "--followup", "Two please"]


def test_help_lists_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "signal" in out and "models" in out


def test_unknown_command(capsys):
    assert main(["sigal"]) == 2
    assert "unknown command 'sigal'" in capsys.readouterr().err


def test_signal_plain_output(capsys):
    assert main(["signal", *INLINE]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split("\t") == ["case", "index", "token", "student_logprob", "teacher_logprob", "signal"]
    rows = [line.split("\t") for line in lines[1:] if not line.startswith("#")]
    assert [json.loads(r[2]) for r in rows][-1] == "<|im_end|>"
    for r in rows:
        assert abs(float(r[4]) - float(r[3]) - float(r[5])) < 2e-4
    assert lines[-1].startswith("# cli: mean |signal|")


def test_signal_json_output(capsys, tmp_path):
    out_file = tmp_path / "sig.json"
    assert main(["signal", *INLINE, "--json", "--output", str(out_file)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data == json.loads(out_file.read_text())
    [case] = data["cases"]
    assert "".join(case["tokens"][:-1]) == "Apple 🍎"
    assert len(case["signal"]) == len(case["student_logprobs"]) == len(case["token_ids"])


def test_signal_colour_output(capsys):
    assert main(["signal", "--model", "tiny-random", "--cases", "bundled", "--color", "always"]) == 0
    out = capsys.readouterr().out
    assert "\x1b[" in out  # ANSI colours
    assert "with an unrelated follow-up" in out


def test_signal_cases_with_control_in_json(capsys):
    assert main(["signal", "--model", "tiny-random", "--cases", "bundled", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert all("unrelated" in c for c in data["cases"])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["signal"], "nothing to score"),
        (["signal", "--prompt", "p"], "missing --response, --followup"),
        (["signal", "--prompt", "p", "--response", "r", "--followup", " "], "--followup is empty"),
        (["signal", "--cases", "bundled", "--prompt", "p"], "either --cases or"),
        (["signal", "--cases", "/no/such.json"], "/no/such.json: no such file"),
        (["signal", "--cases", "bundled", "--template", "nope"], "--template 'nope' is unknown"),
        (["signal", "--model", "tiny-randm", *INLINE[2:]], "unknown model alias 'tiny-randm'"),
    ],
)
def test_signal_errors(capsys, argv, message):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_unknown_option_fails(capsys):
    assert main(["signal", "--bogus", "1"]) == 2
    assert "unrecognized option(s): --bogus" in capsys.readouterr().err
    assert main(["signal", "--templat", "hindsight"]) == 2
    assert "did you mean --template?" in capsys.readouterr().err


def test_yaml_config(capsys, tmp_path):
    cfg = tmp_path / "opts.yaml"
    cfg.write_text("model: tiny-random\ncases: bundled\njson: true\nmax-context-tokens: 64\n")
    assert main(["signal", "--config", str(cfg)]) == 0
    assert len(json.loads(capsys.readouterr().out)["cases"]) >= 3
    cfg.write_text("model: tiny-random\nmodle: typo\n")
    assert main(["signal", "--config", str(cfg)]) == 2
    assert "unknown option(s) modle" in capsys.readouterr().err


def test_bad_cases_file_names_line(capsys, tmp_path):
    bad = tmp_path / "cases.jsonl"
    bad.write_text('{"prompt": "p", "response": "r", "followup": "f"}\n{"prompt": "p", "followup": "f"}\n')
    assert main(["signal", "--model", "tiny-random", "--cases", str(bad)]) == 2
    assert "cases.jsonl: line 2: missing field 'response'" in capsys.readouterr().err


def test_console_script_runs():
    """The installed `sdpo` entry point, as a user runs it (output piped: plain text)."""
    exe = [sys.executable, "-m", "sdpo.cli"]
    done = subprocess.run([*exe, "signal", *INLINE], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("case\tindex\ttoken")
    assert "\x1b[" not in done.stdout
    done = subprocess.run([*exe, "models"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "smollm2-135m" in done.stdout
