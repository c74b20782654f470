"""Shared-prefix scoring (issue 27 item 1): the common prefix of the student and teacher
contexts runs once; the scores and the student's gradient equal the full forwards'."""

import random

import pytest
import torch

from sdpo.reference import reference_logprobs
from sdpo.signal import (
    completion_logprobs,
    encode_examples,
    hindsight_logprobs,
    prefix_sharing_unsupported,
    shared_prefix_len,
    shared_prefix_logprobs,
)
from tests.texts import random_example, random_text


def _model64(tokenizer, seed=0, **kw):
    from sdpo.models import tiny_random_model

    return tiny_random_model(len(tokenizer), seed=seed, **kw).double().eval()


def _encoded(tokenizer, seed, n, template="hindsight"):
    rng = random.Random(seed)
    return encode_examples(tokenizer, [random_example(rng) for _ in range(n)], template)


def test_shared_prefix_len():
    assert shared_prefix_len([1, 2, 3, 4], [1, 2, 5, 6, 7]) == 2
    assert shared_prefix_len([1, 2, 3], [1, 2, 3, 4]) == 2  # each context keeps one token of its own
    assert shared_prefix_len([1, 2, 3], [1, 2, 3]) == 2
    assert shared_prefix_len([9, 2], [1, 2]) == 0
    assert shared_prefix_len([1, 2, 3, 4], [1, 2, 3, 9], [1, 2, 7]) == 2


def test_hindsight_template_shares_system_and_request(tokenizer):
    """The follow-up goes inside the last user turn: the prefix covers the system message and the request."""
    from sdpo.templates import get_template

    enc = encode_examples(tokenizer, [("Summarize this post: " + "word " * 200, "A summary.", "Shorter.")],
                          get_template("hindsight", system_prompt="You are helpful."))[0]
    p = shared_prefix_len(enc.student_context, enc.teacher_context)
    assert p >= len(enc.student_context) - 8  # only the end-of-turn and generation-prompt tokens differ


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("template", ["hindsight", "hindsight-system"])
def test_scores_match_full_forwards_float64(tokenizer, seed, template):
    """Random contexts of uneven lengths (left/middle/right padding in every micro-batch)."""
    model = _model64(tokenizer, seed=seed, hidden_size=32 + 32 * seed)
    enc = _encoded(tokenizer, seed, 7, template)
    with torch.no_grad():
        shared = shared_prefix_logprobs(model, [[e.student_context, e.teacher_context] for e in enc],
                                        [e.response for e in enc], pad_token_id=tokenizer.pad_token_id,
                                        overhead_tokens=seed * 50, chunk_tokens=7)
        student, teacher = hindsight_logprobs(model, enc, pad_token_id=tokenizer.pad_token_id, share_prefix=False)
    for (s, t), s0, t0, e in zip(shared, student, teacher, enc):
        assert s.dtype == torch.float32 and len(s) == len(e.response)
        ref_s = reference_logprobs(model, e.student_context, e.response)
        ref_t = reference_logprobs(model, e.teacher_context, e.response)
        assert (s.double() - ref_s).abs().max().item() < 5e-6  # float32 log-softmax of a float64 model: a few ulps at |lp| ~ 10
        assert (t.double() - ref_t).abs().max().item() < 5e-6
        assert torch.equal(s, s0) or (s - s0).abs().max().item() < 1e-6
        assert torch.equal(t, t0) or (t - t0).abs().max().item() < 1e-6


def test_several_branches_and_no_common_prefix(tokenizer):
    """Three contexts per item; an item whose contexts share no token takes the plain path."""
    model = _model64(tokenizer, seed=4)
    rng = random.Random(4)
    ids = lambda: list(tokenizer(random_text(rng, 5, 30), add_special_tokens=False)["input_ids"])  # noqa: E731
    contexts, responses = [], []
    for _ in range(4):
        base = ids()
        contexts.append([base + ids(), base + ids(), base[:3] + ids()])
        responses.append(ids())
    contexts.append([[7] + ids(), [8] + ids()])  # nothing in common
    responses.append(ids())
    with torch.no_grad():
        shared = shared_prefix_logprobs(model, contexts, responses, pad_token_id=tokenizer.pad_token_id)
    for cs, r, outs in zip(contexts, responses, shared):
        assert len(outs) == len(cs)
        for c, lp in zip(cs, outs):
            assert (lp.double() - reference_logprobs(model, c, r)).abs().max().item() < 5e-6


