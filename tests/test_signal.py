import random

import pytest
import torch

from sdpo.reference import naive_batched_logprobs, reference_logprobs
from sdpo.signal import (
    SignalInputError,
    SignalScorer,
    completion_logprobs,
    encode_examples,
    hindsight_logprobs,
    plan_microbatches,
    token_strings,
)
from tests.texts import random_example


def _reference_signal(model64, enc):
    with torch.no_grad():
        s = reference_logprobs(model64, enc.student_context, enc.response)
        t = reference_logprobs(model64, enc.teacher_context, enc.response)
    return s, t


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("template", ["hindsight", "hindsight-system"])
def test_signal_matches_float64_reference(tokenizer, seed, template):
    from sdpo.models import tiny_random_model

    rng = random.Random(seed)
    model = tiny_random_model(len(tokenizer), seed=seed, hidden_size=32 + 32 * seed).eval()
    examples = [random_example(rng) for _ in range(6)]
    scorer = SignalScorer(model, tokenizer, template, chunk_tokens=7)  # several head chunks
    signals = scorer.score(examples, batch_size=4)
    encoded = scorer.encode(examples)
    model64 = tiny_random_model(len(tokenizer), seed=seed, hidden_size=32 + 32 * seed).double().eval()
    for sig, enc in zip(signals, encoded):
        ref_s, ref_t = _reference_signal(model64, enc)
        assert sig.token_ids == enc.response
        assert torch.allclose(torch.tensor(sig.student_logprobs, dtype=torch.float64), ref_s, atol=1e-4, rtol=0)
        assert torch.allclose(torch.tensor(sig.teacher_logprobs, dtype=torch.float64), ref_t, atol=1e-4, rtol=0)
        assert torch.allclose(torch.tensor(sig.signal, dtype=torch.float64), ref_t - ref_s, atol=1e-4, rtol=0)


def test_signal_depends_on_followup(tiny):
    model, tok = tiny
    x, y = "Tell me about cats.", "Cats are small domesticated carnivores."
    a, b = SignalScorer(model, tok).score([(x, y, "Shorter please."), (x, y, "I love long answers about dogs")])
    assert a.student_logprobs == pytest.approx(b.student_logprobs, abs=1e-6)
    assert max(abs(p - q) for p, q in zip(a.teacher_logprobs, b.teacher_logprobs)) > 1e-3


def test_gradients_match_float64_reference(tokenizer):
    """The student side is differentiable and its gradient equals the plain one."""
    from sdpo.models import tiny_random_model

    rng = random.Random(7)
    examples = [random_example(rng) for _ in range(3)]
    enc = encode_examples(tokenizer, examples)
    model = tiny_random_model(len(tokenizer), seed=3).train()
    model64 = tiny_random_model(len(tokenizer), seed=3).double().train()
    student, teacher = hindsight_logprobs(
        model, enc, pad_token_id=tokenizer.pad_token_id, student_grad=True, chunk_tokens=5
    )
    assert all(s.requires_grad for s in student) and not any(t.requires_grad for t in teacher)
    weights = [torch.linspace(-1, 1, len(e.response)) for e in enc]
    loss = sum((w * s).sum() for w, s in zip(weights, student))
    loss.backward()
    ref_loss = sum(
        (w.double() * reference_logprobs(model64, e.student_context, e.response)).sum() for w, e in zip(weights, enc)
    )
    ref_loss.backward()
    params = dict(model.named_parameters())
    checked = 0
    for name, p64 in model64.named_parameters():
        g, g64 = params[name].grad, p64.grad
        assert g is not None and g64 is not None, name
        scale = g64.abs().max().item() + 1e-12
        assert (g.double() - g64).abs().max().item() / scale < 1e-4, name
        checked += 1
    assert checked > 10


def test_batch_invariance(tiny):
    model, tok = tiny
    rng = random.Random(11)
    examples = [random_example(rng) for _ in range(7)]
    scorer = SignalScorer(model, tok)
    together = scorer.score(examples, batch_size=7)
    for i in (0, 3, 6):
        [alone] = scorer.score([examples[i]])
        diff = max(abs(p - q) for p, q in zip(alone.signal, together[i].signal))
        assert diff < 1e-5
        assert alone.token_ids == together[i].token_ids


@pytest.mark.parametrize(
    "options",
    [
        dict(fuse=False),
        dict(head_mode="logits"),
        dict(chunk_tokens=1),
        dict(max_batch_tokens=1),  # one sequence per forward
    ],
)
def test_execution_options_agree(tiny, options):
    model, tok = tiny
    rng = random.Random(5)
    examples = [random_example(rng) for _ in range(5)]
    base = SignalScorer(model, tok).score(examples)
    other = SignalScorer(model, tok, **options).score(examples)
    for a, b in zip(base, other):
        assert max(abs(p - q) for p, q in zip(a.signal, b.signal)) < 1e-5


def test_naive_batched_reference_agrees(tiny):
    model, tok = tiny
    rng = random.Random(9)
    enc = encode_examples(tok, [random_example(rng) for _ in range(4)])
    ctx = [e.teacher_context for e in enc]
    resp = [e.response for e in enc]
    with torch.no_grad():
        naive = naive_batched_logprobs(model, ctx, resp, tok.pad_token_id)
        ours = completion_logprobs(model, ctx, resp, pad_token_id=tok.pad_token_id)
    for a, b in zip(naive, ours):
        assert torch.allclose(a, b, atol=1e-5)


