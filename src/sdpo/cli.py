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
    "prepare": Command("prepare", "prompts (TL;DR, HelpSteer2) for train-online; (x, y, o) records from "
                                  "WildFeedback / WildChat logs"),
    "train-online": Command("train_online", "online SDPO: generate, ask a simulated user, learn from the reply"),
    "train-offline": Command("train_offline", "offline SDPO on logged (x, y, o) interaction records"),
    "eval": Command("eval", "eval checkpoints: pairwise win rate of checkpoints against a baseline"),
    "personas": Command("personas", "list the user personas (styles) for simulators and judges"),
    "chat": Command("chat", "a local web chat that learns from your follow-ups (one SDPO update each); export, simulate"),
    "models": Command("models", "list model aliases and prepare (convert/cache) the embedded model"),
    "spo": Command("spo", "preference optimization (DPO, PSPO, OSPO, RSPO): synthetic, generate, train, evaluate, grid, analyze"),
}


# commands that run models: they say how many threads they use (sdpo.threads)
COMPUTE_COMMANDS = ("signal", "signal-analysis", "teacher-check", "train-online", "train-offline", "eval", "chat", "spo")


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
    lines += ["", "Every option is also a YAML key: sdpo <command> --config options.yaml",
              "Every command takes --num_threads N (CPU threads; default: the cores not busy, see sdpo.threads)"]
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


HELP_WIDTH = 100  # at most; narrower terminals get their own width


_width_override: int | None = None


def _help_width() -> int:
    import shutil

    if _width_override:
        return _width_override
    return max(40, min(HELP_WIDTH, shutil.get_terminal_size().columns - 2))


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults shown where there is one (not ``(default: None)``); each option under its ``--snake_case``
    name only (the ``--kebab-case`` twin HfArgumentParser adds still works, it just does not double every
    help line); a boolean option reads ``--x [true|false]`` and its ``--no_x`` twin says what it does."""

    def __init__(self, prog, indent_increment=2, max_help_position=30, width=None):
        super().__init__(prog, indent_increment, max_help_position, width or _help_width())

    def _get_help_string(self, action):
        import re

        text = re.sub(r"%(?!\()", "%%", action.help or "")  # a literal "90%" in a help text, not a format
        default = action.default
        if (default is None or default == "" or default is argparse.SUPPRESS or "%(default)" in text
                or isinstance(action, (argparse._StoreFalseAction, argparse._StoreTrueAction, argparse._HelpAction))):
            return text
        if isinstance(default, bool):
            return f"{text} (default: {str(default).lower()})"
        if isinstance(default, (list, tuple)) and not default:
            return text
        return f"{text} (default: %(default)s)"

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


# Help groups, in the order they print. A field's group is its metadata "group" if it has one, else the
# first rule below that its name matches (exact names, then prefixes, then suffixes).
HELP_GROUPS = ("basic", "model", "training", "generation", "simulator", "judge", "vLLM", "distributed",
               "checkpoint", "logging", "other")
_GROUP_NAMES: dict[str, tuple[str, ...]] = {
    "basic": ("action", "what", "dataset", "design", "task", "method", "methods", "train_jsonl", "val_jsonl",
              "data_path", "input_file", "pref_path", "prompts_path", "cases", "n_cases", "prompt", "response",
              "followup", "output_dir", "out_dir", "run_dir", "grid_dir", "results_dir", "output", "out", "ckpts",
              "style", "max_steps", "num_train_epochs", "learning_rate", "per_device_train_batch_size",
              "gradient_accumulation_steps", "eval_n", "num_samples", "baseline", "max_train_prompts"),
    "model": ("model", "model_name_or_path", "model_id", "base_model_id", "ref_model_id", "reward_model_id", "dtype",
              "model_dtype", "device", "use_lora", "gradient_checkpointing", "attn_implementation",
              "trust_remote_code"),
    "training": ("seed", "batch_size", "grad_accum_steps", "weight_decay", "max_grad_norm", "optim", "warmup_steps",
                 "warmup_ratio", "lr_scheduler", "lr_scheduler_type", "schedule_horizon", "ppo_clip", "kl_coef",
                 "loss", "ignore_first_tokens", "mask_eos_advantage", "rule_reward_weight", "epochs", "beta",
                 "update_mode", "collect_only", "train_sampling_strategy", "max_records", "skip_invalid",
                 "contrastive_followup", "selectivity_threshold", "kl_to_start", "teacher", "remove_unused_columns", "scale_loss_by_accumulation"),
    "generation": ("max_new_tokens", "temperature", "top_p", "top_k", "num_generations", "generation_batch_size",
                   "template", "system_prompt", "max_context_tokens", "max_prompt_tokens", "max_prompt_length",
                   "max_response_length", "append_eos", "eval_max_new_tokens", "generation_backend"),
    "simulator": ("simulate", "turns", "eval_every", "prompts"),
    "judge": ("oracle",),
    "vLLM": ("use_vllm",),
    "distributed": ("gpus", "workers_per_gpu", "deepspeed", "local_rank", "ddp_backend", "ddp_timeout"),
    "checkpoint": ("save_steps", "save_every", "save_total_limit", "save_only_model", "resume_from_checkpoint",
                   "overwrite_output_dir", "undo_depth"),
    "logging": ("report_to", "project", "progress", "run_name", "logging_steps", "logging_dir", "json", "color",
                "dry_run"),
}
_GROUP_PREFIXES: tuple[tuple[str, str], ...] = (
    ("simulator", "simulator"), ("judge", "judge"), ("vllm_", "vLLM"), ("lora_", "model"), ("fsdp", "distributed"),
    ("ddp_", "distributed"), ("summary_", "logging"), ("logging_", "logging"), ("advantage_", "training"),
    ("distillation_", "training"), ("gen_", "generation"), ("save_", "checkpoint"), ("host", "other"),
)


def option_group(dest: str, metadata=None) -> str:
    """The help group of the option ``--dest`` (see :data:`HELP_GROUPS`)."""
    chosen = (metadata or {}).get("group")
    if chosen:
        return chosen
    dest = dest.removeprefix("no_") if dest.startswith("no_") and dest[3:] else dest
    for group, names in _GROUP_NAMES.items():
        if dest in names:
            return group
    for prefix, group in _GROUP_PREFIXES:
        if dest.startswith(prefix):
            return group
    return "other"


def _hf_argument_parser():
    """``transformers.HfArgumentParser``, without importing the ``transformers`` package where it is not loaded yet.

    Importing ``transformers`` costs about a second (hub client, numpy, ...) before any option is parsed;
    its ``hf_argparser`` module itself needs only the standard library and PyYAML, so it is loaded from its
    file as a module of its own. The parsing is the same code either way."""
    loaded = sys.modules.get("transformers.hf_argparser")
    if loaded is None:
        loaded = sys.modules.get("sdpo._hf_argparser")
    if loaded is None:
        try:
            import importlib.util

            package = importlib.util.find_spec("transformers")  # finds the package without importing it
            path = Path(package.submodule_search_locations[0]) / "hf_argparser.py"
            spec = importlib.util.spec_from_file_location("sdpo._hf_argparser", path)
            loaded = importlib.util.module_from_spec(spec)
            sys.modules["sdpo._hf_argparser"] = loaded
            spec.loader.exec_module(loaded)
        except Exception:  # another layout: the ordinary import
            sys.modules.pop("sdpo._hf_argparser", None)
            from transformers import hf_argparser as loaded
    base = loaded.HfArgumentParser

    class Parser(base):
        """HfArgumentParser, with a field's metadata key ``group`` (its help group) kept out of argparse."""

        @staticmethod
        def _parse_dataclass_field(parser, field):
            if "group" in field.metadata:
                import copy
                import types

                field = copy.copy(field)
                field.metadata = types.MappingProxyType({k: v for k, v in field.metadata.items() if k != "group"})
            return base._parse_dataclass_field(parser, field)

    return Parser