def test_student_gradient_is_exact_with_several_teachers(tokenizer):
    """grad_first with three contexts per item (the contrastive signal's student, teacher and o0-teacher):
    the student runs as one forward whose prefix cache serves both teachers; every score and the
    student's gradient equal the float64 full forwards'."""
    model = _model64(tokenizer, seed=6).train()
    ref = _model64(tokenizer, seed=6).train()
    rng = random.Random(6)
    ids = lambda: list(tokenizer(random_text(rng, 5, 30), add_special_tokens=False)["input_ids"])  # noqa: E731
    contexts, responses = [], []
    for _ in range(3):
        base = ids()
        contexts.append([base + ids(), base + ids() + ids(), base + ids()])
        responses.append(ids())
    out = shared_prefix_logprobs(model, contexts, responses, pad_token_id=tokenizer.pad_token_id,
                                 grad_first=True, chunk_tokens=5)
    assert all(o[0].requires_grad and not o[1].requires_grad and not o[2].requires_grad for o in out)
    weights = [torch.linspace(-1, 1, len(r), dtype=torch.float64) for r in responses]
    sum((w * o[0].double()).sum() for w, o in zip(weights, out)).backward()
    sum((w * reference_logprobs(ref, cs[0], r)).sum() for w, cs, r in zip(weights, contexts, responses)).backward()
    with torch.no_grad():
        for cs, r, o in zip(contexts, responses, out):
            for c, lp in zip(cs, o):
                assert (lp.double() - reference_logprobs(ref, c, r)).abs().max().item() < 5e-6
    params = dict(model.named_parameters())
    for name, p in ref.named_parameters():
        scale = p.grad.abs().max().item() + 1e-12
        assert (params[name].grad - p.grad).abs().max().item() / scale < 1e-5, name


def test_student_gradient_is_exact(tokenizer):
    """student_grad=True: the student keeps its full gradient path (the prefix forward is in the
    graph), the teacher has none; gradients equal the full-forward float64 reference."""
    from sdpo.models import tiny_random_model

    enc = _encoded(tokenizer, 7, 4)
    model = tiny_random_model(len(tokenizer), seed=3).double().train()
    ref = tiny_random_model(len(tokenizer), seed=3).double().train()
    student, teacher = hindsight_logprobs(model, enc, pad_token_id=tokenizer.pad_token_id, student_grad=True,
                                          share_prefix=True, chunk_tokens=5)
    assert all(s.requires_grad for s in student) and not any(t.requires_grad for t in teacher)
    weights = [torch.linspace(-1, 1, len(e.response), dtype=torch.float64) for e in enc]
    sum((w * s.double()).sum() for w, s in zip(weights, student)).backward()
    sum((w * reference_logprobs(ref, e.student_context, e.response)).sum() for w, e in zip(weights, enc)).backward()
    with torch.no_grad():
        for t, e in zip(teacher, enc):
            assert (t.double() - reference_logprobs(ref, e.teacher_context, e.response)).abs().max().item() < 5e-6
    params = dict(model.named_parameters())
    checked = 0
    for name, p in ref.named_parameters():
        g, g_ref = params[name].grad, p.grad
        assert g is not None and g_ref is not None, name
        scale = g_ref.abs().max().item() + 1e-12
        assert (g - g_ref).abs().max().item() / scale < 1e-5, name  # float32 log-prob outputs
        checked += 1
    assert checked > 10


def test_where_sharing_is_not_exact_it_is_not_used(tokenizer):
    from sdpo.models import tiny_random_model

    model = tiny_random_model(len(tokenizer), seed=0).eval()
    assert prefix_sharing_unsupported(model) is None
    assert "logits" in prefix_sharing_unsupported(model, "logits")
    model.config.attention_dropout = 0.1
    assert prefix_sharing_unsupported(model) is None  # eval: no dropout
    model.train()
    assert "dropout" in prefix_sharing_unsupported(model)
    model.config.attention_dropout = 0.0
    model.gradient_checkpointing_enable()
    assert "checkpointing" in prefix_sharing_unsupported(model)
    enc = _encoded(tokenizer, 1, 2)
    with pytest.raises(ValueError, match="checkpointing"):
        hindsight_logprobs(model, enc, pad_token_id=tokenizer.pad_token_id, student_grad=True, share_prefix=True)
    # auto falls back to the full forwards and still scores
    s, t = hindsight_logprobs(model, enc, pad_token_id=tokenizer.pad_token_id, student_grad=True)
    assert all(x.requires_grad for x in s)
    with pytest.raises(ValueError, match="share_prefix"):
        hindsight_logprobs(model, enc, pad_token_id=tokenizer.pad_token_id, share_prefix="yes")


def test_auto_shares_only_when_it_saves_more_than_a_forward(tokenizer, monkeypatch):
    import sdpo.signal as signal

    model = _model64(tokenizer)
    enc = _encoded(tokenizer, 2, 3)
    calls = []
    real = signal.shared_prefix_logprobs
    monkeypatch.setattr(signal, "shared_prefix_logprobs", lambda *a, **k: calls.append(1) or real(*a, **k))
    saved = sum(shared_prefix_len(e.student_context, e.teacher_context) for e in enc)
    with torch.no_grad():
        hindsight_logprobs(model, enc, pad_token_id=tokenizer.pad_token_id, overhead_tokens=saved + 1)
        assert not calls
        hindsight_logprobs(model, enc, pad_token_id=tokenizer.pad_token_id, overhead_tokens=saved - 1)
        assert calls
    assert completion_logprobs  # the plain path stays importable
