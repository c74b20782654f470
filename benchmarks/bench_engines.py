"""Frozen-model generation engines side by side: answers/s and greedy agreement with transformers.

The work of ``sdpo eval checkpoints`` (greedy answers to held-out requests, batches of 8) on
the embedded model, through each engine of :mod:`sdpo.engines`, interleaved batch by batch
so that a busy machine slows every engine alike. Reports per engine: answers/s, new
tokens/s, the ratio to transformers (as ``sdpo eval`` loads it: ``--dtype auto``, i.e. bf16
autocast where bf16 measured faster on this CPU), and agreement with the answers of
transformers in float32 (``transformers-float32``, the exact reference of the float32
engines): identical answers, and the share of tokens before the first difference.

    python benchmarks/bench_engines.py                       # 32 everyday requests, 128 new tokens
    python benchmarks/bench_engines.py --prompts 8 --max-new-tokens 32 --engines transformers,ctranslate2
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))


def common_prefix(a, b) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--engines", default="transformers,transformers-float32,ctranslate2,ctranslate2-int8")
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=None, help="torch / CTranslate2 threads (default: sdpo.threads)")
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args(argv)

    from sdpo import threads

    choice = threads.configure(args.threads)
    import torch

    from sdpo.data.prompts import load_prompts
    from sdpo.engines import TransformersEngine, open_engine
    from sdpo.models import autocast_dtype, cpu_flags, cpu_model_name, load_model
    from sdpo.templates import fit_context, get_template

    names = [e.strip() for e in args.engines.split(",") if e.strip()]
    if names[0] != "transformers":
        names.insert(0, "transformers")  # the baseline of the ratios and of the agreement
    engines = {}
    setup = {}
    for name in names:
        start = time.perf_counter()
        if name == "transformers-float32":
            engines[name] = TransformersEngine(*load_model(args.model, dtype="float32", device="cpu"))
        else:
            engines[name] = open_engine(name, args.model, device="cpu")
        setup[name] = round(time.perf_counter() - start, 2)
    tok = engines["transformers"].tokenizer
    prompts = load_prompts(str(HERE / "data" / "everyday_prompts.jsonl"))[: args.prompts]
    template = get_template(system_prompt="general")
    contexts = [fit_context(tok, template, pr.messages, 1024)[0] for pr in prompts]
    # warm-up (first-call allocations), not timed
    for engine in engines.values():
        engine.generate(contexts[:2], max_new_tokens=4, temperature=0.0)
    seconds = {n: 0.0 for n in names}
    answers = {n: [] for n in names}
    for start in range(0, len(contexts), args.batch_size):
        batch = contexts[start : start + args.batch_size]
        order = names if (start // args.batch_size) % 2 == 0 else names[::-1]  # alternate who goes first
        for name in order:
            t0 = time.perf_counter()
            answers[name].extend(engines[name].generate(batch, max_new_tokens=args.max_new_tokens, temperature=0.0))
            seconds[name] += time.perf_counter() - t0
    references = [n for n in ("transformers-float32", "transformers") if n in answers]
    rows = {}
    for name in names:
        toks = sum(len(a) for a in answers[name])
        agreement = {}
        for reference in references:
            base = answers[reference]
            prefix = [common_prefix(a, b) / max(1, len(b)) for a, b in zip(answers[name], base)]
            agreement[f"identical_answers_vs_{reference}"] = sum(a == b for a, b in zip(answers[name], base))
            agreement[f"agreeing_token_share_vs_{reference}"] = round(sum(prefix) / len(prefix), 3)
        rows[name] = {
            "seconds": round(seconds[name], 2), "answers_per_s": round(len(contexts) / seconds[name], 3),
            "new_tokens_per_s": round(toks / seconds[name], 1), "new_tokens": toks,
            "speed_vs_transformers": round(seconds["transformers"] / seconds[name], 3),
            **agreement, "setup_s": setup[name],
        }
    result = {
        "benchmark": "engines", "model": args.model, "prompts": len(contexts), "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens, "threads": choice.threads, "torch": torch.__version__,
        "transformers_autocast": str(autocast_dtype(engines["transformers"].model)),
        "cpu": cpu_model_name(), "cpu_flags": sorted(cpu_flags() & {"amx_bf16", "avx512_bf16", "avx512f", "avx2"}),
        "machine": platform.machine(), "date": time.strftime("%Y-%m-%d"), "engines": rows,
        "examples": [{"prompt": prompts[i].messages[-1]["content"][:80],
                      **{n: tok.decode(answers[n][i], skip_special_tokens=True)[:160] for n in names}}
                     for i in range(min(2, len(contexts)))],
    }
    line = json.dumps(result)
    print(line)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
