"""Every numeric option of every command is checked before any work (issue 28: unchecked numbers).

The walk below goes through every command of ``sdpo.cli.COMMANDS`` (and every step of those with
steps), every ``int``/``float`` field of its arguments dataclass, and asserts that the field has a
``NUMBER_RULES`` entry and, for floats, that ``nan`` is refused with one line and exit status 2: an
option added without a rule fails here.
"""

import dataclasses
import importlib
import typing

import pytest

from sdpo.cli import COMMANDS, _RULES, main

# fields whose module this change could not edit; each entry must still be a gap (remove it once fixed)
KNOWN_GAPS: set[tuple[str, str]] = set()


def _kind(annotation):
    args = typing.get_args(annotation) or (annotation,)
    if bool in args:
        return None
    return "float" if float in args else "int" if int in args else None


def _arguments():
    """(argv prefix, arguments dataclass) of every command and step."""
    out = []
    for name, command in COMMANDS.items():
        module = importlib.import_module(f"sdpo.commands.{command.module}")
        steps = getattr(module, "SUBCOMMANDS", None)
        if steps is None:
            out.append(([name], module.ARGUMENTS))
        else:
            out += [([name, step], spec[0]) for step, spec in steps.items()]
    return out


def _numeric_fields():
    rows = []
    for argv, cls in _arguments():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            kind = _kind(hints.get(f.name, f.type))
            if kind:
                rows.append((tuple(argv), cls, f.name, kind))
    return rows


FIELDS = _numeric_fields()


def test_the_walk_sees_the_commands_that_matter():
    seen = {(argv[0], name) for argv, _, name, _ in FIELDS}
    for expected in [("train-online", "temperature"), ("train-online", "advantage_clip"),
                     ("train-online", "simulator_timeout"), ("train-online", "simulator_concurrency"),
                     ("train-online", "simulator_max_retries"), ("chat", "temperature"),
                     ("train-offline", "advantage_clip"), ("train-offline", "adam_beta1"), ("spo", "sign")]:
        assert expected in seen, expected
    assert len(FIELDS) > 150


@pytest.mark.parametrize("argv,cls,name,kind", FIELDS, ids=[f"{' '.join(a)} --{n}" for a, _, n, _ in FIELDS])
def test_every_numeric_option_has_a_rule_and_nan_is_refused(argv, cls, name, kind, capsys, monkeypatch, tmp_path):
    rules = getattr(cls, "NUMBER_RULES", None) or {}
    if (argv[0], name) in KNOWN_GAPS:
        assert name not in rules, f"{argv[0]} --{name} has a rule now: remove it from KNOWN_GAPS"
        pytest.skip("a known gap in a module this change could not edit")
    assert name in rules, f"sdpo {' '.join(argv)} --{name} ({kind}) has no NUMBER_RULES entry"
    assert rules[name].partition("|")[0] in _RULES, rules[name]
    if kind != "float":
        return  # argparse itself refuses 'nan' for an int
    import sdpo.models

    def no_loading(*a, **k):  # refused before any model loads
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(sdpo.models, "load_model", no_loading)
    monkeypatch.chdir(tmp_path)  # a default output directory would land here, not in the repository
    assert main([*argv, f"--{name}", "nan"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert f"{name}" in err, err  # the message names the option
    assert not any(tmp_path.iterdir()), list(tmp_path.iterdir())  # nothing created


BAD = [
    (["train-online", "--temperature", "nan"], "--temperature: must be >= 0, got nan"),
    (["train-online", "--advantage_clip", "nan"], "--advantage_clip: must be > 0 (or leave it unset), got nan"),
    (["train-online", "--simulator_timeout", "-5"], "--simulator_timeout: must be > 0, got -5.0"),
    (["train-online", "--simulator_concurrency", "0"], "--simulator_concurrency: must be >= 1, got 0"),
    (["train-online", "--simulator_max_retries", "-1"], "--simulator_max_retries: must be >= 0, got -1"),
    (["train-online", "--simulator_max_consecutive_failures", "-1"],
     "--simulator_max_consecutive_failures: must be >= 0, got -1"),
    (["chat", "--temperature", "nan"], "--temperature: must be >= 0, got nan"),
    (["chat", "--advantage_clip", "nan"], "--advantage_clip: must be > 0 (or leave it unset), got nan"),
    (["chat", "--simulate", "no_emojis", "--temperature", "nan"], "--temperature: must be >= 0, got nan"),
    (["train-offline", "--advantage_clip", "nan"], "advantage_clip"),
    (["train-offline", "--adam_beta1", "nan"], "--adam_beta1: must be in [0, 1), got nan"),
    (["train-offline", "--max_steps", "-2"], "max_steps must be >= 1"),
    (["train-offline", "--local_rank", "-2"], "--local_rank: must be >= -1, got -2"),
]


@pytest.mark.parametrize("argv,message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_numbers_of_the_audit_are_one_line_before_the_model(argv, message, tmp_path, capsys, monkeypatch):
    import sdpo.models

    def no_loading(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(sdpo.models, "load_model", no_loading)
    out = tmp_path / "out"
    extra = [] if argv[0] == "chat" else ["--train_jsonl", str(tmp_path / "x.jsonl"), "--output_dir", str(out)]
    extra += ["--run_dir", str(out)] if argv[0] == "chat" else []
    assert main([*argv, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert not out.exists()


def test_a_failed_run_leaves_no_empty_output_directory(tmp_path, capsys, prompts_file):
    out = tmp_path / "new" / "run"
    args = ["train-online", "--train_jsonl", str(prompts_file), "--model_name_or_path", str(tmp_path / "no-model"),
            "--output_dir", str(out), "--report_to", "none", "--progress", "false"]
    assert main(args) == 2  # the model cannot load: after the directory was claimed
    assert "no-model" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "new").exists()
    kept = tmp_path / "kept"
    kept.mkdir()  # a directory that was there before the run stays
    assert main([*args[:-6], "--output_dir", str(kept), *args[-4:]]) == 2
    assert kept.is_dir() and {p.name for p in kept.iterdir()} <= {".sdpo.lock"}
    offline = tmp_path / "offline"
    assert main(["train-offline", "--train_jsonl", str(tmp_path / "missing.jsonl"), "--output_dir", str(offline),
                 "--report_to", "none"]) == 2
    assert not offline.exists()
