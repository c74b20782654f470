"""Offline SDPO against the reference collator and loss (lasgroup/user_interactions, offline_sdpo_trainer.py).

Issue 28: the first-two-token skip (the reference slices only a batch wider than 2 tokens, and a response
of <= 2 tokens stays in the batch mean as a zero), and the response's end (trailing whitespace removed
before the EOS, responses cut to 2048 tokens).
"""

from types import SimpleNamespace

import pytest
import torch

from sdpo.trainers.offline import OfflineSDPOConfig, offline_loss


def reference_offline_loss(student, teacher, ignore_first_k):
    """offline_sdpo_trainer.py L217-227 and L389-393, transcribed: right-padded (B, C) log-probs, the first k
    columns sliced only when C > k, loss per sequence = sum / clamp(tokens, 1), mean over the batch."""
    width = max(len(s) for s in student)
    pad = lambda rows: torch.stack([torch.cat([r, r.new_zeros(width - len(r))]) for r in rows])  # noqa: E731
    logps_x, logps_xo = pad(student), pad(teacher)
    mask = torch.stack([torch.arange(width) < len(s) for s in student]).long()
    if ignore_first_k > 0 and width > ignore_first_k:
        logps_x, logps_xo, mask = logps_x[:, ignore_first_k:], logps_xo[:, ignore_first_k:], mask[:, ignore_first_k:]
    mask_f = mask.to(logps_x.dtype)
    lengths = mask_f.sum(dim=1, keepdim=True).clamp(min=1.0)
    per_token_loss = -((logps_xo - logps_x).detach() * logps_x) * mask_f
    return (per_token_loss.sum(dim=1, keepdim=True) / lengths).mean()


def _batch(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    student = [(-torch.rand(n, generator=g, dtype=torch.float64) * 3).requires_grad_() for n in lengths]
    teacher = [-torch.rand(n, generator=g, dtype=torch.float64) * 3 for n in lengths]
    return student, teacher


def _cfg(rule="batch", k=2):
    return SimpleNamespace(ignore_first_tokens=k, ignore_first_tokens_rule=rule, advantage_centering="none",
                           advantage_clip=None, kl_coef=0.0)


@pytest.mark.parametrize("lengths", [[5, 9, 2], [1, 2, 2], [3, 1], [7, 4, 6], [2]])
def test_first_token_skip_matches_the_reference_in_float64(lengths):
    student, teacher = _batch(lengths)
    ours, _ = offline_loss(student, teacher, _cfg())
    ref = reference_offline_loss(student, teacher, 2)
    # the reference formula in float64; advantage_pg_loss computes its sums in float32
    assert torch.allclose(ours.double(), ref, rtol=1e-6, atol=1e-7), (ours.item(), ref.item())
    g_ours = torch.autograd.grad(ours, student, allow_unused=True)
    g_ref = torch.autograd.grad(reference_offline_loss(student, teacher, 2), student, allow_unused=True)
    for a, b in zip(g_ours, g_ref):
        a = torch.zeros_like(b) if a is None else a
        b = torch.zeros_like(a) if b is None else b
        assert torch.allclose(a.double(), b, rtol=1e-6, atol=1e-7)


def test_the_sequence_rule_is_the_other_reading():
    # lengths [5, 9, 2]: the 2-token response is a zero in the reference's mean over 3, left out by 'sequence'
    student, teacher = _batch([5, 9, 2])
    batch, _ = offline_loss(student, teacher, _cfg("batch"))
    sequence, _ = offline_loss(student, teacher, _cfg("sequence"))
    assert torch.allclose(sequence * 2 / 3, batch, rtol=1e-6, atol=1e-7) and not torch.allclose(sequence, batch)
    # a batch of responses no longer than 2 tokens: the reference keeps every token
    student, teacher = _batch([2, 1])
    batch, _ = offline_loss(student, teacher, _cfg("batch"))
    assert torch.allclose(batch.double(), reference_offline_loss(student, teacher, 0), rtol=1e-6, atol=1e-7)
    assert offline_loss(student, teacher, _cfg("sequence"))[1] == {"sequences": 0.0}


def test_defaults_are_the_reference():
    cfg = OfflineSDPOConfig(output_dir="/tmp/unused-sdpo-offline", report_to="none")
    assert (cfg.ignore_first_tokens, cfg.ignore_first_tokens_rule) == (2, "batch")
    assert cfg.strip_response is True and cfg.max_response_tokens == 2048 and cfg.append_eos is True
    with pytest.raises(ValueError, match="ignore_first_tokens_rule"):
        OfflineSDPOConfig(output_dir="/tmp/unused-sdpo-offline", report_to="none", ignore_first_tokens_rule="x")


@pytest.fixture(scope="module")
def tokenizer():
    from sdpo.models import load_model

    return load_model("tiny-random")[1]


def _encoded_y(tokenizer, y, **kwargs):
    from sdpo.data.interactions import Interaction
    from sdpo.trainers.offline import InteractionDataset

    record = Interaction(x=[{"role": "user", "content": "Say hello."}], y=y, o="Shorter please.")
    return InteractionDataset.from_records([record], tokenizer, **kwargs).encoded[0].response


def _reference_completion(tokenizer, y, max_length=2048):
    """The reference collator (offline_sdpo_trainer.py L89-107): rstrip, + EOS text, truncated to max_length."""
    text = y.rstrip() + tokenizer.eos_token
    return tokenizer([text], truncation=True, max_length=max_length, add_special_tokens=False)["input_ids"][0]


@pytest.mark.parametrize("y", ["Hello there.  \n\n", "Hi!\t \n", "No trailing space", "Line one\nline two \n"])
def test_eos_after_stripped_response_as_the_reference(tokenizer, y):
    ours = _encoded_y(tokenizer, y, strip_response=True, max_response_tokens=2048)
    assert ours == _reference_completion(tokenizer, y)
    assert ours[-1] == tokenizer.eos_token_id
    if y != y.rstrip():  # without the strip the whitespace stays before the EOS
        assert _encoded_y(tokenizer, y) != ours


def test_responses_are_cut_to_max_response_tokens_as_the_reference(tokenizer):
    y = " ".join(f"word{i}" for i in range(200))
    ours = _encoded_y(tokenizer, y, strip_response=True, max_response_tokens=16)
    assert len(ours) == 16 and ours == _reference_completion(tokenizer, y, max_length=16)
    assert ours[-1] != tokenizer.eos_token_id  # the reference's truncation cuts the EOS too
    assert len(_encoded_y(tokenizer, y, strip_response=True, max_response_tokens=0)) > 16
