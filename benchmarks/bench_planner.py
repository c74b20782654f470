"""Micro-batch planner vs one padded batch, quiet and with a competing CPU load.

Side by side in one process, on the embedded model (``--layers N``: its first N decoder
layers only, for a loaded machine), no gradients:

* ``naive``: the naive padded batch (``sdpo.reference.naive_hindsight_logprobs``: one
  right-padded forward per side, float32 log-softmax over every position);
* ``one_batch``: sdpo's scorer with planning off (one padded micro-batch for both sides);
* ``planned``: sdpo's scorer with its defaults (planner with the measured, cached
  per-forward overhead, at most 4 groups, one batch unless planning saves >= 15 %).

Workloads: ``uneven`` (the 16 bundled cases, ``cases.py``) and ``even`` (the same
contexts, every response cut to the same 48 tokens, contexts equalised). Conditions:
``quiet`` and ``loaded`` (a second process doing 1024^3 float32 matmuls on all cores the
whole time). Printed: one JSON line per workload x condition with the median seconds,
the ratios ``naive / planned`` and ``one_batch / planned`` (>= 1.0: the planner is not
slower) and the plan's group sizes.

    python benchmarks/bench_planner.py --repeats 3
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cases import benchmark_cases  # noqa: E402

from sdpo.models import load_model  # noqa: E402
from sdpo.reference import naive_hindsight_logprobs  # noqa: E402
from sdpo.signal import (  # noqa: E402
    DEFAULT_MAX_GROUPS,
    DEFAULT_MIN_SAVING,
    _OVERHEAD_SAFETY,
    EncodedExample,
    encode_examples,
    forward_overhead_tokens,
    hindsight_logprobs,
    plan_microbatches,
)


def _burn(stop, threads: int) -> None:
    torch.set_num_threads(threads)
    a = torch.randn(1024, 1024)
    while not stop.is_set():
        a = torch.mm(a, a).div_(a.norm())


def _run(method, model, encoded, pad):
    with torch.no_grad():
        if method == "naive":
            return naive_hindsight_logprobs(model, encoded, pad)
        extra = {"overhead_tokens": 10**9} if method == "one_batch" else {}
        return hindsight_logprobs(model, encoded, pad_token_id=pad, **extra)


def workloads(tok):
    uneven = encode_examples(tok, benchmark_cases())
    width = min(len(e.student_context) for e in uneven)
    even = [EncodedExample(e.student_context[-width:], e.teacher_context[-width - 16:], (e.response * 48)[:48])
            for e in uneven]
    return {"uneven": uneven, "even": even}


def bench(model, encoded, pad, repeats: int) -> dict:
    methods = ["naive", "one_batch", "planned"]
    times = {m: [] for m in methods}
    for m in methods:  # warm-up
        _run(m, model, encoded, pad)
    for r in range(repeats):
        for m in methods if r % 2 == 0 else methods[::-1]:
            start = time.perf_counter()
            _run(m, model, encoded, pad)
            times[m].append(time.perf_counter() - start)
    med = {m: statistics.median(t) for m, t in times.items()}
    lengths = [(len(e.student_context), len(e.response)) for e in encoded]
    lengths += [(len(e.teacher_context), len(e.response)) for e in encoded]
    overhead = int(_OVERHEAD_SAFETY * forward_overhead_tokens(model))
    plan = plan_microbatches(lengths, overhead_tokens=overhead, max_groups=DEFAULT_MAX_GROUPS,
                             min_saving=DEFAULT_MIN_SAVING)
    return {
        **{f"{m}_s": round(t, 3) for m, t in med.items()},
        "planned_vs_naive": round(med["naive"] / med["planned"], 3),
        "planned_vs_one_batch": round(med["one_batch"] / med["planned"], 3),
        "plan_group_sizes": [len(g) for g in plan],
        "overhead_tokens": overhead,
        "response_tokens": sum(len(e.response) for e in encoded),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--conditions", default="quiet,loaded")
    parser.add_argument("--workloads", default="uneven,even")
    parser.add_argument("--dtype", default="auto", help="auto (mixed bf16 where fast), float32, bfloat16")
    parser.add_argument("--layers", type=int, default=None,
                        help="keep only the first N decoder layers (a cheaper model of the same width)")
    args = parser.parse_args()
    model, tok = load_model("smollm2-135m", dtype=args.dtype, device="cpu")
    model.eval()
    if args.layers:
        model.model.layers = model.model.layers[: args.layers]
        model.config.num_hidden_layers = args.layers
    loads = workloads(tok)
    for condition in args.conditions.split(","):
        stop, proc = None, None
        if condition == "loaded":
            ctx = mp.get_context("spawn")
            stop = ctx.Event()
            proc = ctx.Process(target=_burn, args=(stop, torch.get_num_threads()), daemon=True)
            proc.start()
            time.sleep(2)
        try:
            for name in args.workloads.split(","):
                row = {"workload": name, "condition": condition, **bench(model, loads[name], tok.pad_token_id,
                                                                        args.repeats)}
                row.update(dtype=args.dtype, layers=model.config.num_hidden_layers, torch=torch.__version__, threads=torch.get_num_threads(), machine=platform.machine(),
                           date=time.strftime("%Y-%m-%d %H:%M"), load_avg=[round(x, 2) for x in os.getloadavg()])
                print(json.dumps(row), flush=True)
        finally:
            if proc is not None:
                stop.set()
                proc.join(10)


if __name__ == "__main__":
    main()
