"""Rich-feedback distillation losses vs straightforward float64 references."""

import math

import pytest
import torch

from sdpo import losses
from sdpo.reference import reference_divergence


def _logits(seed, shape, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64) * scale


@pytest.mark.parametrize("alpha", [0.0, 0.25, 0.5, 1.0])
def test_full_vocabulary_jsd_matches_reference(alpha):
    s, t = _logits(1, (3, 5, 37)), _logits(2, (3, 5, 37))
    got = losses.generalized_jsd(torch.log_softmax(s, -1), torch.log_softmax(t, -1), alpha)
    want = torch.tensor([[reference_divergence(s[b, i], t[b, i], alpha) for i in range(5)] for b in range(3)],
                        dtype=torch.float64)
    assert torch.allclose(got, want, atol=1e-12)
    # the float32 entry point used by the trainer agrees to float32 precision
    got32 = losses.full_distillation(s.float(), t.float(), alpha)
    assert torch.allclose(got32.double(), want, atol=2e-5)
    assert (want >= 0).all()


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("add_tail", [True, False])
def test_topk_jsd_matches_reference(alpha, add_tail):
    s, t = _logits(3, (2, 4, 50)), _logits(4, (2, 4, 50))
    got = losses.topk_distillation(s, t, k=7, alpha=alpha, add_tail=add_tail)
    want = torch.tensor(
        [[reference_divergence(s[b, i], t[b, i], alpha, topk=7, add_tail=add_tail) for i in range(4)] for b in range(2)]
    )
    assert torch.allclose(got.double(), want.double(), atol=2e-5)


def test_tail_bucket_completes_the_distribution():
    s = _logits(5, (6, 40)).float()
    top = torch.topk(torch.log_softmax(s, -1), 5, dim=-1).values
    with_tail = losses.add_tail_bucket(top)
    assert with_tail.shape[-1] == 6
    assert torch.allclose(with_tail.exp().sum(-1), torch.ones(6), atol=1e-6)
    # top-k equal to the vocabulary leaves an (essentially) empty tail: same as the full divergence
    t = _logits(6, (6, 40)).float()
    full = losses.full_distillation(s, t, 0.5)
    assert torch.allclose(losses.topk_distillation(s, t, k=40, alpha=0.5, add_tail=True), full, atol=1e-5)


def test_alpha_endpoints_are_the_limits_of_the_rescaled_jsd():
    s, t = _logits(7, (30,), scale=1.0), _logits(8, (30,), scale=1.0)
    ls, lt = torch.log_softmax(s, -1), torch.log_softmax(t, -1)
    eps = 1e-7
    forward = losses.generalized_jsd(ls, lt, 0.0)
    reverse = losses.generalized_jsd(ls, lt, 1.0)
    assert forward.item() == pytest.approx(reference_divergence(t, s, 1.0), rel=1e-9)  # KL(T||S)
    assert reverse.item() == pytest.approx(reference_divergence(s, t, 1.0), rel=1e-9)  # KL(S||T)
    assert (losses.generalized_jsd(ls, lt, eps) / eps).item() == pytest.approx(forward.item(), rel=1e-3)
    assert (losses.generalized_jsd(ls, lt, 1 - eps) / eps).item() == pytest.approx(reverse.item(), rel=1e-3)


def test_sampled_token_loss_value_and_gradient():
    s, t = _logits(9, (2, 6, 20)), _logits(10, (2, 6, 20))
    ids = torch.randint(0, 20, (2, 6), generator=torch.Generator().manual_seed(0))
    s_var = s.clone().requires_grad_()
    per_token = losses.sampled_token_distillation(s_var, t, ids)
    per_token.sum().backward()
    ref_grad = torch.zeros_like(s)
    for b in range(2):
        for i in range(6):
            ls = [float(x) - math.log(sum(math.exp(float(v)) for v in s[b, i])) for x in s[b, i]]
            lt = float(t[b, i, ids[b, i]]) - math.log(sum(math.exp(float(v)) for v in t[b, i]))
            y = int(ids[b, i])
            ratio = ls[y] - lt
            assert per_token[b, i].item() == pytest.approx(ratio * ls[y], rel=1e-5, abs=1e-6)
            # d/dlogits of ratio * log S(y) with the ratio held fixed: ratio * (onehot - softmax)
            for v in range(20):
                ref_grad[b, i, v] = ratio * ((v == y) - math.exp(ls[v]))
    assert torch.allclose(s_var.grad.double(), ref_grad, atol=1e-5)


def test_sampled_token_gradient_is_the_reverse_kl_gradient_in_expectation():
    # E_{y~S}[ (log S(y) - log T(y)) grad log S(y) ] = grad KL(S||T): check exactly by summing over y
    s, t = _logits(11, (15,)), _logits(12, (15,))
    s_var = s.clone().requires_grad_()
    probs = torch.softmax(s, -1)
    total = sum(probs[y] * losses.sampled_token_distillation(s_var[None], t[None], torch.tensor([y]))[0]
                for y in range(15))
    (g_est,) = torch.autograd.grad(total, s_var)
    s2 = s.clone().requires_grad_()
    kl = losses.generalized_jsd(torch.log_softmax(s2, -1), torch.log_softmax(t, -1), 1.0)
    (g_kl,) = torch.autograd.grad(kl, s2)
    assert torch.allclose(g_est, g_kl, atol=1e-10)


@pytest.mark.parametrize("clip, coef", [(2.0, 1.0), (None, 1.0), (2.0, 0.0), (1.5, 0.5)])
def test_importance_weights(clip, coef):
    student, old = _logits(13, (4, 5), scale=1.0), _logits(14, (4, 5), scale=1.0)
    got = losses.importance_weights(student, old, clip=clip, coef=coef)
    for b in range(4):
        for i in range(5):
            r = math.exp(float(student[b, i]) - float(old[b, i]))
            if clip is not None:
                r = min(r, clip)
            assert got[b, i].item() == pytest.approx(r**coef, rel=1e-9)
    assert not got.requires_grad


def test_masked_sequence_mean():
    x = _logits(15, (3, 4))
    mask = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]])
    want = (float(x[0, 0] + x[0, 1]) / 2 + 0.0 + float(x[2].sum()) / 4) / 3
    assert losses.masked_sequence_mean(x, mask).item() == pytest.approx(want, rel=1e-12)


def test_masked_token_mean_and_aggregation_choice():
    x = _logits(16, (3, 4))
    mask = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]])
    want = (float(x[0, 0]) + float(x[0, 1]) + sum(float(v) for v in x[2])) / 6
    assert losses.masked_token_mean(x, mask).item() == pytest.approx(want, rel=1e-12)
    assert losses.aggregate_distillation_loss(x, mask).item() == pytest.approx(want, rel=1e-12)  # the default
    assert losses.aggregate_distillation_loss(x, mask, "sequence_mean_trl").item() == pytest.approx(
        losses.masked_sequence_mean(x, mask).item(), rel=1e-12)
    assert losses.masked_token_mean(x, torch.zeros(3, 4)).item() == 0.0
    with pytest.raises(ValueError, match="loss_aggregation must be one of"):
        losses.aggregate_distillation_loss(x, mask, "mean")


def test_invalid_alpha_is_refused():
    with pytest.raises(ValueError, match="alpha"):
        losses.generalized_jsd(torch.zeros(3), torch.zeros(3), 1.5)
