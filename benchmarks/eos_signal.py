"""Does the hindsight teacher favour stopping? The signal at the end-of-sequence token vs the rest.

For every bundled TL;DR post the policy samples an answer (temperature 1, 96 new
tokens), a rule-based user (``--style``) replies, and the same model scores the answer
with and without the reply, for each teacher template. Printed per template (one JSON
line): how many answers ended with EOS, the mean signal at that EOS, the share of
negative EOS signals, and the mean signal over all other tokens. A negative EOS signal
pushes the policy gradient away from stopping, i.e. toward longer answers.

    python benchmarks/eos_signal.py [--model smollm2-135m] [--style concise_casual_beginner]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from sdpo.data.prompt_sources import load_prompt_rows, prepare_tldr
from sdpo.feedback.simulators import RuleUserSimulator
from sdpo.models import load_model
from sdpo.signal import EncodedExample, hindsight_logprobs
from sdpo.templates import TEMPLATE_NAMES, get_template, render_context
from sdpo.trainers.online import generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--style", default="concise_casual_beginner")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    train, val, _ = prepare_tldr(load_prompt_rows("tldr", "sample"))
    prompts = train + val
    model, tok = load_model(args.model, device="cpu", dtype="float32")
    model.eval()
    sim = RuleUserSimulator(args.style)
    for name in TEMPLATE_NAMES:
        template = get_template(name)
        torch.manual_seed(args.seed)
        rows = []
        for start in range(0, len(prompts), 8):
            batch = prompts[start : start + 8]
            contexts = [render_context(tok, template.student_messages(p.messages)) for p in batch]
            responses, texts = generate(model, tok, contexts, max_new_tokens=args.max_new_tokens, temperature=1.0,
                                        device=torch.device("cpu"))
            followups = sim.followups([p.text for p in batch], texts)
            encoded = [EncodedExample(c, render_context(tok, template.teacher_messages(p.messages, o)),
                                      r or [tok.eos_token_id])
                       for p, c, r, o in zip(batch, contexts, responses, followups)]
            with torch.no_grad():
                student, teacher = hindsight_logprobs(model, encoded, pad_token_id=tok.pad_token_id)
            for r, s, q, o in zip(responses, student, teacher, followups):
                rows.append({"ended": bool(r) and r[-1] == tok.eos_token_id, "signal": (q - s).tolist(),
                             "complaint": o != sim.satisfied})
        ended = [r for r in rows if r["ended"]]
        eos = [r["signal"][-1] for r in ended]
        rest = [v for r in rows for v in (r["signal"][:-1] if r["ended"] else r["signal"])]
        print(json.dumps({
            "benchmark": "eos_signal", "model": args.model, "style": args.style, "template": name,
            "answers": len(rows), "complaints": sum(r["complaint"] for r in rows), "ended_with_eos": len(ended),
            "eos_signal_mean": round(statistics.mean(eos), 4) if eos else None,
            "eos_signal_negative_share": round(sum(v < 0 for v in eos) / len(eos), 3) if eos else None,
            "other_tokens_signal_mean": round(statistics.mean(rest), 4),
            "date": time.strftime("%Y-%m-%d"),
        }), flush=True)


if __name__ == "__main__":
    main()