def parse_command_args(name: str, dataclass_type, argv: Sequence[str], description: str | None = None,
                       prog: str | None = None):
    """Parse ``argv`` into ``dataclass_type`` (flags override ``--config`` YAML values).

    ``--help`` prints the grouped help (and keeps it for :func:`help_cache_load`) and exits 0."""
    prog = prog or f"sdpo {name}"
    parser = build_parser(prog, dataclass_type, description or COMMANDS[name].summary)
    argv = list(argv)
    if any(a in ("-h", "--help") for a in argv):
        text = parser.format_help()
        help_cache_store(prog, text)
        sys.stdout.write(text)
        sys.stdout.flush()
        raise SystemExit(0)
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
_GROUPED_FROM = 12  # commands with fewer options print them in one list


def build_parser(prog: str, dataclass_type, description: str):
    """The parser of one command: HfArgumentParser semantics, ``--config``, grouped help."""
    HfArgumentParser = _hf_argument_parser()
    parser = HfArgumentParser(dataclass_type, prog=prog, description=description, allow_abbrev=False,
                              formatter_class=_HelpFormatter)
    parser.add_argument("--config", default=None, help="YAML file of options (flags given too win)")
    _tidy_booleans(parser)
    _group_options(parser, dataclass_type, prog)
    return parser


def _tidy_booleans(parser) -> None:
    """``--x [true|false]`` instead of ``--x [X]``; the ``--no_x`` twin's help says what it does (it was a copy
    of ``--x``'s, so ``--no_progress`` read "show a progress bar")."""
    for action in parser._actions:
        if getattr(action.type, "__name__", "") == "string_to_bool" and action.nargs == "?":
            action.metavar = "true|false"
        if isinstance(action, argparse._StoreFalseAction) and any(o.startswith("--no_") for o in action.option_strings):
            action.help = f"the same as --{action.dest} false"


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


