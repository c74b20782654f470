"""How much of the hindsight signal is the same whatever the complaint says?

For held-out prompts and the base model's own greedy answers ``y`` (the answers online
training starts from), the per-token signal ``A_t = log p(y_t|x,o) - log p(y_t|x)`` is
computed under several *different* complaints ``o`` (the rule user's: too long, more
casual, more excited, more structure, no lists, no first person), a generic complaint, a
neutral "Okay." and a satisfied reply. Reported:

* ``common_share``: the share of the complaints' signal variance that is their common part,
  ``Var_t(mean_c A_c,t) / mean_c Var_t(A_c,t)`` averaged over answers (1 = every complaint
  pushes every token the same way; 1/C = unrelated);
* ``mean_pairwise_corr``: the mean per-answer correlation of two different complaints' signals;
* the same two after subtracting the generic complaint's signal (the contrastive option,
  ``--contrastive_followup complaint``): what is left is what each complaint asks for;
* ``apology_push``: for the fixed reply "I'm sorry for the confusion. I'm here to help.",
  the summed signal under each follow-up (nats): how much more likely hindsight makes an
  apology. Positive under every complaint and not under the satisfied reply = the collapse's
  mechanism.

    python benchmarks/complaint_signal.py --n 48                    # embedded model, ~2 min
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
COMPLAINTS = {
    "too_long": "That's too long, keep it short.",
    "more_casual": "Can you say that more casually?",
    "more_excited": "Sound a bit more excited!",
    "more_structure": "Can you structure that with headers or bold key points?",
    "no_lists": "Please write in sentences, not lists.",
    "no_first_person": "Leave yourself out of it, no 'I' or 'my'.",
}
OTHERS = {"generic_complaint": "That's not what I wanted.", "neutral": "Okay.",
          "satisfied": "Thanks, that's just what I wanted."}
APOLOGY = "I'm sorry for the confusion. I'm here to help."


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--n", type=int, default=48, help="held-out prompts (benchmarks/data/everyday_prompts.jsonl)")
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--out", default="benchmarks/results/complaint-signal.json")
    args = p.parse_args(argv)
    import torch

    from sdpo.data.prompts import load_prompts
    from sdpo.models import load_model
    from sdpo.signal import EncodedExample, hindsight_logprobs
    from sdpo.templates import DEFAULT_TEMPLATE, fit_context, get_template
    from sdpo.trainers.online import generate

    started = time.perf_counter()
    prompts = load_prompts(HERE / "data" / "everyday_prompts.jsonl")[: args.n]
    model, tok = load_model(args.model, dtype="float32", device="cpu")
    model.eval()
    template = get_template(DEFAULT_TEMPLATE, system_prompt="general")
    contexts = [fit_context(tok, template, q.messages, 2048)[0] for q in prompts]
    with torch.no_grad():
        ids, _ = generate(model, tok, contexts, max_new_tokens=args.max_new_tokens, temperature=0.0,
                          device=torch.device("cpu"))
    follow = {**COMPLAINTS, **OTHERS}
    signals: dict[str, list[torch.Tensor]] = {}
    with torch.no_grad():
        for name, o in follow.items():
            enc = [EncodedExample(c, fit_context(tok, template, q.messages, 2048, followup=o)[0], list(r))
                   for q, c, r in zip(prompts, contexts, ids)]
            s, t = hindsight_logprobs(model, enc, pad_token_id=tok.pad_token_id)
            signals[name] = [(b - a).double() for a, b in zip(s, t)]
        apology = tok.encode(APOLOGY, add_special_tokens=False)
        push = {}
        for name, o in follow.items():
            enc = [EncodedExample(c, fit_context(tok, template, q.messages, 2048, followup=o)[0], apology)
                   for q, c in zip(prompts, contexts)]
            s, t = hindsight_logprobs(model, enc, pad_token_id=tok.pad_token_id)
            push[name] = float(sum((b - a).sum() for a, b in zip(s, t)) / len(enc))

    def stats(per_name):
        shares, corrs = [], []
        names = list(COMPLAINTS)
        for i in range(len(prompts)):
            m = torch.stack([per_name[n][i] for n in names])  # C x T
            if m.shape[1] < 3:
                continue
            common = m.mean(0).var()
            shares.append(float(common / m.var(dim=1).mean()))
            c = torch.corrcoef(m)
            k = len(names)
            corrs.append(float((c.sum() - k) / (k * (k - 1))))
        return sum(shares) / len(shares), sum(corrs) / len(corrs)

    common, corr = stats(signals)
    residual = {n: [a - g for a, g in zip(signals[n], signals["generic_complaint"])] for n in COMPLAINTS}
    common_c, corr_c = stats(residual)
    result = {
        "benchmark": "complaint_signal", "model": args.model, "n": len(prompts),
        "common_share": common, "mean_pairwise_corr": corr,
        "contrastive_common_share": common_c, "contrastive_mean_pairwise_corr": corr_c,
        "chance_common_share": 1 / len(COMPLAINTS),
        "signal_abs_mean": {n: float(torch.cat(v).abs().mean()) for n, v in signals.items()},
        "apology_push_nats": push,
        "machine": platform.processor() or platform.machine(), "date": time.strftime("%Y-%m-%d"),
        "seconds": time.perf_counter() - started,
        "command": " ".join(["python", "benchmarks/complaint_signal.py", *(argv if argv is not None else sys.argv[1:])]),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
