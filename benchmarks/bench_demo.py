"""`make demo` wall time: this checkout against an earlier commit, alternating, on one machine.

The demo's three commands (``sdpo models --prepare``, ``sdpo prepare tldr``, the 8-step
``sdpo train-online``; read from the Makefile of each source tree) run end to end for
``--repeats`` rounds, the order of the two trees alternating each round. The earlier tree
is a ``git worktree`` of ``--before`` (made here, removed after) run with the same
virtual environment and ``PYTHONPATH`` pointing at its ``src``. Printed: one JSON line
with each run's wall time, the medians, the ratio before/after, and what each demo run
generated (response tokens per step, from its ``metrics.jsonl``), since fewer generated
tokens alone would also make a run faster. Each command is timed too, and the ratio is also
given over the commands both demos run (a later demo may add a part).

    python benchmarks/bench_demo.py --before 9f8f872 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def demo_commands(makefile: Path) -> list[str]:
    """The shell lines of the ``demo:`` target (``$(BIN)`` and ``$(DEMO_DIR)`` left for the caller)."""
    lines, inside, current = [], False, ""
    for raw in makefile.read_text().splitlines():
        if raw.startswith("demo:"):
            inside = True
            continue
        if inside:
            if not raw.startswith("\t"):
                break
            current += raw.strip().rstrip("\\") + " "
            if not raw.rstrip().endswith("\\"):
                lines.append(current.strip())
                current = ""
    return [line.lstrip("@") for line in lines if not line.startswith(("rm -rf", "@echo", "echo"))]


def _key(line: str) -> str:
    return " ".join(line.split()[:2]).replace("$(BIN)/", "")


def run_demo(tree: Path, venv_bin: Path, out: Path, *, pythonpath: str | None, only: set | None = None) -> dict:
    env = dict(os.environ)
    env.pop("WORLD_SIZE", None)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    if out.exists():
        shutil.rmtree(out)
    t0 = time.perf_counter()
    per_command = {}
    for line in demo_commands(tree / "Makefile"):
        if only is not None and _key(line) not in only:
            continue
        cmd = line.replace("$(BIN)", str(venv_bin)).replace("$(DEMO_DIR)", str(out))
        t1 = time.perf_counter()
        done = subprocess.run(shlex.split(cmd), cwd=tree, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"bench_demo.py: error: {cmd!r} failed in {tree}:\n{done.stderr[-2000:]}")
        per_command[_key(line)] = round(time.perf_counter() - t1, 1)
    seconds = time.perf_counter() - t0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    tokens = [r.get("response_tokens_mean") for r in rows if "response_tokens_mean" in r]
    return {"seconds": round(seconds, 1), "per_command": per_command, "steps": len(rows),
            "response_tokens_mean": round(statistics.mean(tokens), 1) if tokens else None,
            "step_seconds": round(statistics.mean(r.get("time/step", 0) or 0 for r in rows), 2) if rows else None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", required=True, help="the earlier commit (any git revision)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--common-only", action="store_true", help="run only the commands both demos have")
    args = p.parse_args()
    if args.repeats < 1:
        raise SystemExit("bench_demo.py: error: --repeats must be >= 1")
    venv_bin = Path(sys.executable).parent
    work = Path(tempfile.mkdtemp(prefix="bench-demo-"))
    before_tree = work / "before"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(before_tree), args.before],
                   check=True, capture_output=True)
    commit = subprocess.run(["git", "-C", str(before_tree), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    after_commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                  text=True).stdout.strip()
    only = None
    if args.common_only:
        only = ({_key(x) for x in demo_commands(before_tree / "Makefile")}
                & {_key(x) for x in demo_commands(ROOT / "Makefile")})
    runs = {"before": [], "after": []}
    try:
        for r in range(args.repeats):
            order = ("before", "after") if r % 2 == 0 else ("after", "before")
            for which in order:
                tree = before_tree if which == "before" else ROOT
                result = run_demo(tree, venv_bin, work / f"demo-{which}-{r}",
                                  pythonpath=str(before_tree / "src") if which == "before" else None, only=only)
                runs[which].append(result)
                print(f"round {r + 1} {which}: {result['seconds']} s", file=sys.stderr, flush=True)
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(before_tree)], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    med = {k: statistics.median(x["seconds"] for x in v) for k, v in runs.items()}
    # the commands both demos run (the later demo may add a part the earlier one lacks)
    common = set(runs["before"][0]["per_command"]) & set(runs["after"][0]["per_command"])
    med_common = {k: statistics.median(sum(x["per_command"][c] for c in common) for x in v) for k, v in runs.items()}
    print(json.dumps({
        "benchmark": "demo_walltime", "before_commit": commit, "after_commit": after_commit, "runs": runs,
        "median_seconds": med, "speedup_before_over_after": round(med["before"] / med["after"], 2),
        "common_commands": sorted(common), "median_seconds_common": med_common,
        "speedup_common": round(med_common["before"] / med_common["after"], 2),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_avg": os.getloadavg()},
        "date": time.strftime("%Y-%m-%d %H:%M"), "command": "python " + " ".join(map(shlex.quote, sys.argv)),
    }))


if __name__ == "__main__":
    main()
