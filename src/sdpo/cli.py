"""The ``sdpo`` command.

Each subcommand is a dataclass of options (every field is a ``--flag`` and a YAML key
for ``--config FILE.yaml``) and a function that runs it. Errors the user can fix are
printed as one ``sdpo <command>: error: ...`` line with exit status 2, before any
model is loaded where possible.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
from pathlib import Path
from typing import Callable, NamedTuple, Sequence


class Command(NamedTuple):
    module: str  # sdpo.commands.<module> defines ARGUMENTS (dataclass) and run(args)
    summary: str


COMMANDS: dict[str, Command] = {
    "signal": Command("signal", "print the per-token hindsight signal log p(y|x,o) - log p(y|x)"),
    "signal-analysis": Command(
        "signal_analysis", "per-token heatmaps, an HTML report and selectivity (relevant vs unrelated follow-ups)"
    ),
    "teacher-check": Command(
        "teacher_check", "can the model teach itself? teacher vs student on a task and on follow-ups; SDPO/hybrid/GRPO"
    ),
    "prepare": Command("prepare", "mine (x, y, o) records from WildFeedback / WildChat logs"),
    "train-online": Command("train_online", "online SDPO: generate, ask a simulated user, learn from the reply"),
    "train-offline": Command("train_offline", "offline SDPO on logged (x, y, o) interaction records"),
    "eval": Command("eval", "eval checkpoints: pairwise win rate of checkpoints against a baseline"),
    "personas": Command("personas", "list the user personas (styles) for simulators and judges"),
    "chat": Command("chat", "a local web chat that learns from your follow-ups (one SDPO update each); export, simulate"),
    "models": Command("models", "list model aliases and prepare (convert/cache) the embedded model"),
    "spo": Command("spo", "preference optimization (DPO, PSPO, OSPO, RSPO): synthetic, generate, train, evaluate, grid, analyze"),
}


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = [
        "usage: sdpo <command> [options]    (sdpo <command> --help for its options)",
        "",
        "Post-training language models from feedback, above all from what users say next.",
        "",
        "commands:",
    ]
    lines += [f"  {name.ljust(width)}  {cmd.summary}" for name, cmd in COMMANDS.items()]
    lines += ["", "Every option is also a YAML key: sdpo <command> --config options.yaml"]
    return "\n".join(lines)


class UsageError(Exception):
    pass


def _load_yaml(path: str, fields: set[str]) -> dict:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"--config {path}: no such file")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise UsageError(f"--config {path}: invalid YAML: {err}") from None
    if not isinstance(data, dict):
        raise UsageError(f"--config {path}: expected a mapping of option names to values")
    data = {str(k).replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise UsageError(f"--config {path}: unknown option(s) {', '.join(unknown)}")
    return data


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults shown; each option under its ``--snake_case`` name only (the ``--kebab-case``
    twin HfArgumentParser adds still works, it just does not double every help line)."""

    def _format_action_invocation(self, action):
        strings = action.option_strings
        names = set(strings)
        kept = [s for s in strings if not (s.startswith("--") and "-" in s[2:] and "--" + s[2:].replace("-", "_") in names)]
        if kept == strings:
            return super()._format_action_invocation(action)
        action.option_strings = kept
        try:
            return super()._format_action_invocation(action)
        finally:
            action.option_strings = strings


