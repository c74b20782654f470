"""Online SDPO step: where the time goes, and the batched local simulator vs one-at-a-time.

1. Simulator: the same local user simulator (the embedded model, temperature 0.7,
   ``--sim-tokens`` new tokens, default 128 like the simulator) answers the same N
   (prompt, response) pairs batched (one ``model.generate`` for all) and one request at
   a time, side by side in one process, seeds fixed, order rotating;
   ``--continuous-batching`` adds transformers' ``model.generate_batch``. Printed, one
   JSON line per N in ``--batch``: follow-ups per second for each, the ratios, and the
   mean follow-up length.
2. Step split (skip with ``--steps 0``): a few ``sdpo train-online`` steps with that
   simulator; the mean generate / simulate / score / update seconds per step.

    python benchmarks/bench_online_step.py [--repeats 2] [--steps 2] [--batch 4 8 16]
    python benchmarks/bench_online_step.py --model qwen3-4b --device cuda --dtype bfloat16 --batch 8 16 32

``--model`` is ``smollm2-135m`` (the embedded model, default) or a random-initialised
model of a real shape (``qwen3-0.6b``, ``qwen3-4b``, ``qwen3-8b``; see ``shapes.py``).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import sys

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shapes import QWEN3, random_qwen3  # noqa: E402

from sdpo.data.prompt_sources import load_prompt_rows, prepare_tldr
from sdpo.data.prompts import write_prompts
from sdpo.feedback.simulators import StyleUserSimulator
from sdpo.generation import hf_generate
from sdpo.models import load_model, load_tokenizer
from sdpo.trainers.online import OnlineSDPOConfig, OnlineSDPOTrainer, generate
from sdpo.templates import get_template, render_context


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--batch", type=int, nargs="+", default=[8])
    parser.add_argument("--sim-tokens", type=int, default=128)  # the local simulator's default
    parser.add_argument("--response-tokens", type=int, default=64)
    parser.add_argument("--continuous-batching", action="store_true",
                        help="also time transformers' model.generate_batch")
    parser.add_argument("--model", default="smollm2-135m", choices=["smollm2-135m", *QWEN3])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()

    train, _, _ = prepare_tldr(load_prompt_rows("tldr", "sample"))
    if args.model == "smollm2-135m":
        model, tok = load_model("smollm2-135m", device=args.device, dtype=args.dtype)
    else:
        tok = load_tokenizer("tiny-random")  # the embedded tokenizer; its ids are valid in Qwen3's vocabulary
        model = random_qwen3(args.model, args.device, getattr(torch, args.dtype))
    template = get_template()
    for n in args.batch:
        print(json.dumps(_simulator_row(args, train[:n], model, tok, template)), flush=True)
    if args.steps:
        print(json.dumps(_step_row(args, train, model, tok)), flush=True)


def _simulator_row(args, prompts, model, tok, template) -> dict:
    contexts = [render_context(tok, template.student_messages(p.messages)) for p in prompts]
    torch.manual_seed(0)
    _, responses = generate(model, tok, contexts, max_new_tokens=args.response_tokens, temperature=1.0,
                            device=torch.device(args.device))
    sim = StyleUserSimulator("concise_casual_beginner", model=model, tokenizer=tok,
                             max_new_tokens=args.sim_tokens, batch_size=len(prompts))
    texts = [p.text for p in prompts]
    samplers = {"batched": hf_generate, "one_at_a_time": hf_generate}
    if args.continuous_batching:
        samplers["continuous_batching"] = _continuous_batching
    times = {method: [] for method in samplers}
    order = list(samplers)
    for r in range(args.repeats + 1):  # first round is warm-up
        for method in order[r % len(order):] + order[: r % len(order)]:  # rotate who goes first
            torch.manual_seed(r)
            start = time.perf_counter()
            got = sim.followups_with(texts, responses, sampler=samplers[method],
                                     batch_size=1 if method == "one_at_a_time" else len(texts))
            if r:
                times[method].append(time.perf_counter() - start)
            if method == "batched":
                replies = got
    row = {"benchmark": "local_simulator", "model": args.model, "device": args.device, "dtype": args.dtype,
           "pairs": len(texts),
           "sim_max_new_tokens": args.sim_tokens}
    for method, values in times.items():
        row[f"{method}_followups_per_s"] = round(len(texts) / statistics.median(values), 3)
    row["speedup"] = round(row["batched_followups_per_s"] / row["one_at_a_time_followups_per_s"], 3)
    if args.continuous_batching:
        row["continuous_batching_vs_batched"] = round(
            row["continuous_batching_followups_per_s"] / row["batched_followups_per_s"], 3)
    lengths = [len(tok(r, add_special_tokens=False)["input_ids"]) for r in replies]  # last batched round
    row["followup_tokens_mean"] = round(statistics.mean(lengths), 1)
    row["followups_at_cap"] = round(sum(n >= args.sim_tokens - 1 for n in lengths) / len(lengths), 2)
    row.update(threads=torch.get_num_threads(), torch=torch.__version__, date=time.strftime("%Y-%m-%d"))
    return row


def _continuous_batching(model, tok, contexts, *, max_new_tokens, temperature):
    """transformers' continuous batching (``model.generate_batch``), same sampling settings."""
    from transformers import GenerationConfig

    from sdpo.generation import eos_ids

    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=temperature > 0,
                              temperature=temperature if temperature > 0 else None, top_k=None, top_p=None,
                              eos_token_id=eos_ids(model, tok), pad_token_id=tok.pad_token_id)
    out = model.generate_batch([list(c) for c in contexts], generation_config=config, warmup=False)
    return [list(out[key].generated_tokens) for key in sorted(out, key=lambda k: int(k.rsplit("_", 1)[1]))]


def _step_row(args, train, model, tok) -> dict:
    row = {"benchmark": "online_step_split", "model": args.model, "device": args.device, "dtype": args.dtype}
    with tempfile.TemporaryDirectory() as tmp:
        data = write_prompts(train, Path(tmp) / "train.jsonl")
        cfg = OnlineSDPOConfig(train_jsonl=str(data), simulator="local", style="concise_casual_beginner",
                               max_steps=args.steps, save_steps=10**6, per_device_train_batch_size=4,
                               max_new_tokens=args.response_tokens, simulator_max_new_tokens=args.sim_tokens,
                               output_dir=str(Path(tmp) / "run"), summary_prompts=0, progress=False)
        trainer = OnlineSDPOTrainer(cfg, model=model, tokenizer=tok)
        trainer.save_checkpoint = lambda: None  # timing only
        trainer.train()
        steps = [json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
    for part in ("generate", "simulate", "score", "update", "step"):
        row[f"step_{part}_s"] = round(statistics.mean(s[f"time/{part}"] for s in steps), 3)
    row.update(step_batch=4, steps=len(steps), threads=torch.get_num_threads(), torch=torch.__version__,
               machine=platform.machine(), date=time.strftime("%Y-%m-%d"))
    return row


if __name__ == "__main__":
    main()
