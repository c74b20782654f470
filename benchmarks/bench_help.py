"""Time `sdpo <command> --help` for every command (and every `sdpo spo` step), each in a fresh process.

    python benchmarks/bench_help.py            # cold (empty help cache) then warm, 3 runs each
    python benchmarks/bench_help.py --runs 5

Prints one JSON line: per command the best wall time cold (help built from the argument dataclasses,
in a process with an empty SDPO_CACHE) and warm (the help cache filled by the first call, as after
`make install`), the slowest warm time, and whether every warm time is under the 1 s target
(issue 26 item 4). A generous bound, read from the figures; no test asserts timings.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def commands() -> list[list[str]]:
    from sdpo.cli import COMMANDS

    out = [[name] for name in COMMANDS]
    out += [["spo", step] for step in ("synthetic", "generate", "train", "evaluate", "grid", "analyze")]
    return out


def time_help(argv: list[str], cache: str) -> float:
    env = dict(os.environ, SDPO_CACHE=cache, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "sdpo.cli", *argv, "--help"], capture_output=True, text=True,
                          env=env, cwd=ROOT)
    took = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"sdpo {' '.join(argv)} --help failed: {done.stderr[-2000:]}")
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    baseline = min(time_help_python() for _ in range(args.runs))
    results = {}
    for argv in commands():
        name = " ".join(argv)
        cold, warm = [], []
        for _ in range(args.runs):
            with tempfile.TemporaryDirectory() as cache:
                cold.append(time_help(argv, cache))  # builds the help and fills this cache
                warm.append(time_help(argv, cache))
        results[name] = {"cold_s": round(min(cold), 3), "warm_s": round(min(warm), 3),
                         "warm_max_s": round(max(warm), 3)}
    warm_max = max(r["warm_max_s"] for r in results.values())
    print(json.dumps({
        "benchmark": "help", "machine": platform.node(), "cpu_count": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2), "date": time.strftime("%Y-%m-%d"),
        "python_start_s": round(baseline, 3), "runs": args.runs, "commands": results,
        "warm_max_s": warm_max, "all_warm_under_1s": warm_max < 1.0,
        "cold_max_s": max(r["cold_s"] for r in results.values()),
    }))


def time_help_python() -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
