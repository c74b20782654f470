"""Shared-prefix scoring vs today's full forwards, side by side in one process.

The student context ``x`` and the teacher context ``x + o`` agree up to the hindsight
insertion point; ``shared``: that prefix runs once and both continuations run on its
keys/values (``hindsight_logprobs(share_prefix=True)``); ``full``: both contexts run in
full (``share_prefix=False``, today's path). Shapes:

* ``tldr``: the bundled TL;DR sample posts under the ``tldr`` system prompt, 48-token
  summaries, batch 4 (the online trainer's per-device batch);
* ``helpsteer2``: the bundled HelpSteer2 sample prompts with their responses (<= 128
  tokens), batch 4;
* ``offline-long``: multi-turn chats of ~1,000 tokens (the offline trainer cuts at 2,048),
  100-token responses, batch 2 (a CPU-sized offline micro-batch).

Two modes each: ``score`` (no_grad, both branches: analysis and teacher scoring) and
``train`` (student with gradient + teacher without, then backward of a weighted sum of the
student's log-probs: the online/offline step's scoring and backward). Printed per shape
and mode: one JSON line with median seconds of each path, the ratio full/shared, the
forward FLOPs of each path (counted from the shapes the model body actually ran:
2·params·tokens + 2·layers·hidden·query·key pairs) and the largest score difference.

    OMP_NUM_THREADS=1 python benchmarks/bench_shared_prefix.py --repeats 3
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time
from importlib import resources

import torch

from sdpo.signal import EncodedExample, hindsight_logprobs, shared_prefix_len
from sdpo.templates import fit_context, get_template

FOLLOWUPS = ["Way too long. I just needed the one-line version.", "Thanks, that's what I wanted.",
             "You missed the main point of the post.", "Can you make it more casual?"]


def _jsonl(name):
    path = resources.files("sdpo") / "resources" / "samples" / name
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _ids(tok, text, n=None):
    ids = list(tok(text, add_special_tokens=False)["input_ids"])
    return ids[:n] if n else ids


def shapes(tok, batch_tldr=4, batch_hs=4, batch_long=2):
    rng = random.Random(0)
    filler = ("The committee reviewed the proposal in detail and raised several points about cost, timing and "
              "the staffing plan, which the team answered one by one. ")
    out = {}
    tmpl = get_template("hindsight", system_prompt="tldr")
    posts = [r["info"]["post"] for r in _jsonl("tldr_comparisons_sample.jsonl")][:batch_tldr]
    out["tldr"] = [(tmpl, [{"role": "user", "content": p + "\nTL;DR:"}],
                    _ids(tok, (filler * 3)[rng.randrange(50):], 48), rng.choice(FOLLOWUPS)) for p in posts]
    tmpl = get_template("hindsight", system_prompt="general")
    rows = _jsonl("helpsteer2_sample.jsonl")[:batch_hs]
    out["helpsteer2"] = [(tmpl, [{"role": "user", "content": r["prompt"]}], _ids(tok, r["response"], 128),
                          rng.choice(FOLLOWUPS)) for r in rows]
    tmpl = get_template("hindsight-revise", system_prompt="general")
    long = []
    for _ in range(batch_long):
        msgs = []
        for t in range(6):
            msgs.append({"role": "user", "content": f"Question {t}: " + filler * rng.randint(1, 3)})
            msgs.append({"role": "assistant", "content": filler * rng.randint(2, 4)})
        msgs.append({"role": "user", "content": "And the last point? " + filler})
        long.append((tmpl, msgs, _ids(tok, filler * 3, 100), rng.choice(FOLLOWUPS)))
    out["offline-long"] = long
    return out


def encode(tok, cases, max_tokens=2048):
    enc = []
    for tmpl, msgs, resp, o in cases:
        s, _ = fit_context(tok, tmpl, msgs, max_tokens)
        t, _ = fit_context(tok, tmpl, msgs, max_tokens, followup=o)
        enc.append(EncodedExample(s, t, resp + [tok.eos_token_id]))
    return enc


class FlopCounter:
    """Forward FLOPs of the model body from the shapes it runs (linear layers + attention scores)."""

    def __init__(self, model):
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.body = getattr(inner, inner.base_model_prefix)
        cfg = inner.config
        self.params = sum(p.numel() for n, p in self.body.named_parameters() if "embed" not in n)
        self.layers, self.hidden = cfg.num_hidden_layers, cfg.num_attention_heads * (
            getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
        self.flops = 0
        self.handle = self.body.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        ids = kwargs.get("input_ids")
        rows, q = ids.shape
        cache = kwargs.get("cache") or kwargs.get("past_key_values")
        past = cache.get_seq_length() if cache is not None else 0
        self.flops += 2 * self.params * rows * q + 2 * self.layers * self.hidden * rows * q * (past + q)


def run(model, enc, pad, mode, share):
    if mode == "score":
        with torch.no_grad():
            return hindsight_logprobs(model, enc, pad_token_id=pad, share_prefix=share)
    s, t = hindsight_logprobs(model, enc, pad_token_id=pad, student_grad=True, share_prefix=share)
    sum((torch.linspace(-1, 1, len(x)) * x).sum() for x in s).backward()
    model.zero_grad(set_to_none=True)
    return [x.detach() for x in s], t


def main():
    from sdpo.models import load_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--shapes", default="tldr,helpsteer2,offline-long")
    ap.add_argument("--modes", default="score,train")
    args = ap.parse_args()
    model, tok = load_model(args.model, dtype=args.dtype, device="cpu")
    model.eval()  # no dropout: sharing is exact (the embedded model has none anyway)
    counter = FlopCounter(model)
    all_shapes = shapes(tok)
    for name in args.shapes.split(","):
        enc = encode(tok, all_shapes[name])
        for mode in args.modes.split(","):
            out, times, flops = {}, {True: [], False: []}, {}
            for share in (True, False):  # warm-up + agreement + FLOPs
                counter.flops = 0
                out[share] = run(model, enc, tok.pad_token_id, mode, share)
                flops[share] = counter.flops
            diff = max((a - b).abs().max().item() for k in (0, 1) for a, b in zip(out[True][k], out[False][k]))
            for r in range(args.repeats):
                for share in ((True, False) if r % 2 == 0 else (False, True)):
                    start = time.perf_counter()
                    run(model, enc, tok.pad_token_id, mode, share)
                    times[share].append(time.perf_counter() - start)
            full, shared = statistics.median(times[False]), statistics.median(times[True])
            print(json.dumps({
                "shape": name, "mode": mode, "batch": len(enc), "model": args.model, "dtype": args.dtype,
                "context_tokens": [min(len(e.student_context) for e in enc), max(len(e.teacher_context) for e in enc)],
                "shared_prefix_tokens": sum(shared_prefix_len(e.student_context, e.teacher_context) for e in enc),
                "all_context_tokens": sum(len(e.student_context) + len(e.teacher_context) for e in enc),
                "response_tokens": sum(len(e.response) for e in enc),
                "full_s": round(full, 4), "shared_s": round(shared, 4), "speedup": round(full / shared, 3),
                "full_gflop": round(flops[False] / 1e9, 2), "shared_gflop": round(flops[True] / 1e9, 2),
                "flops_saved": round(1 - flops[True] / flops[False], 3), "max_abs_diff": diff,
                "threads": torch.get_num_threads(), "torch": torch.__version__, "machine": platform.machine(),
                "date": time.strftime("%Y-%m-%d"),
            }), flush=True)


if __name__ == "__main__":
    main()
