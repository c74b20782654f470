"""MkDocs hooks for the sdpo documentation site (``hooks:`` in mkdocs.yml).

* ``cli.md``: the ``<!-- cli-reference -->`` marker is replaced, at build time, by one
  table per command of :data:`sdpo.cli.COMMANDS` (and per step of commands with steps,
  e.g. ``sdpo spo train``), rendered from the arguments dataclass the command parses:
  option, type, default, help. The reference cannot go stale: it *is* the definitions.
* ``benchmarks.md``: ``<!-- include: PATH -->`` is replaced by that repository file (e.g.
  ``benchmarks/RESULTS.md``) with its relative links rewritten for the site.
* Docstrings written with Sphinx roles (``:func:`x```) are shown as plain code.

``tests/test_docs.py`` imports this file to check that every command and option is in
the rendered reference.
"""

from __future__ import annotations

import dataclasses
import importlib
import posixpath
import re
import typing
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI_MARKER = "<!-- cli-reference -->"
INCLUDE = re.compile(r"<!-- include: (\S+) -->")
# base classes whose (hundreds of) fields are listed by name only
FOREIGN_MODULES = ("transformers", "trl")


# ----------------------------------------------------------------------------- CLI reference


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _code(text: str) -> str:
    return " ".join(str(text).split())


def _type_name(field: dataclasses.Field, hints: dict) -> str:
    hint = hints.get(field.name, field.type)
    text = hint if isinstance(hint, str) else typing._type_repr(hint) if hasattr(typing, "_type_repr") else repr(hint)
    text = text.replace("typing.", "").replace("NoneType", "None")
    text = re.sub(r"Optional\[(.*)\]$", r"\1 | None", text)
    text = re.sub(r"Union\[(.*), None\]$", r"\1 | None", text)
    return text


def _default(field: dataclasses.Field):
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        try:
            return field.default_factory()  # type: ignore[misc]
        except Exception:  # noqa: BLE001 - a factory that needs context: say so
            return "(computed)"
    return "(required)"


def _default_text(value) -> str:
    if isinstance(value, str) and value in ("(required)", "(computed)"):
        return value
    if isinstance(value, str):
        return f"`{value!r}`" if value else '`""`'
    if hasattr(value, "value") and not isinstance(value, (int, float)):  # enums
        value = value.value
    return f"`{value!r}`"


def _origins(cls) -> tuple[set[str], set[str], type | None]:
    """(fields our classes declare, fields only a transformers/TRL base declares, that base)."""
    ours, theirs, base = set(), set(), None
    for klass in cls.__mro__:
        names = set(vars(klass).get("__annotations__", {}))
        if klass.__module__.split(".")[0] in FOREIGN_MODULES:
            theirs |= names
            if base is None and dataclasses.is_dataclass(klass):
                base = klass
        else:
            ours |= names
    return ours, theirs - ours, base


def option_table(cls) -> str:
    """Markdown: a table of the options a dataclass defines, inherited Hugging Face ones last."""
    fields = [f for f in dataclasses.fields(cls) if f.init]
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - forward references we cannot resolve: show them as written
        hints = {}
    _ours, foreign, base = _origins(cls)
    base_defaults = {f.name: _default(f) for f in dataclasses.fields(base)} if base is not None else {}
    own, inherited = [], []
    for f in fields:
        if f.name in foreign:
            changed = f.name in base_defaults and repr(_default(f)) != repr(base_defaults[f.name])
            (own if changed else inherited).append(f)
        else:
            own.append(f)
    groups = _grouped(own)
    lines: list[str] = []
    for title, members in groups:
        if title:
            lines += ["", f"**{title} options**", ""]
        lines += ["| option | type | default | help |", "|---|---|---|---|"]
        for f in members:
            note = " (our default; inherited option)" if f.name in foreign else ""
            help_text = f.metadata.get("help", "") + note
            choices = f.metadata.get("choices")
            if choices:
                help_text += f" (one of: {', '.join(map(str, choices))})"
            # a pipe inside a code span does not split a cell (and a backslash there would show)
            lines.append(f"| `--{f.name}` | `{_code(_type_name(f, hints))}` | {_code(_default_text(_default(f)))} | "
                         f"{_cell(help_text)} |")
    if inherited and base is not None:
        names = ", ".join(f"`--{f.name}`" for f in inherited)
        lines += ["", f"Also accepted, with their `{base.__module__.split('.')[0]}.{base.__name__}` defaults "
                      f"({len(inherited)} options): {names}."]
    return "\n".join(lines)


