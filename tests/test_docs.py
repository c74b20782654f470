"""The documentation: every code block in README.md and docs/*.md is run, or says why not.

A fenced block is accounted for by the HTML comment on the line before it (blank lines
between are allowed):

* ``<!-- run-by: tests/<file>.py ... -->``: that test runs it (the first hour, the
  rich-feedback quick start); the test file must exist and name the page;
* ``<!-- not-run: reason -->``: not run, for the reason given (a GPU, an API key, a hub
  download, a server that does not stop, a run of many minutes);
* no comment, ``bash`` or ``python``: run here, in page order (the site's nav order, then
  the README), in one scratch directory that has the repository's ``scripts/``,
  ``examples/``, ``configs/``, ``auxiliary/`` and ``benchmarks/`` linked in and ``.venv``
  pointing at this interpreter's environment, with the hub switched off. A block that
  is identical to one already run (the README's tastes are the pages' quick starts)
  is not run twice;
* ``text`` blocks are output or listings and are not run.

Also here: the README's size and links, and the CLI reference that docs/hooks.py renders
from the commands' dataclasses (every command, step and option).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
FENCE = re.compile(r"^```([\w-]*)\n(.*?)^```$", re.S | re.M)
MARKER = re.compile(r"<!--\s*(run-by|not-run):\s*(.*?)\s*-->\s*$", re.S)
RUNNABLE = {"bash", "python"}
LINKED = ("scripts", "examples", "configs", "auxiliary", "benchmarks")
# Repository files the site includes whole (docs/benchmarks.md): records of measured runs,
# whose commands take minutes to hours; they are not run here.
INCLUDED_RECORDS = {"benchmarks/RESULTS.md": "benchmark records: the commands that produced the measurements"}


@dataclasses.dataclass
class Block:
    page: str  # path relative to the repository
    line: int
    lang: str
    code: str
    mark: str | None  # "run-by", "not-run" or None
    reason: str

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def _nav_pages() -> list[str]:
    """docs pages in the order of mkdocs.yml's nav (pages missing from it last)."""
    config = yaml.load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"), Loader=yaml.BaseLoader)
    order: list[str] = []

    def walk(item):
        if isinstance(item, str):
            order.append(item)
        elif isinstance(item, dict):
            for value in item.values():
                walk(value)
        elif isinstance(item, list):
            for value in item:
                walk(value)

    walk(config["nav"])
    pages = [p for p in order if p.endswith(".md")]
    rest = sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md") if str(p.relative_to(DOCS)) not in pages)
    return [f"docs/{p}" for p in pages + rest]


def blocks_of(rel_path: str) -> list[Block]:
    text = (ROOT / rel_path).read_text(encoding="utf-8")
    out = []
    for match in FENCE.finditer(text):
        before = text[: match.start()].rstrip("\n")
        last_line = before.rsplit("\n", 1)[-1]
        found = MARKER.search(last_line)
        mark, reason = (found.group(1), found.group(2).strip()) if found else (None, "")
        out.append(Block(rel_path, text.count("\n", 0, match.start()) + 1, match.group(1), match.group(2), mark, reason))
    return out


def all_blocks() -> list[Block]:
    return [b for page in [*_nav_pages(), "README.md"] for b in blocks_of(page)]


def to_run() -> list[Block]:
    return [b for b in all_blocks() if b.mark is None and b.lang in RUNNABLE]


# ----------------------------------------------------------------------------- accounting


