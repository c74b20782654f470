"""bf16 vs float32, side by side in one process: matmul peaks, signal speed and agreement, one online step.

Sections (``--sections``, comma list; each prints one JSON line):

* ``peaks``: ``torch.mm`` n x n x n in float32 and bf16 (GFLOP/s, best of a few);
* ``signal``: the signal core (``hindsight_logprobs``, defaults) on the 16 bundled cases
  (``cases.py``) plus the 26 analysis cases (``signal_analysis_cases.json``), 42 in all,
  with the embedded model in three precisions: ``fp32`` (float32 parameters), ``mixed``
  (float32 parameters, bf16 autocast: what ``--dtype auto`` gives on a CPU with bf16
  instructions) and ``bf16`` (bf16 parameters), the output head's product in float32
  (keys ``mixed``, ``bf16``) or in bf16 (``mixed_head_compute``: the library's default
  ``head_precision="compute"``). Response tokens/s (median of ``--repeats``
  passes; no warm-up pass, the first pass on CPU is as fast as later ones), the FLOP rate
  (2 x parameters x tokens through the body, plus the head at response positions) as a
  share of the measured peaks, and agreement with ``fp32``: max / mean |difference| of
  per-token log-probs and signals, and their correlations;
* ``update``: one AdamW step at the online trainer's learning rate on bf16 parameters
  vs float32 master weights: the share of the step's intended change that survives;
* ``optimizer``: seconds per AdamW step on the embedded model's parameters, for-loop
  vs foreach vs fused;
* ``step``: one online SDPO step as the trainer does it (generate 4 responses x 64
  tokens, score student with gradients + teacher, loss, backward, clip, AdamW step),
  ``before`` (float32, for-loop AdamW) vs ``after`` (``--dtype auto``: mixed bf16, fused AdamW).

    python benchmarks/bench_precision.py --sections peaks,signal,update,optimizer,step --repeats 2
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cases import benchmark_cases  # noqa: E402

from sdpo.models import adamw_options, enable_autocast, load_model  # noqa: E402
from sdpo.signal import EncodedExample, encode_examples, hindsight_logprobs  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _meta() -> dict:
    return dict(torch=torch.__version__, threads=torch.get_num_threads(), machine=platform.machine(),
                date=time.strftime("%Y-%m-%d %H:%M"), load_avg=[round(x, 2) for x in os.getloadavg()])


def matmul_peaks(n: int = 1024, seconds: float = 1.0) -> dict:
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        torch.mm(a, b)
        best = 0.0
        for _ in range(3):
            reps, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds / 3:
                torch.mm(a, b)
                reps += 1
            best = max(best, 2 * n**3 * reps / (time.perf_counter() - start) / 1e9)
        out["fp32" if dtype == torch.float32 else "bf16"] = round(best, 1)
    return out


def _models(base):
    mixed = enable_autocast(copy.deepcopy(base), torch.bfloat16)
    return {"fp32": base, "mixed": mixed, "bf16": copy.deepcopy(base).to(torch.bfloat16)}


def _score(model, encoded, pad, head):
    with torch.no_grad():
        s, t = hindsight_logprobs(model, encoded, pad_token_id=pad, head_precision=head)
    return torch.cat(s).double(), torch.cat(t).double()


def _corr(a, b) -> float:
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


def signal_section(base, tok, repeats: int, peaks: dict) -> dict:
    pad = tok.pad_token_id
    bundled = encode_examples(tok, benchmark_cases())
    cases = json.loads((ROOT / "src/sdpo/resources/signal_analysis_cases.json").read_text())
    analysis = encode_examples(tok, [(c["prompt"], c["response"], c["followup"]) for c in cases])
    models = _models(base)
    variants = [("fp32", "float32"), ("mixed", "float32"), ("mixed", "compute"), ("bf16", "float32")]
    both = bundled + analysis
    n_tok = sum(len(e.response) for e in both)
    ctx_tok = sum(len(e.student_context) + len(e.teacher_context) for e in both)
    params = sum(p.numel() for p in base.parameters())
    head = base.get_output_embeddings().weight.numel()
    # FLOPs actually needed: body at every real token of both contexts and both responses, head at responses
    flops = 2 * (params - head) * (ctx_tok + 2 * n_tok) + 2 * head * 2 * n_tok
    row = {"section": "signal", "model": "smollm2-135m", "cases": len(both), "response_tokens": n_tok,
           "context_tokens": ctx_tok}
    ref = None
    for name, head_prec in variants:
        key = name if head_prec == "float32" else f"{name}_head_compute"
        m = models[name]
        times = []
        for r in range(repeats):  # timed passes over all 42 cases; the last one's values are compared
            start = time.perf_counter()
            s, t = _score(m, both, pad, head_prec)
            times.append(time.perf_counter() - start)
        if ref is None:
            ref = (s, t)
        else:
            s0, t0 = ref
            lp, lp0, sig, sig0 = torch.cat([s, t]), torch.cat([s0, t0]), t - s, t0 - s0
            row[f"{key}_logprob_max_abs_diff"] = round(float((lp - lp0).abs().max()), 4)
            row[f"{key}_logprob_mean_abs_diff"] = round(float((lp - lp0).abs().mean()), 5)
            row[f"{key}_logprob_corr"] = round(_corr(lp, lp0), 5)
            row[f"{key}_signal_max_abs_diff"] = round(float((sig - sig0).abs().max()), 4)
            row[f"{key}_signal_mean_abs_diff"] = round(float((sig - sig0).abs().mean()), 5)
            row[f"{key}_signal_corr"] = round(_corr(sig, sig0), 5)
        t_med = statistics.median(times)
        row[f"{key}_tokens_per_s"] = round(n_tok / t_med, 1)
        rate = flops / t_med / 1e9
        row[f"{key}_gflops"] = round(rate, 1)
        row[f"{key}_share_of_bf16_peak"] = round(rate / peaks["bf16"], 3)
        row[f"{key}_share_of_fp32_peak"] = round(rate / peaks["fp32"], 3)
    row["signal_abs_mean_fp32"] = round(float((ref[1] - ref[0]).abs().mean()), 4)
    for key in ("mixed", "mixed_head_compute", "bf16"):
        row[f"{key}_speedup"] = round(row[f"{key}_tokens_per_s"] / row["fp32_tokens_per_s"], 3)
    return row


def update_section(base, lr: float = 5e-6) -> dict:
    """Share of an AdamW step that survives in bf16 parameters (the first step moves each weight by ~lr)."""
    ref = copy.deepcopy(base).float()
    half = copy.deepcopy(base).to(torch.bfloat16)
    out = {"section": "update", "learning_rate": lr}
    for name, model in (("fp32_master", ref), ("bf16_params", half)):
        before = [p.detach().clone() for p in model.parameters()]
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
        gen = torch.Generator().manual_seed(0)
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=gen).to(p.dtype)
        opt.step()
        moved = sum(int((p.detach() != b).sum()) for p, b in zip(model.parameters(), before))
        out[f"{name}_share_of_weights_changed"] = round(moved / sum(b.numel() for b in before), 4)
    return out


def optimizer_section(base, repeats: int) -> dict:
    """Seconds per AdamW step on the model's float32 parameters: for-loop, foreach, fused."""
    model = copy.deepcopy(base).float()
    params = list(model.parameters())
    gen = torch.Generator().manual_seed(0)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen) * 1e-3
    opts = {name: torch.optim.AdamW(params, lr=1e-5, **kw) for name, kw in
            (("forloop", {"foreach": False}), ("foreach", {"foreach": True}), ("fused", {"fused": True}))}
    for opt in opts.values():
        opt.step()  # state allocation
    times = {name: [] for name in opts}
    for r in range(max(3, repeats)):
        for name in (list(opts) if r % 2 == 0 else list(opts)[::-1]):
            start = time.perf_counter()
            opts[name].step()
            times[name].append(time.perf_counter() - start)
    row = {"section": "optimizer", "parameters": sum(p.numel() for p in params)}
    row.update({f"{name}_s": round(statistics.median(t), 4) for name, t in times.items()})
    row["fused_speedup_vs_forloop"] = round(row["forloop_s"] / row["fused_s"], 2)
    return row