def _group_options(parser, dataclass_type, prog: str) -> None:
    """Help in groups: ``-h`` and ``--config``, then the command's own options by topic (:data:`HELP_GROUPS`;
    one list for a short command), then the inherited Hugging Face ones (``TrainingArguments``: hundreds of
    flags) under their own heading; a short usage line."""
    if not dataclasses.is_dataclass(dataclass_type):
        return
    parser.usage = f"{prog} [options]"
    new, foreign = _field_origins(dataclass_type)
    foreign -= set(_PROMOTED)
    metadata = {f.name: f.metadata for f in dataclasses.fields(dataclass_type)}
    general = parser._optionals
    movable = [a for a in general._group_actions if a.dest not in ("help", "config")]
    theirs = [a for a in movable if a.dest in foreign or a.dest.removeprefix("no_") in foreign]
    ours = [a for a in movable if a not in theirs]
    groups = []
    if len({a.dest for a in ours}) >= _GROUPED_FROM:
        by_group: dict[str, list] = {}
        for action in ours:
            by_group.setdefault(option_group(action.dest, metadata.get(action.dest)), []).append(action)
        order = list(HELP_GROUPS) + [g for g in by_group if g not in HELP_GROUPS]
        for title in order:
            if by_group.get(title):
                group = parser.add_argument_group(f"{title} options")
                group._group_actions.extend(by_group[title])
                groups.append(group)
    elif theirs:
        group = parser.add_argument_group(f"{prog} options")
        group._group_actions.extend(ours)
        groups.append(group)
    else:
        return
    if theirs:  # a first run's options first (in that order), then ours before the inherited defaults we set
        for group in groups:
            group._group_actions.sort(key=lambda a: (_FIRST.index(a.dest) if a.dest in _FIRST else len(_FIRST),
                                                     a.dest not in new and a.dest.removeprefix("no_") not in new))
    for action in movable:
        general._group_actions.remove(action)
    if theirs:
        hf = parser.add_argument_group(
            "Hugging Face TrainingArguments (all accepted)",
            "every transformers.TrainingArguments flag works here too; the defaults shown are ours where we "
            "changed them (see the options above)")
        hf._group_actions.extend(theirs)
        groups.append(hf)
    # the groups print in this order: general (--help, --config), ours by topic, then the Hugging Face block
    parser._action_groups = [g for g in parser._action_groups if g not in groups] + groups


# ------------------------------------------------------------------------------------------- help cache
def _help_cache_file(prog: str) -> Path:
    """Where ``prog --help``'s text is kept: keyed on the sdpo sources (paths, sizes, modification times),
    the Python and transformers/TRL versions and the help width, so any change makes a new entry."""
    import hashlib
    import os

    digest = hashlib.sha1(f"{_sources_key()}|{_help_width()}|{prog}".encode())
    root = os.environ.get("SDPO_CACHE") or os.path.join(Path.home(), ".cache", "sdpo")
    return Path(root).expanduser() / "help" / f"{_help_slug(prog)}@{digest.hexdigest()[:16]}.txt"


_SOURCES_KEY: list[str] = []