def test_every_code_block_is_run_or_says_why_not():
    blocks = all_blocks()
    assert len(blocks) > 20
    problems = []
    for b in blocks:
        if not b.lang:
            problems.append(f"{b.id}: a fenced block needs a language (bash, python, text, ...)")
        elif b.mark is None and b.lang not in RUNNABLE | {"text"}:
            problems.append(f"{b.id}: a {b.lang} block is neither run nor marked <!-- not-run: reason -->")
        elif b.mark == "not-run" and len(b.reason.split()) < 3:
            problems.append(f"{b.id}: <!-- not-run: ... --> needs a reason, got {b.reason!r}")
        elif b.mark == "run-by":
            test_file = b.reason.split()[0] if b.reason else ""
            path = ROOT / test_file
            if not (test_file.startswith("tests/") and path.is_file()):
                problems.append(f"{b.id}: run-by names no test file ({b.reason!r})")
            elif Path(b.page).name not in path.read_text(encoding="utf-8"):
                problems.append(f"{b.id}: {test_file} does not read {Path(b.page).name}")
    assert not problems, "\n".join(problems)
    counts = {"run here": len(to_run()), "run by another test": sum(b.mark == "run-by" for b in blocks),
              "not run": sum(b.mark == "not-run" for b in blocks), "text": sum(b.lang == "text" and not b.mark for b in blocks)}
    print("docs code blocks:", counts)
    # most of what a reader can paste runs here
    assert counts["run here"] + counts["run by another test"] > counts["not run"], counts


def test_not_run_blocks_have_their_reasons_listed():
    """One line per block that is not run, so a reader (and a reviewer) sees what is untested and why."""
    not_run = [b for b in all_blocks() if b.mark == "not-run"]
    for b in not_run:
        print(f"not run: {b.id}: {b.reason}")
    assert all(b.reason for b in not_run)
    for rel_path, reason in INCLUDED_RECORDS.items():
        assert (ROOT / rel_path).is_file() and reason
        assert f"<!-- include: {rel_path} -->" in (DOCS / "benchmarks.md").read_text(encoding="utf-8")


# ----------------------------------------------------------------------------- README


def test_readme_is_short_and_links_resolve():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    assert "\n## Two commands\n" in text and "make demo" in text and "make test" in text
    measured = text[text.index("\n## What we measured\n"):]
    measured = measured[: measured.find("\n## ", 1)] if "\n## " in measured[1:] else measured
    assert "benchmarks/RESULTS.md" in measured
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if not re.match(r"^[a-z]+:", target):
            assert (ROOT / target).exists(), f"README links to a missing file: {target}"
    for page in ("online", "offline", "chat", "rich-feedback", "spo", "signal", "evaluation", "concepts",
                 "getting-started", "cli", "FIDELITY"):
        assert f"(docs/{page}.md" in text, f"README does not link docs/{page}.md"


def test_every_docs_page_is_in_the_nav():
    config = yaml.load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"), Loader=yaml.BaseLoader)
    nav = str(config["nav"])
    for page in DOCS.rglob("*.md"):
        assert str(page.relative_to(DOCS)) in nav, f"{page.relative_to(ROOT)} is not in mkdocs.yml's nav"


# ----------------------------------------------------------------------------- CLI reference


def _hooks():
    spec = importlib.util.spec_from_file_location("sdpo_docs_hooks", DOCS / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_reference_lists_every_command_and_option():
    from sdpo.cli import COMMANDS

    hooks = _hooks()
    page = (DOCS / "cli.md").read_text(encoding="utf-8")
    assert hooks.CLI_MARKER in page
    reference = hooks.cli_reference()
    commands = hooks.cli_commands()
    for name in COMMANDS:
        assert f"## `sdpo {name}`" in reference, name
    assert {c for c, _, _ in commands} >= {"sdpo spo synthetic", "sdpo spo train", "sdpo train-online"}
    for invocation, _, arguments in commands:
        section = reference[reference.index(f"`{invocation}`\n"):]
        following = [f"\n## `{c}`" for c, _, _ in commands if c != invocation] + \
                    [f"\n### `{c}`" for c, _, _ in commands if c != invocation]
        ends = [section.find(f) for f in following if section.find(f) > 0]
        section = section[: min(ends)] if ends else section
        for field in dataclasses.fields(arguments):
            if field.init:
                assert f"`--{field.name}`" in section, f"{invocation}: --{field.name} missing from the reference"
        ours = [f for f in dataclasses.fields(arguments) if f.init and f.metadata.get("help")
                and f"`--{f.name}` |" in section]
        for field in ours[:5]:  # the help text is the field's own
            first_words = " ".join(field.metadata["help"].split()[:3]).replace("|", "\\|")
            assert first_words in section, (invocation, field.name)


def test_cli_reference_table_rows_are_well_formed():
    reference = _hooks().cli_reference()
    rows = [line for line in reference.splitlines() if line.startswith("| `--")]
    assert len(rows) > 100
    for row in rows:
        cells = re.split(r"(?<!\\)\|(?=(?:[^`]*`[^`]*`)*[^`]*$)", row)
        assert len(cells) == 6, row  # leading '', option, type, default, help, trailing ''


def test_included_results_links_are_rewritten_for_the_site():
    text = _hooks().include_repo_file("benchmarks/RESULTS.md", "benchmarks.md", None)
    assert "](../docs/" not in text
    for target in re.findall(r"\]\(([^)#\s]+)\)", text):
        if not re.match(r"^[a-z]+:", target):
            assert (DOCS / target).exists(), target


# ----------------------------------------------------------------------------- running the blocks


_RESULTS: dict[str, tuple[int, str]] = {}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    work = tmp_path_factory.mktemp("docs-blocks")
    for name in LINKED:
        (work / name).symlink_to(ROOT / name, target_is_directory=True)
    (work / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
    return work


def _env(work: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("SDPO_PROGRESS", "WORLD_SIZE", "RANK", "SCRATCH")}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}", TRACKIO_DIR=str(work / "trackio"),
               PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRL_EXPERIMENTAL_SILENCE="1",
               CUDA_VISIBLE_DEVICES=env.get("CUDA_VISIBLE_DEVICES", ""))
    return env