def _step(model, tok, opt, prompts, max_new_tokens):
    from sdpo.generation import hf_generate
    from sdpo.losses import advantage_pg_loss

    times = {}
    t0 = time.perf_counter()
    torch.manual_seed(0)
    model.eval()
    responses = hf_generate(model, tok, prompts, max_new_tokens=max_new_tokens, temperature=1.0)
    model.train()
    t1 = time.perf_counter()
    follow = tok("Too long. Say it in one line, plainly.", add_special_tokens=False)["input_ids"]
    encoded = [EncodedExample(p, p[:-2] + follow + p[-2:], r or [tok.eos_token_id]) for p, r in zip(prompts, responses)]
    student, teacher = hindsight_logprobs(model, encoded, pad_token_id=tok.pad_token_id, student_grad=True)
    t2 = time.perf_counter()
    loss, _ = advantage_pg_loss(student, teacher, centering="sequence", old=[s.detach() for s in student],
                                ppo_clip=0.2)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    t3 = time.perf_counter()
    times.update(generate=t1 - t0, score=t2 - t1, update=t3 - t2, total=t3 - t0,
                 tokens=sum(len(r) for r in responses))
    return times


def step_section(base, tok, repeats: int, max_new_tokens: int = 64) -> dict:
    cases = benchmark_cases()[:4]
    prompts = [tok.apply_chat_template(m, add_generation_prompt=True, tokenize=True) for m, _, _ in cases]
    prompts = [list(p["input_ids"]) if isinstance(p, dict) or hasattr(p, "keys") else list(p) for p in prompts]
    before = copy.deepcopy(base).float()
    after = enable_autocast(copy.deepcopy(base).float(), torch.bfloat16)
    setups = {
        "before": (before, torch.optim.AdamW(before.parameters(), lr=1e-5)),
        "after": (after, torch.optim.AdamW(after.parameters(), lr=1e-5, **adamw_options(after.parameters()))),
    }
    runs = {k: [] for k in setups}
    for r in range(repeats + 1):  # the first round warms up
        for k in (list(setups) if r % 2 == 0 else list(setups)[::-1]):
            model, opt = setups[k]
            res = _step(model, tok, opt, prompts, max_new_tokens)
            if r:
                runs[k].append(res)
    row = {"section": "step", "prompts": len(prompts), "max_new_tokens": max_new_tokens}
    for k, rs in runs.items():
        for part in ("generate", "score", "update", "total"):
            row[f"{k}_{part}_s"] = round(statistics.median(x[part] for x in rs), 3)
        row[f"{k}_generated_tokens"] = [x["tokens"] for x in rs]
    for part in ("generate", "score", "update", "total"):
        row[f"{part}_speedup"] = round(row[f"before_{part}_s"] / row[f"after_{part}_s"], 3)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default="peaks,signal,update,optimizer,step")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--matmul-n", type=int, default=1024)
    args = parser.parse_args()
    sections = args.sections.split(",")
    peaks = matmul_peaks(args.matmul_n)
    if "peaks" in sections:
        print(json.dumps({"section": "peaks", "n": args.matmul_n, "gflops": peaks, **_meta()}), flush=True)
    base, tok = load_model("smollm2-135m", dtype="float32", device="cpu")
    base.eval()
    if "signal" in sections:
        print(json.dumps({**signal_section(base, tok, args.repeats, peaks), "peaks_gflops": peaks, **_meta()}),
              flush=True)
    if "update" in sections:
        print(json.dumps({**update_section(base), **_meta()}), flush=True)
    if "optimizer" in sections:
        print(json.dumps({**optimizer_section(base, args.repeats), **_meta()}), flush=True)
    if "step" in sections:
        print(json.dumps({**step_section(base, tok, args.repeats), **_meta()}), flush=True)


if __name__ == "__main__":
    main()