def test_left_truncation_keeps_response(tiny):
    model, tok = tiny
    long_history = [
        {"role": "user", "content": "word " * 200},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "And now?"},
    ]
    y = "A response that must stay whole 🎉"
    full = encode_examples(tok, [(long_history, y, "shorter")], max_context_tokens=None)[0]
    cut = encode_examples(tok, [(long_history, y, "shorter")], max_context_tokens=32)[0]
    # fit_context cuts the oldest turns, then the request's start, keeping the system message
    assert len(cut.student_context) <= 32 and len(cut.teacher_context) <= 32
    assert cut.student_truncated == len(full.student_context) - len(cut.student_context) > 0
    assert cut.teacher_truncated == len(full.teacher_context) - len(cut.teacher_context) > 0
    assert cut.response == full.response
    [sig] = SignalScorer(model, tok, max_context_tokens=32).score([(long_history, y, "shorter")])
    assert sig.token_ids == full.response
    assert sig.truncated_context_tokens > 0
    model64 = _double(model, tok)
    ref_s, ref_t = _reference_signal(model64, cut)
    assert torch.allclose(torch.tensor(sig.signal, dtype=torch.float64), ref_t - ref_s, atol=1e-4)


def _double(model, tok):
    from sdpo.models import tiny_random_model

    return tiny_random_model(len(tok), seed=0).double().eval()


def test_unicode_and_emoji(tiny):
    model, tok = tiny
    y = "Ça marche 👍🏽 — 日本語もOK ✨"
    [sig] = SignalScorer(model, tok).score([("Réponds en français 🙂", y, "Pas d'emojis, merci.")])
    assert "".join(sig.tokens[:-1]) == y  # the last token is the appended EOS
    assert sig.tokens[-1] == tok.eos_token
    assert len(sig.tokens) == len(sig.signal) == len(sig.token_ids)
    assert all(abs(v) < 1e3 for v in sig.signal)


def test_eos_is_optional(tiny):
    model, tok = tiny
    with_eos = encode_examples(tok, [("hi", "hello there", "ok")])[0]
    without = encode_examples(tok, [("hi", "hello there", "ok")], append_eos=False)[0]
    assert with_eos.response == without.response + [tok.eos_token_id]


@pytest.mark.parametrize(
    "example, message",
    [
        (("hi", "", "more"), "example 1: the response y is empty"),
        (("hi", "   ", "more"), "example 1: the response y is empty"),
        (("hi", "hello", ""), "example 1: the follow-up o is empty"),
        (([{"role": "assistant", "content": "hi"}], "hello", "more"), "must end with a user message"),
        ({"x": "hi", "y": "hello"}, "missing field(s) o"),
    ],
)
def test_bad_examples_are_named(tiny, example, message):
    model, tok = tiny
    with pytest.raises(SignalInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        SignalScorer(model, tok).score([("ok", "fine", "thanks"), example])


def test_plan_microbatches_partitions_and_respects_budget():
    rng = random.Random(0)
    for _ in range(50):
        lengths = [(rng.randint(1, 300), rng.randint(1, 300)) for _ in range(rng.randint(1, 30))]
        budget = rng.choice([None, 600, 2000])
        groups = plan_microbatches(lengths, overhead_tokens=rng.choice([0, 64, 1000]), max_batch_tokens=budget)
        flat = sorted(k for g in groups for k in g)
        assert flat == list(range(len(lengths)))
        for g in groups:
            padded = len(g) * (max(lengths[k][0] for k in g) + max(lengths[k][1] for k in g))
            assert budget is None or len(g) == 1 or padded <= budget


def test_plan_microbatches_tradeoff():
    lengths = [(10, 10)] * 4 + [(500, 500)]
    # Cheap forwards: the long sequence goes alone rather than padding four short ones to it.
    assert sorted(map(len, plan_microbatches(lengths, overhead_tokens=100))) == [1, 4]
    # Very expensive forwards: everything in one.
    assert plan_microbatches(lengths, overhead_tokens=10**9) == [[0, 1, 2, 3, 4]]


def test_lora_model_is_scored_with_its_adapter(tokenizer):
    """The head/body split must see through peft and keep the adapter active."""
    from sdpo.models import LoraOptions, apply_lora, tiny_random_model

    model = apply_lora(tiny_random_model(len(tokenizer), seed=4), LoraOptions(r=4, dropout=0.0)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    enc = encode_examples(tokenizer, [("Hello there", "General Kenobi", "more drama")])[0]
    with torch.no_grad():
        ours = completion_logprobs(model, [enc.teacher_context], [enc.response], pad_token_id=tokenizer.pad_token_id)[0]
        ref = reference_logprobs(model, enc.teacher_context, enc.response)
        base = reference_logprobs(model.get_base_model(), enc.teacher_context, enc.response)
        with model.disable_adapter():
            plain = reference_logprobs(model, enc.teacher_context, enc.response)
    assert torch.allclose(ours, ref, atol=1e-5)
    assert torch.allclose(base, ref, atol=1e-5)
    assert (plain - ref).abs().max() > 1e-3  # the adapter matters, and we used it


def test_token_strings_roundtrip(tokenizer):
    for text in ["plain words", "emoji 👍🏽 and 🎉!", "日本語のテキスト", "tabs\tand\nnewlines", "  leading spaces"]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        pieces = token_strings(tokenizer, ids)
        assert len(pieces) == len(ids)
        assert "".join(pieces) == text