def _sources_key() -> str:
    if not _SOURCES_KEY:
        package = Path(__file__).resolve().parent
        parts = [f"{p.relative_to(package)}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in sorted(package.rglob("*.py"))]
        for dist in ("transformers", "trl"):
            try:
                from importlib.metadata import version

                parts.append(f"{dist}={version(dist)}")
            except Exception:
                parts.append(f"{dist}=-")
        _SOURCES_KEY.append(f"{sys.version};{';'.join(parts)}")
    return _SOURCES_KEY[0]


def _help_slug(prog: str) -> str:
    return f"{prog.replace(' ', '-')}@w{_help_width()}"


def help_cache_load(prog: str) -> str | None:
    """The cached help text of ``prog`` (e.g. ``sdpo train-online``), or None."""
    try:
        return _help_cache_file(prog).read_text(encoding="utf-8")
    except OSError:
        return None


def help_cache_store(prog: str, text: str) -> None:
    """Keep ``text`` for :func:`help_cache_load` (never an error: a read-only cache just stays empty)."""
    import os

    try:
        path = _help_cache_file(prog)
        path.parent.mkdir(parents=True, exist_ok=True)
        for old in path.parent.glob(f"{_help_slug(prog)}@*.txt"):  # this help's entries for older sources
            old.unlink(missing_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    except OSError:
        pass


def warm_help_cache() -> int:
    """Build and keep every ``sdpo <command> --help`` (and every step's) for this terminal's width and the
    widest; ``make install`` runs it, so that each help answers at once afterwards. Returns the count."""
    import contextlib
    import io

    global _width_override
    count = 0
    for width in dict.fromkeys((_help_width(), HELP_WIDTH)):
        _width_override = width
        try:
            for name in COMMANDS:
                module = importlib.import_module(f"sdpo.commands.{COMMANDS[name].module}")
                steps = list(getattr(module, "SUBCOMMANDS", None) or {})
                for argv in [[name]] + [[name, step] for step in steps]:
                    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
                        main([*argv, "--help"])
                    count += 1
        finally:
            _width_override = None
    return count


def _cached_help(name: str, rest: Sequence[str]) -> bool:
    """``sdpo <name> [step] --help`` from the cache when it is there (importing a trainer's module, for its
    options, takes seconds; the cached text answers at once). True if it printed the help."""
    if not any(a in ("-h", "--help") for a in rest):
        return False
    step = rest[0] if rest and not rest[0].startswith("-") else None
    # `sdpo spo train --help` is the step's help (kept as "sdpo spo train"), `sdpo spo --help` the list of steps
    # (kept as "sdpo spo <step>"), `sdpo eval checkpoints --help` the command's (kept as "sdpo eval")
    text = help_cache_load(f"sdpo {name} {step}") if step else help_cache_load(f"sdpo {name} <step>")
    if text is None:
        text = help_cache_load(f"sdpo {name}")
    if text is None:
        return False
    sys.stdout.write(text)
    sys.stdout.flush()
    return True


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        try:
            print(_usage())
        except BrokenPipeError:  # `sdpo --help | head`
            import os

            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    if argv[0] in ("-V", "--version"):
        from sdpo import __version__

        print(f"sdpo {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        _error(f"sdpo: unknown command {name!r}", f"\n\n{_usage()}")
        return 2
    if _cached_help(name, rest):
        raise SystemExit(0)  # as argparse does after printing a help
    from sdpo import threads
    from sdpo.progress import main_process, quiet_logs, set_command_line


    try:
        threads_flag, rest = threads.take_flag(rest)
    except ValueError as err:
        _error(f"sdpo {name}: error: {err}")
        return 2
    choice = None
    if not any(a in ("-h", "--help") for a in rest):
        # before torch is imported: its thread count and OpenMP's wait policy (sdpo.threads); said once parsed
        choice = threads.configure(threads_flag)
    speaking = name in COMPUTE_COMMANDS and main_process()
    notice = _slow_start_notice(name) if speaking else None

    def parsed():  # the options are fine: say what the run uses, before anything slow
        if notice is not None:
            notice.cancel()
        if speaking and choice is not None and choice.source != "the calling program":
            print(choice.line(), file=sys.stderr, flush=True)

    quiet_logs()  # warnings once (rank 0 only under a launcher), no library banners or nested bars
    set_command_line(True)  # sdpo.progress.note: lines such as "loading model ..." for the person at the terminal
    try:
        return _run_command(name, rest, parsed)
    finally:
        if notice is not None:
            notice.cancel()
        set_command_line(False)


def _run_command(name: str, rest: list[str], parsed: Callable[[], None]) -> int:
    module = importlib.import_module(f"sdpo.commands.{COMMANDS[name].module}")
    subcommands = getattr(module, "SUBCOMMANDS", None)
    if subcommands is not None:  # e.g. `sdpo spo train ...`
        if not rest or rest[0] not in subcommands:
            width = max(len(k) for k in subcommands)
            listing = "\n".join(f"  {k.ljust(width)}  {v[2]}" for k, v in subcommands.items())
            usage = f"usage: sdpo {name} <step> [options]\n\nsteps:\n{listing}"
            if rest and rest[0] in ("-h", "--help"):
                help_cache_store(f"sdpo {name} <step>", usage + "\n")
                print(usage)
                return 0
            what = f"unknown step {rest[0]!r}" if rest else "missing step"
            _error(f"sdpo {name}: error: {what}", f"\n\n{usage}")
            return 2
        sub, rest = rest[0], rest[1:]
        arguments, sub_run, summary = subcommands[sub]
        try:
            args = parse_command_args(name, arguments, rest, description=summary, prog=f"sdpo {name} {sub}")
            parsed()
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
        parsed()
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


def _slow_start_notice(name: str, after_s: float = 2.0):
    """In a terminal, a line if loading the libraries (torch, transformers) keeps the user waiting before the
    options are even read; cancelled once they are. None where stderr is not a terminal."""
    try:
        if not sys.stderr.isatty():
            return None
    except (AttributeError, ValueError):
        return None
    import threading

    timer = threading.Timer(after_s, lambda: print(f"sdpo {name}: loading torch and transformers ...",
                                                   file=sys.stderr, flush=True))
    timer.daemon = True
    timer.start()
    return timer


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
