"""The ``sdpo`` command.

Each subcommand is a dataclass of options (every field is a ``--flag`` and a YAML key
for ``--config FILE.yaml``) and a function that runs it. Errors the user can fix are
printed as one ``sdpo <command>: error: ...`` line with exit status 2, before any
model is loaded where possible.
"""

from __future__ import annotations

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
    "prepare": Command("prepare", "mine (x, y, o) records from WildFeedback / WildChat logs"),
    "train-online": Command("train_online", "online SDPO: generate, ask a simulated user, learn from the reply"),
    "train-offline": Command("train_offline", "offline SDPO on logged (x, y, o) interaction records"),
    "eval": Command("eval", "eval checkpoints: pairwise win rate of checkpoints against a baseline"),
    "personas": Command("personas", "list the user personas (styles) for simulators and judges"),
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


def parse_command_args(name: str, dataclass_type, argv: Sequence[str], description: str | None = None):
    """Parse ``argv`` into ``dataclass_type`` (flags override ``--config`` YAML values)."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser(
        dataclass_type, prog=f"sdpo {name}", description=description or COMMANDS[name].summary, allow_abbrev=False
    )
    parser.add_argument("--config", default=None, help="YAML file of options (flags given too win)")
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
    parsed = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    remaining = parsed[-1]
    if remaining:
        import difflib

        known = [opt for action in parser._actions for opt in action.option_strings]
        unknown = [a for a in remaining if a.startswith("-")] or remaining
        hints = []
        for arg in unknown:
            close = difflib.get_close_matches(arg.split("=", 1)[0], known, n=1)
            hints.append(f"{arg} (did you mean {close[0]}?)" if close else arg)
        raise UsageError(f"unrecognized option(s): {', '.join(hints)}; see sdpo {name} --help")
    return parsed[0]


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
        print(f"sdpo: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
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
            print(f"sdpo {name}: error: {what}\n\n{usage}", file=sys.stderr)
            return 2
        sub, rest = rest[0], rest[1:]
        arguments, sub_run, summary = subcommands[sub]
        try:
            args = parse_command_args(name, arguments, rest, description=summary)
            return _finished(sub_run(args))
        except UsageError as err:
            print(f"sdpo {name} {sub}: error: {err}", file=sys.stderr)
            return 2
        except Exception as err:
            if _is_user_error(err):
                print(f"sdpo {name} {sub}: error: {err}", file=sys.stderr)
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
        print(f"sdpo {name}: error: {err}", file=sys.stderr)
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
            print(f"sdpo {name}: error: {err}", file=sys.stderr)
            return 2
        raise


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
    sys.exit(main())
