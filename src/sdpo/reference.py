"""Straightforward reference implementations, for tests and benchmarks.

These are deliberately simple and slow; the fast paths in :mod:`sdpo.signal` are
checked against them.
"""

from __future__ import annotations

from typing import Sequence

import torch


def reference_logprobs(model, context: Sequence[int], completion: Sequence[int]) -> torch.Tensor:
    """One unpadded forward of ``context + completion``, full log-softmax, gather.

    Runs in the model's own dtype (cast the model to float64 for a float64 reference).
    """
    device = next(model.parameters()).device
    ids = torch.tensor([list(context) + list(completion)], dtype=torch.long, device=device)
    logits = model(input_ids=ids, use_cache=False).logits[0]
    logprobs = torch.log_softmax(logits, dim=-1)
    start = len(context)
    targets = ids[0, start:]
    return logprobs[start - 1 : start - 1 + len(completion)].gather(-1, targets[:, None]).squeeze(-1)


def naive_batched_logprobs(
    model, contexts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], pad_token_id: int
) -> list[torch.Tensor]:
    """The obvious batched way: right-pad ``context + completion`` to the batch maximum,
    one forward, float32 log-softmax over every position and the whole vocabulary, gather.
    """
    device = next(model.parameters()).device
    seqs = [list(c) + list(r) for c, r in zip(contexts, completions)]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    ids, mask = ids.to(device), mask.to(device)
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    gathered = logprobs[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)
    out = []
    for i, (c, r) in enumerate(zip(contexts, completions)):
        out.append(gathered[i, len(c) - 1 : len(c) - 1 + len(r)])
    return out


def naive_hindsight_logprobs(model, encoded, pad_token_id: int):
    """Student batch and teacher batch scored by :func:`naive_batched_logprobs`."""
    responses = [e.response for e in encoded]
    with torch.no_grad():
        student = naive_batched_logprobs(model, [e.student_context for e in encoded], responses, pad_token_id)
        teacher = naive_batched_logprobs(model, [e.teacher_context for e in encoded], responses, pad_token_id)
    return student, teacher


def reference_divergence(student_logits: Sequence[float], teacher_logits: Sequence[float], alpha: float,
                         *, topk: int | None = None, add_tail: bool = True) -> float:
    """Generalized JSD of one position, written out with Python floats (float64).

    alpha = 0: KL(teacher || student); alpha = 1: KL(student || teacher); otherwise
    (1 - alpha) KL(S || M) + alpha KL(T || M) with M = (1 - alpha) S + alpha T. With
    ``topk`` both distributions are restricted to the student's top-k tokens, plus one
    tail category (``add_tail``) or renormalised.
    """
    import math

    def softmax(xs):
        m = max(xs)
        e = [math.exp(x - m) for x in xs]
        z = sum(e)
        return [v / z for v in e]

    ps, pt = softmax([float(x) for x in student_logits]), softmax([float(x) for x in teacher_logits])
    if topk is not None:
        order = sorted(range(len(ps)), key=lambda i: -float(student_logits[i]))[:topk]
        ps, pt = [ps[i] for i in order], [pt[i] for i in order]
        if add_tail:
            ps, pt = ps + [1.0 - sum(ps)], pt + [1.0 - sum(pt)]
        else:
            ss, st = sum(ps), sum(pt)
            ps, pt = [p / ss for p in ps], [p / st for p in pt]

    def kl(p, q):
        return sum(a * (math.log(a) - math.log(b)) for a, b in zip(p, q) if a > 0)

    if alpha == 0.0:
        return kl(pt, ps)
    if alpha == 1.0:
        return kl(ps, pt)
    m = [(1 - alpha) * a + alpha * b for a, b in zip(ps, pt)]
    return (1 - alpha) * kl(ps, m) + alpha * kl(pt, m)