def _run(block: Block, work: Path) -> tuple[int, str]:
    if block.lang == "python":
        script = work / f"block_{Path(block.page).stem}_{block.line}.py"
        script.write_text(block.code, encoding="utf-8")
        cmd = [sys.executable, str(script)]
    else:
        cmd = ["bash", "-c", "set -euo pipefail\n" + block.code]
    done = subprocess.run(cmd, cwd=work, env=_env(work), capture_output=True, text=True, timeout=1200)
    return done.returncode, (done.stdout[-3000:] + "\n--- stderr ---\n" + done.stderr[-3000:])


@pytest.mark.integration  # most blocks use the embedded model; all together take 5-10 minutes on 2 cores
@pytest.mark.parametrize("block_id", [b.id for b in to_run()])
def test_docs_block_runs_as_written(block_id, workspace):
    blocks = to_run()
    index = [b.id for b in blocks].index(block_id)
    for block in blocks[: index + 1]:  # the blocks before it first (a later one may use their outputs)
        if block.id in _RESULTS:
            continue
        same = next((b for b in blocks[: blocks.index(block)] if b.code == block.code and b.id in _RESULTS), None)
        _RESULTS[block.id] = _RESULTS[same.id] if same else _run(block, workspace)
    rc, output = _RESULTS[block_id]
    assert rc == 0, f"{block_id} exited {rc}:\n{blocks[index].code}\n--- output ---\n{output}"


# What the pages say those blocks leave behind (checked after all of them ran).
EXPECTED_OUTPUTS = (
    "data/tldr/train.jsonl", "data/tldr/validation.jsonl", "data/tldr_prompts_unique/train.jsonl",
    "runs/online-quick/metrics.jsonl", "runs/online-quick/summary.json", "runs/online-quick/checkpoint-2",
    "runs/online-quick/eval/winrates.json", "runs/online-quick/eval/winrates.png",
    "data/wildfeedback/wildfeedback_interactions.jsonl", "runs/offline-quick/metrics.jsonl",
    "runs/chat-sim/chat.db", "interactions.jsonl", "runs/example-smoke/summary.json",
    "runs/teacher-check/quick.json", "runs/spo-quick/summary.csv", "signals.json", "runs/signal-quick/report.html",
)


@pytest.mark.integration
def test_docs_blocks_leave_what_the_pages_say(workspace):
    blocks = to_run()
    test_docs_block_runs_as_written(blocks[-1].id, workspace)  # runs whatever has not run yet
    failed = [b.id for b in blocks if _RESULTS[b.id][0] != 0]
    assert not failed, failed
    missing = [p for p in EXPECTED_OUTPUTS if not (workspace / p).exists()]
    assert not missing, missing
    assert sum(1 for _ in open(workspace / "interactions.jsonl", encoding="utf-8")) >= 1
