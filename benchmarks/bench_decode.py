"""Decoding: transformers' default (dynamic) KV cache vs a static cache, with and without torch.compile.

Side by side in one process, the same model, contexts and seeds: ``sdpo.generation.hf_generate``
(left-padded batch, sampling at temperature 1 as the online trainer does) with

* ``dynamic``: the default cache (what the trainers use today);
* ``static``: ``cache_implementation="static"`` (pre-allocated cache, no concatenation);
* ``static+compile``: the same with the model's forward wrapped in ``torch.compile``
  (the first call's compile time is reported separately and left out of the median).

Each variant generates the same number of new tokens per row (``min_new_tokens`` =
``max_new_tokens``, so no variant stops early); rounds alternate the order; the median of
``--repeats`` rounds after one warm-up. Printed: one JSON line with seconds per call, new
tokens/s and the ratios to ``dynamic``.

    python benchmarks/bench_decode.py --rows 4 --new-tokens 64 --repeats 3
    python benchmarks/bench_decode.py --model tiny-random --rows 2 --new-tokens 8 --repeats 1 --no-compile
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sdpo.data.prompt_sources import load_prompt_rows, prepare_tldr  # noqa: E402
from sdpo.generation import left_pad  # noqa: E402
from sdpo.models import load_model  # noqa: E402
from sdpo.templates import get_template, render_context  # noqa: E402


def contexts_for(tokenizer, rows: int) -> list[list[int]]:
    train, _, _ = prepare_tldr(load_prompt_rows("tldr", "sample"))
    template = get_template("hindsight", system_prompt="tldr")
    out = [render_context(tokenizer, template.student_messages(p["prompt"] if isinstance(p, dict) else p.messages))
           for p in train[:rows]]
    return out


def run(model, tokenizer, contexts, *, new_tokens: int, cache: str | None, seed: int) -> float:
    ids, mask = left_pad(contexts, tokenizer.pad_token_id)
    kwargs = {"cache_implementation": cache} if cache else {}
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    with torch.no_grad():
        model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_p=None, top_k=None,
                       max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=tokenizer.pad_token_id,
                       **kwargs)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--rows", type=int, default=4)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-compile", action="store_true", help="leave out static+compile")
    p.add_argument("--dtype", default="auto")
    args = p.parse_args()
    model, tok = load_model(args.model, dtype=args.dtype, device="cpu")
    model.eval()
    contexts = contexts_for(tok, args.rows)
    variants = {"dynamic": None, "static": "static"}
    compile_seconds = None
    compiled = None
    if not args.no_compile:
        import copy

        compiled = copy.deepcopy(model)
        compiled.forward = torch.compile(compiled.forward, dynamic=False)
        t0 = time.perf_counter()
        run(compiled, tok, contexts, new_tokens=args.new_tokens, cache="static", seed=0)
        compile_seconds = time.perf_counter() - t0
    times: dict[str, list[float]] = {k: [] for k in variants}
    if compiled is not None:
        times["static+compile"] = []
    names = list(times)
    for name in names:  # warm-up
        run(compiled if name == "static+compile" else model, tok, contexts, new_tokens=args.new_tokens,
            cache=variants.get(name, "static"), seed=0)
    for r in range(args.repeats):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            times[name].append(run(compiled if name == "static+compile" else model, tok, contexts,
                                   new_tokens=args.new_tokens, cache=variants.get(name, "static"), seed=r + 1))
    med = {k: statistics.median(v) for k, v in times.items()}
    tokens = args.rows * args.new_tokens
    print(json.dumps({
        "benchmark": "decode_cache", "model": args.model, "rows": args.rows, "new_tokens": args.new_tokens,
        "context_tokens": [len(c) for c in contexts], "seconds": {k: round(v, 3) for k, v in med.items()},
        "new_tokens_per_s": {k: round(tokens / v, 1) for k, v in med.items()},
        "speedup_vs_dynamic": {k: round(med["dynamic"] / v, 3) for k, v in med.items()},
        "compile_first_call_s": round(compile_seconds, 1) if compile_seconds is not None else None,
        "all_seconds": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "dtype": str(next(model.parameters()).dtype), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "machine": platform.machine(), "load_avg": [round(x, 2) for x in os.getloadavg()],
        "date": time.strftime("%Y-%m-%d %H:%M"), "command": "python " + " ".join(sys.argv),
    }))


if __name__ == "__main__":
    main()
