"""torch's default threads vs sdpo's choice (sdpo.threads), quiet and next to a competing busy process.

    python benchmarks/bench_threads.py                       # embedded model, 1 busy process
    python benchmarks/bench_threads.py --model tiny-random --busy 2 --iters 5

Each configuration runs in a fresh process (OpenMP reads its settings once, when torch loads) and times a
forward + backward pass of the model on a batch of token ids (after one warm-up pass):

- ``default``: what torch does by itself (one thread per core, OpenMP's default wait policy), with
  OMP_NUM_THREADS and OMP_WAIT_POLICY removed from its environment;
- ``chosen``: ``sdpo.threads.configure()`` before torch loads (what the ``sdpo`` command does).

``busy`` runs the same two next to ``--busy`` processes that spin on the CPU (started a few seconds
before, kept running until the pass ends). Prints one JSON line: seconds per pass (median), the threads
each used, the ratios default/chosen, and the load average before each run. The machine is shared: only
the ratios measured here side by side mean something.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, os, sys, time
sys.path.insert(0, {src!r})
if {chosen!r}:
    from sdpo.threads import configure
    choice = configure()
    how = choice.line()
else:
    how = "torch default"
import torch
from sdpo.models import load_model
model, tok = load_model({model!r})
model.float().train()
torch.manual_seed(0)
ids = torch.randint(0, len(tok), ({batch}, {length}))
times = []
for i in range({iters} + 1):
    start = time.perf_counter()
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    model.zero_grad(set_to_none=True)
    if i:
        times.append(time.perf_counter() - start)
print(json.dumps({{"threads": torch.get_num_threads(), "how": how, "times": times,
                  "wait_policy": os.environ.get("OMP_WAIT_POLICY", "")}}))
"""

SPIN = "import time\nend = time.time() + {seconds}\nwhile time.time() < end:\n    pass\n"


def run_child(args, chosen: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS",
                                                              "SDPO_NUM_THREADS")}
    code = CHILD.format(src=str(ROOT / "src"), chosen=chosen, model=args.model, batch=args.batch, length=args.length,
                        iters=args.iters)
    load = os.getloadavg()[0]
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=3600)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["median_s"] = round(statistics.median(result.pop("times")), 4)
    result["load_before"] = round(load, 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="alias or path (tiny-random: seconds)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--iters", type=int, default=3, help="timed passes per configuration")
    parser.add_argument("--busy", type=int, default=1, help="competing processes spinning on the CPU")
    args = parser.parse_args()

    results = {}
    for setting in ("quiet", "busy"):
        spinners = []
        if setting == "busy":
            spinners = [subprocess.Popen([sys.executable, "-c", SPIN.format(seconds=3600)]) for _ in range(args.busy)]
            time.sleep(3)
        try:
            for config in ("default", "chosen"):
                results[f"{setting}_{config}"] = run_child(args, chosen=config == "chosen")
        finally:
            for p in spinners:
                p.kill()
                p.wait()
    ratios = {s: round(results[f"{s}_default"]["median_s"] / results[f"{s}_chosen"]["median_s"], 2)
              for s in ("quiet", "busy")}
    print(json.dumps({
        "benchmark": "threads", "machine": platform.node(), "cpu": platform.processor() or platform.machine(),
        "cores": len(os.sched_getaffinity(0)), "date": time.strftime("%Y-%m-%d %H:%M"), "model": args.model,
        "batch": args.batch, "length": args.length, "busy_processes": args.busy, "results": results,
        "default_over_chosen": ratios,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }))


if __name__ == "__main__":
    main()