def parse_command_args(name: str, dataclass_type, argv: Sequence[str], description: str | None = None):
    """Parse ``argv`` into ``dataclass_type`` (flags override ``--config`` YAML values)."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser(
        dataclass_type, prog=f"sdpo {name}", description=description or COMMANDS[name].summary, allow_abbrev=False,
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--config", default=None, help="YAML file of options (flags given too win)")
    _our_options_first(parser, dataclass_type, name)
    argv = list(argv)
    config_path = None
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            config_path = argv[i + 1]
        elif arg.startswith("--config="):
            config_path = arg.split("=", 1)[1]
    if config_path:
        fields = {f.name for f in dataclasses.fields(dataclass_type)}
        parser.set_defaults(**_load_yaml(config_path, fields))
    # the leftover namespace (holding --config) comes back after the dataclass
    try:
        parsed = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    except ValueError as err:  # a config's own check (__post_init__): an impossible number, an unknown choice
        raise UsageError(str(err)) from None
    remaining = parsed[-1]
    if not remaining:
        check_number_rules(parsed[0])
    if remaining:
        known = [opt for action in parser._actions for opt in action.option_strings]
        unknown = [a for a in remaining if a.startswith("-")] or remaining
        hints = []
        for arg in unknown:
            close = suggest_options(arg, known)
            hints.append(f"{arg} (did you mean {' or '.join(close)}?)" if close else arg)
        raise UsageError(f"unrecognized option(s): {', '.join(hints)}; see sdpo {name} --help")
    return parsed[0]


# NUMBER_RULES on an arguments dataclass: field -> rule; checked right after parsing, before any work
_RULES: dict[str, tuple[Callable[[float], bool], str]] = {
    ">=1": (lambda v: v >= 1, ">= 1"),
    ">=2": (lambda v: v >= 2, ">= 2"),
    ">=0": (lambda v: v >= 0, ">= 0"),
    ">0": (lambda v: v > 0, "> 0"),
    "[0,1]": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "[0,1)": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "(0,1]": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "(0,0.5)": (lambda v: 0 < v < 0.5, "in (0, 0.5)"),
}


def check_number_rules(args) -> None:
    """Impossible numbers and unusable output paths are one line naming the option, before a model loads.

    ``type(args).NUMBER_RULES`` maps a field to a rule of ``_RULES``; ``"|None"`` after the rule lets
    the field be unset. NaN fails every rule. ``OUTPUT_DIRS`` / ``OUTPUT_FILES`` name fields that are
    written to: a directory may not be a file and must be creatable and writable; a file may not be a
    directory and its folder must be creatable and writable."""
    from sdpo.rundir import check_output_path

    for name in getattr(type(args), "OUTPUT_DIRS", ()):
        if getattr(args, name, None):
            check_output_path(getattr(args, name), name)
    for name in getattr(type(args), "OUTPUT_FILES", ()):
        value = getattr(args, name, None)
        if value:
            if Path(value).is_dir():
                raise UsageError(f"--{name} {value} is a directory; give a file name")
            check_output_path(Path(value).parent if str(Path(value).parent) else ".", name)
    for name, rule in (getattr(type(args), "NUMBER_RULES", None) or {}).items():
        value = getattr(args, name)
        base, _, optional = rule.partition("|")
        if value is None and optional == "None":
            continue
        ok, text = _RULES[base]
        if value is None or isinstance(value, bool) or not ok(value):
            unset = " (or leave it unset)" if optional == "None" else ""
            raise UsageError(f"--{name}: must be {text}{unset}, got {value}")


# What people type for an option we spell out (each is suggested only where the command has it).
OPTION_ALIASES = {
    "--lr": "--learning_rate", "--model": "--model_name_or_path", "--model_name": "--model_name_or_path",
    "--model_path": "--model_name_or_path", "--bs": "--per_device_train_batch_size",
    "--batch_size": "--per_device_train_batch_size", "--train_batch_size": "--per_device_train_batch_size",
    "--ga": "--gradient_accumulation_steps", "--grad_accum": "--gradient_accumulation_steps",
    "--epochs": "--num_train_epochs", "--steps": "--max_steps", "--out": "--output_dir", "--output": "--output_dir",
    "--out_dir": "--output_dir", "--outdir": "--output_dir", "--output_dir": "--out_dir", "--data": "--train_jsonl",
    "--train_file": "--train_jsonl", "--train_data": "--train_jsonl", "--lora": "--use_lora", "--persona": "--style",
    "--user_model": "--simulator_model", "--wandb": "--report_to", "--max_length": "--max_new_tokens",
    "--max_tokens": "--max_new_tokens", "--checkpoints": "--ckpts", "--n": "--eval_n",
}
_NEVER_SUGGESTED = {"-h", "--help"}


def suggest_options(arg: str, known: Sequence[str], limit: int = 3) -> list[str]:
    """Likely meant options for an unknown ``arg`` (best first, at most ``limit``; never --help).

    In order: the same name with ``_`` for ``-``; a common alias (``--lr`` -> ``--learning_rate``);
    options that start with it (``--model`` -> ``--model_name_or_path``) or with it as initials
    of their words; then close spellings.
    """
    import difflib

    typed = arg.split("=", 1)[0]
    if not typed.startswith("--"):
        typed = "--" + typed.lstrip("-")
    typed = "--" + typed[2:].replace("-", "_").lower()
    names = set(known)
    candidates = [k for k in dict.fromkeys(known) if k.startswith("--") and k not in _NEVER_SUGGESTED
                  and not ("-" in k[2:] and "--" + k[2:].replace("-", "_") in names)]  # not the --a-b twin of --a_b
    out: list[str] = []

    def add(options):
        for opt in options:
            if opt not in out and opt != arg:
                out.append(opt)

    add([k for k in candidates if k == typed])
    alias = OPTION_ALIASES.get(typed)
    add([k for k in candidates if k == alias])
    if out:  # the same name spelt differently, or what the alias stands for: that is the answer
        return out[:1]
    if len(typed) > 3:  # `--m` would match too much
        add(sorted((k for k in candidates if k.startswith(typed)), key=len))
    letters = typed[2:]
    if 1 < len(letters) <= 6 and "_" not in letters:
        add(sorted((k for k in candidates if "".join(w[:1] for w in k[2:].split("_")) == letters), key=len))
    if not out:
        add(difflib.get_close_matches(typed, candidates, n=limit, cutoff=0.6))
    return out[:limit]


# inherited TrainingArguments flags that a first run needs, listed with the command's own options
_PROMOTED = ("output_dir", "max_steps", "seed", "resume_from_checkpoint")
# what a first run sets, at the top of a long help
_FIRST = ("model_name_or_path", "train_jsonl", "output_dir", "max_steps", "learning_rate", "num_train_epochs",
          "per_device_train_batch_size", "gradient_accumulation_steps")


def _field_origins(dataclass_type) -> tuple[set[str], set[str]]:
    """(fields only our classes declare, fields inherited from transformers/TRL that ours do not redeclare)."""
    ours, theirs = set(), set()
    for cls in dataclass_type.__mro__:
        names = set(vars(cls).get("__annotations__", {}))
        if cls.__module__.split(".")[0] in ("transformers", "trl"):
            theirs |= names
        else:
            ours |= names
    return ours - theirs, theirs - ours


def _our_options_first(parser, dataclass_type, name: str) -> None:
    """Help lists the command's own options first, then the inherited Hugging Face ones
    (``TrainingArguments``: hundreds of flags) under their own heading, and a short usage line."""
    if not dataclasses.is_dataclass(dataclass_type):
        return
    new, foreign = _field_origins(dataclass_type)
    if not foreign:
        return
    foreign -= set(_PROMOTED)
    ours = parser.add_argument_group(f"sdpo {name} options")
    hf = parser.add_argument_group(
        "Hugging Face TrainingArguments (all accepted)",
        "every transformers.TrainingArguments flag works here too; the defaults shown are ours where we changed "
        "them (see the options above)")
    general = parser._optionals
    for action in list(general._group_actions):
        if action.dest in ("help", "config"):
            continue
        target = hf if action.dest in foreign or action.dest.removeprefix("no_") in foreign else ours
        general._group_actions.remove(action)
        target._group_actions.append(action)
    # our own fields first (in declaration order), then the TrainingArguments fields whose defaults we set
    # (after the few a first run sets)
    ours._group_actions.sort(key=lambda a: (_FIRST.index(a.dest) if a.dest in _FIRST else len(_FIRST),
                                            a.dest not in new and a.dest.removeprefix("no_") not in new))
    # the groups print in this order: general (--help), ours, then the Hugging Face block
    parser._action_groups = [g for g in parser._action_groups if g not in (ours, hf)] + [ours, hf]
    parser.usage = f"sdpo {name} [options]   (its own options first; TrainingArguments flags listed last)"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from sdpo import __version__

        print(f"sdpo {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        _error(f"sdpo: unknown command {name!r}", f"\n\n{_usage()}")
        return 2
    from sdpo.progress import quiet_logs

    quiet_logs()  # warnings once (rank 0 only under a launcher), no library banners or nested bars
    module = importlib.import_module(f"sdpo.commands.{COMMANDS[name].module}")
    subcommands = getattr(module, "SUBCOMMANDS", None)
    if subcommands is not None:  # e.g. `sdpo spo train ...`
        if not rest or rest[0] not in subcommands:
            width = max(len(k) for k in subcommands)
            listing = "\n".join(f"  {k.ljust(width)}  {v[2]}" for k, v in subcommands.items())
            usage = f"usage: sdpo {name} <step> [options]\n\nsteps:\n{listing}"
            if rest and rest[0] in ("-h", "--help"):
                print(usage)
                return 0
            what = f"unknown step {rest[0]!r}" if rest else "missing step"
            _error(f"sdpo {name}: error: {what}", f"\n\n{usage}")
            return 2
        sub, rest = rest[0], rest[1:]
        arguments, sub_run, summary = subcommands[sub]
        try:
            args = parse_command_args(name, arguments, rest, description=summary)
            return _finished(sub_run(args))
        except UsageError as err:
            _error(f"sdpo {name} {sub}: error: {err}")
            return 2
        except Exception as err:
            if _is_user_error(err):
                _error(f"sdpo {name} {sub}: error: {err}")
                return 2
            raise
    run: Callable = module.run
    positional = getattr(module, "POSITIONAL", None)
    if positional and rest and not rest[0].startswith("-"):
        rest = [f"--{positional}", rest[0], *rest[1:]]
    try:
        args = parse_command_args(name, module.ARGUMENTS, rest)
        return _finished(run(args))
    except UsageError as err:
        _error(f"sdpo {name}: error: {err}")
        return 2
    except BrokenPipeError:  # e.g. `sdpo signal ... | head`
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print(f"sdpo {name}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # errors we raise for bad input carry their own message
        if _is_user_error(err):
            _error(f"sdpo {name}: error: {err}")
            return 2
        raise


def _error(line: str, more: str = "") -> None:
    """Print a user error (one line, then ``more``), or hand the line to ``sdpo.launch``, which prints
    it once, after the other ranks have stopped, as the last thing the user sees."""
    from sdpo.launch import report_rank_error

    if not report_rank_error(line):
        print(line + more, file=sys.stderr)


def _finished(code) -> int:
    """A command that ran to its end under a launcher leaves the process group together with the
    other ranks (a rank that exits while another still saves can abort the whole launch)."""
    from sdpo.distributed import leave_process_group

    leave_process_group()
    return int(code or 0)


def _is_user_error(err: Exception) -> bool:
    from sdpo.data.cases import CasesError
    from sdpo.data.interactions import RecordError
    from sdpo.data.io import DataFileError
    from sdpo.data.logs import ConversationError
    from sdpo.distributed import LaunchError
    from sdpo.feedback.personas import UnknownPersonaError
    from sdpo.feedback.simulators import MissingAPIKeyError, SimulatorAPIError
    from sdpo.models import ModelLoadError
    from sdpo.signal import SignalInputError
    from sdpo.templates import TemplateError

    return isinstance(err, (CasesError, RecordError, DataFileError, MissingAPIKeyError, SimulatorAPIError, ConversationError, UnknownPersonaError, ModelLoadError, SignalInputError, TemplateError, FileNotFoundError,
                            LaunchError))


if __name__ == "__main__":  # pragma: no cover
    # `python -m sdpo.cli`: run the imported module's main, so that the error classes the commands raise
    # (imported from sdpo.cli) are the ones it catches, not this __main__ copy's
    from sdpo.cli import main as _main

    sys.exit(_main())
