import itertools

import pytest
import torch

from sdpo.losses import advantage_pg_loss, sequence_advantages


def reference_loss(student, teacher, *, ignore_first, centering, clip, reference=None, kl_coef=0.0):
    """Straightforward float64 version with Python loops."""
    per_seq = []
    for i, (s, q) in enumerate(zip(student, teacher)):
        idx = [t for t in range(len(s)) if t >= ignore_first]
        if not idx:
            continue
        adv = {t: float(q[t]) - float(s[t].detach()) for t in idx}
        if centering == "sequence":
            mean = sum(adv.values()) / len(idx)
            adv = {t: a - mean for t, a in adv.items()}
        if clip is not None:
            adv = {t: min(max(a, -clip), clip) for t, a in adv.items()}
        loss = sum(-adv[t] * s[t] for t in idx) / len(idx)
        if kl_coef:
            kl = sum(torch.exp(reference[i][t] - s[t]) - (reference[i][t] - s[t]) - 1 for t in idx) / len(idx)
            loss = loss + kl_coef * kl
        per_seq.append(loss)
    return sum(per_seq) / len(per_seq)


@pytest.mark.parametrize(
    "ignore_first, centering, clip, kl_coef",
    list(itertools.product([0, 2], ["none", "sequence"], [None, 0.3], [0.0, 0.1])),
)
def test_loss_and_gradient_match_float64_reference(ignore_first, centering, clip, kl_coef):
    gen = torch.Generator().manual_seed(ignore_first * 7 + (clip is not None) + int(kl_coef * 10))
    lengths = [1, 5, 17, 3, 9]
    base = [-torch.rand(n, generator=gen, dtype=torch.float64) * 4 for n in lengths]
    teacher = [b + torch.randn(n, generator=gen, dtype=torch.float64) for b, n in zip(base, lengths)]
    reference = [b + 0.5 * torch.randn(n, generator=gen, dtype=torch.float64) for b, n in zip(base, lengths)]
    s32 = [b.float().requires_grad_() for b in base]
    loss, stats = advantage_pg_loss(
        s32, [t.float() for t in teacher], ignore_first=ignore_first, centering=centering, clip=clip,
        reference=[r.float() for r in reference], kl_coef=kl_coef,
    )
    loss.backward()
    s64 = [b.clone().requires_grad_() for b in base]
    ref = reference_loss(s64, teacher, ignore_first=ignore_first, centering=centering, clip=clip,
                         reference=reference, kl_coef=kl_coef)
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), abs=1e-5)
    for a, b in zip(s32, s64):
        ga = a.grad.double() if a.grad is not None else torch.zeros_like(b)
        gb = b.grad if b.grad is not None else torch.zeros_like(b)
        assert torch.allclose(ga, gb, atol=1e-6)
    expected_tokens = sum(max(0, n - ignore_first) for n in lengths)
    assert stats["response_tokens"] == expected_tokens
    assert stats["sequences"] == sum(n > ignore_first for n in lengths)


def test_gradient_is_minus_advantage_over_length():
    s = torch.tensor([-1.0, -2.0, -0.5], requires_grad=True)
    q = torch.tensor([-0.5, -2.5, -0.5])
    loss, _ = advantage_pg_loss([s], [q])
    loss.backward()
    assert torch.allclose(s.grad, -(q - s.detach()) / 3)


def test_centering_and_clipping():
    s, q = torch.zeros(4), torch.tensor([1.0, 2.0, 3.0, 10.0])
    adv, valid = sequence_advantages(s, q, centering="sequence")
    assert adv.sum().abs() < 1e-6 and valid.all()
    adv, valid = sequence_advantages(s, q, ignore_first=2, clip=5.0)
    assert adv.tolist() == [1.0, 2.0, 3.0, 5.0] and valid.tolist() == [False, False, True, True]
    with pytest.raises(ValueError, match="centering"):
        sequence_advantages(s, q, centering="batch")


def test_all_sequences_too_short_gives_zero_connected_loss():
    s = torch.zeros(2, requires_grad=True)
    loss, stats = advantage_pg_loss([s], [torch.ones(2)], ignore_first=5)
    loss.backward()
    assert loss.item() == 0.0 and stats["sequences"] == 0 and s.grad is not None