def _grouped(fields: list) -> list[tuple[str, list]]:
    """The fields in the groups ``sdpo <command> --help`` prints (``sdpo.cli.option_group``), in its order;
    one untitled group for a short command, as the help has."""
    from sdpo import cli

    option_group = getattr(cli, "option_group", None)
    if option_group is None or len(fields) < getattr(cli, "_GROUPED_FROM", 12):
        return [("", fields)]
    by_group: dict[str, list] = {}
    for f in fields:
        by_group.setdefault(option_group(f.name, f.metadata), []).append(f)
    order = list(getattr(cli, "HELP_GROUPS", ())) + [g for g in by_group if g not in getattr(cli, "HELP_GROUPS", ())]
    return [(g, by_group[g]) for g in order if by_group.get(g)]


def cli_commands() -> list[tuple[str, str, type]]:
    """Every (``sdpo ...`` invocation, summary, arguments dataclass), in COMMANDS order."""
    from sdpo.cli import COMMANDS

    out = []
    for name, command in COMMANDS.items():
        module = importlib.import_module(f"sdpo.commands.{command.module}")
        subcommands = getattr(module, "SUBCOMMANDS", None)
        if subcommands is not None:
            for sub, (arguments, _run, summary) in subcommands.items():
                out.append((f"sdpo {name} {sub}", summary, arguments))
        else:
            out.append((f"sdpo {name}", command.summary, module.ARGUMENTS))
    return out


def cli_reference() -> str:
    from sdpo.cli import COMMANDS

    commands = cli_commands()
    parts = ["| command | what it does |", "|---|---|"]
    parts += [f"| [`sdpo {name}`](#{_anchor('sdpo ' + name)}) | {_cell(cmd.summary)} |" for name, cmd in COMMANDS.items()]
    seen_parent = set()
    for invocation, summary, arguments in commands:
        parent = " ".join(invocation.split()[:2])
        if invocation != parent and parent not in seen_parent:
            seen_parent.add(parent)
            parts += ["", f"## `{parent}`", "", _cell(COMMANDS[parent.split()[1]].summary) + ".",
                      "", f"Steps: {', '.join(f'`{i.split()[2]}`' for i, _, _ in commands if i.startswith(parent + ' '))}."]
        level = "###" if invocation != parent else "##"
        positional = getattr(importlib.import_module(f"sdpo.commands.{COMMANDS[parent.split()[1]].module}"),
                             "POSITIONAL", None)
        usage = f"{invocation} [options]" if not positional or invocation != parent else \
            f"{invocation} [{positional}] [options]"
        parts += ["", f"{level} `{invocation}`", "", _cell(summary) + ".", "", f"Usage: `{usage}` (`--config FILE.yaml` "
                  "sets any option from a YAML file; flags given too win).", "", option_table(arguments)]
    return "\n".join(parts) + "\n"


def _anchor(title: str) -> str:
    """The id MkDocs' toc gives a heading `` `title` ``."""
    return re.sub(r"[^\w\- ]", "", title).strip().lower().replace(" ", "-")


# ----------------------------------------------------------------------------- includes


_LINK = re.compile(r"(!?\[[^\]]*\]\()([^)\s]+)(\))")


def include_repo_file(rel_path: str, page_src: str, repo_url: str | None) -> str:
    """A repository file's text for a page at ``docs/<page_src>``, its relative links rewritten:
    to files the site has (under docs/) relative to the page, elsewhere to the repository."""
    text = (ROOT / rel_path).read_text(encoding="utf-8")
    here = posixpath.dirname(rel_path)
    page_dir = posixpath.dirname(posixpath.join("docs", page_src))

    def fix(match: re.Match) -> str:
        target = match.group(2)
        if re.match(r"^[a-z]+:|^#|^/", target):
            return match.group(0)
        path, _, frag = target.partition("#")
        repo_path = posixpath.normpath(posixpath.join(here, path))
        if repo_path.startswith("docs/"):
            new = posixpath.relpath(repo_path, page_dir)
        elif repo_url:
            new = f"{repo_url.rstrip('/')}/blob/main/{repo_path}"
        else:
            return f"`{repo_path}`" if not match.group(1).startswith("!") else match.group(0)
        return f"{match.group(1)}{new}{'#' + frag if frag else ''}{match.group(3)}"

    return _LINK.sub(fix, text)


# ----------------------------------------------------------------------------- mkdocs events


def on_page_markdown(markdown: str, page, config, files) -> str:
    if CLI_MARKER in markdown:
        markdown = markdown.replace(CLI_MARKER, cli_reference())
    return INCLUDE.sub(lambda m: include_repo_file(m.group(1), page.file.src_uri, config.get("repo_url")), markdown)


_SPHINX_ROLE = re.compile(r":(?:py:)?(?:func|class|mod|meth|attr|data|exc|obj):(<code>)")


def on_page_content(html: str, page, config, files) -> str:
    return _SPHINX_ROLE.sub(r"\1", html)
