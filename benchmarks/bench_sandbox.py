"""Per-candidate overhead of the code sandbox: bubblewrap vs the process-only one.

Runs the same small candidate (3 tests, correct) N times one after another with each
sandbox and reports the median and 90th-percentile wall time per candidate, then a
batch of candidates through ``run_python_tests_batch`` with a worker limit
(throughput). ``old-process`` is the sandbox this replaced (single process, results
file in its own directory), loaded from git at ``--old-commit`` when git has it.

    .venv/bin/python benchmarks/bench_sandbox.py --repeats 30 --json sandbox.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sdpo.feedback.sandbox import SandboxLimits, resolve_sandbox, run_python_tests, run_python_tests_batch

ROOT = Path(__file__).resolve().parents[1]
CODE = "def total(xs):\n    return sum(xs)\n"
TESTS = [{"args": [[1, 2, 3]], "expected": 6}, {"args": [[]], "expected": 0}, {"args": [[5]], "expected": 5}]


def load_old(commit: str):
    """The pre-bubblewrap sandbox module from git (sandbox.py + its runner), or None."""
    try:
        files = {name: subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:src/sdpo/feedback/{name}"],
                                      capture_output=True, text=True, check=True).stdout
                 for name in ("sandbox.py", "_sandbox_runner.py")}
    except (OSError, subprocess.CalledProcessError):
        return None
    folder = Path(tempfile.mkdtemp(prefix="sdpo-old-sandbox-"))
    for name, text in files.items():
        (folder / name).write_text(text)
    spec = importlib.util.spec_from_file_location("old_sandbox", folder / "sandbox.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["old_sandbox"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def timed(fn, repeats: int) -> dict:
    fn()  # warm-up (probes, caches)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    times.sort()
    return {"median_ms": round(1000 * statistics.median(times), 1),
            "p90_ms": round(1000 * times[int(0.9 * (len(times) - 1))], 1),
            "min_ms": round(1000 * times[0], 1), "repeats": repeats}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--batch", type=int, default=16, help="candidates in the throughput batch")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--old-commit", default="9a4bef0", help="git commit with the pre-bubblewrap sandbox")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    limits = SandboxLimits(timeout_s=2.0)
    rows = {}
    old = load_old(args.old_commit)
    if old is not None:
        def run_old():
            result = old.run_python_tests(CODE, "total", TESTS, old.SandboxLimits(timeout_s=2.0))
            assert result.score == 1.0, result.feedback
        rows["old-process"] = timed(run_old, args.repeats)
    for name in ("process-unsafe", "bwrap"):
        def run_new(name=name):
            result = run_python_tests(CODE, "total", TESTS, limits, sandbox=name)
            assert result.score == 1.0, result.feedback
        rows[name] = timed(run_new, args.repeats)
        jobs = [(CODE, "total", TESTS)] * args.batch
        start = time.perf_counter()
        results = run_python_tests_batch(jobs, limits, sandbox=name, max_workers=args.workers)
        wall = time.perf_counter() - start
        assert all(r.score == 1.0 for r in results)
        rows[name]["batch"] = {"candidates": args.batch, "workers": args.workers,
                               "wall_s": round(wall, 3), "ms_per_candidate": round(1000 * wall / args.batch, 1)}
    report = {
        "what": "wall time per candidate (3 tests, correct solution), sequential; then a batch with a worker limit",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "kernel": platform.release()},
        "bwrap_isolation": resolve_sandbox("bwrap")._ensure()[1],
        "sandboxes": rows,
    }
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return report


if __name__ == "__main__":
    main()
