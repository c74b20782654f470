"""SPO losses and link estimators vs float64 references; the synthetic benchmark's exact values."""

import math

import numpy as np
import pytest
import torch

from sdpo import losses
from sdpo.spo import synthetic as syn
from sdpo.trainers.spo import IsotonicLink, KernelLink, SPOObjective, SPOOptions


def _data(seed, n=9):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(n, generator=g, dtype=torch.float64) * 2
    z = (torch.rand(n, generator=g, dtype=torch.float64) < 0.6).double()
    return t, z


def _logsig(x):
    return -math.log1p(math.exp(-x)) if x > 0 else x - math.log1p(math.exp(x))


def test_dpo_loss_and_gradient_match_reference():
    t, z = _data(0)
    tv = t.clone().requires_grad_()
    loss = losses.dpo_loss(tv, z)
    loss.backward()
    ref = sum(-_logsig((2 * float(zi) - 1) * float(ti)) for ti, zi in zip(t, z)) / len(t)
    assert loss.item() == pytest.approx(ref, rel=1e-12)
    for ti, zi, g in zip(t, z, tv.grad):
        s = 2 * float(zi) - 1
        assert g.item() == pytest.approx(-s * (1 - 1 / (1 + math.exp(-s * float(ti)))) / len(t), rel=1e-9)


def test_rspo_upper_equals_the_explicit_double_loop():
    t, z = _data(1, n=7)
    tv = t.clone().requires_grad_()
    loss = losses.rspo_loss(tv, z, pairs="upper")
    s = [(2 * float(zi) - 1) * float(ti) for ti, zi in zip(t, z)]
    pairs = [(i, j) for i in range(7) for j in range(7) if i < j]
    ref = sum(-_logsig(s[i] + s[j]) for i, j in pairs) / len(pairs)
    assert loss.item() == pytest.approx(ref, rel=1e-12)
    loss.backward()
    tref = t.clone().requires_grad_()
    sref = (2 * z - 1) * tref
    total = sum(-torch.nn.functional.logsigmoid(sref[i] + sref[j]) for i, j in pairs) / len(pairs)
    total.backward()
    assert torch.allclose(tv.grad, tref.grad, atol=1e-12)
    with pytest.raises(ValueError, match="at least 2"):
        losses.rspo_loss(t[:1], z[:1], pairs="upper")


def test_link_cross_entropy_matches_reference():
    g = torch.Generator().manual_seed(2)
    psi = torch.rand(10, generator=g, dtype=torch.float64) * 0.98 + 0.01
    z = (torch.rand(10, generator=g) < 0.5).double()
    ref = -sum(zi * math.log(p) + (1 - zi) * math.log(1 - p) for p, zi in zip(psi.tolist(), z.tolist())) / 10
    assert losses.link_cross_entropy(psi, z).item() == pytest.approx(ref, rel=1e-12)


@pytest.mark.parametrize("shift", [0.0, 0.5, 2.0])
def test_mixture_link_is_symmetric_monotone_and_logistic_at_zero_shift(shift):
    u = torch.linspace(-8, 8, 401, dtype=torch.float64)
    psi = losses.mixture_link(u, shift=shift, temperature=0.7)
    assert torch.allclose(psi + losses.mixture_link(-u, shift=shift, temperature=0.7), torch.ones_like(u), atol=1e-12)
    assert (psi[1:] - psi[:-1] > 0).all()
    assert losses.mixture_link(torch.tensor(0.0), shift=shift).item() == pytest.approx(0.5)
    if shift == 0.0:
        assert torch.allclose(losses.mixture_link(u, shift=0.0, temperature=1.0), torch.sigmoid(u), atol=1e-15)


def _samples_from_link(link, n, seed):
    rng = np.random.default_rng(seed)
    t = rng.normal(0, 2, n)
    z = (rng.random(n) < link(t)).astype(float)
    return t, z


def _true_link(t, shift=2.0):
    return losses.mixture_link(torch.as_tensor(t), shift=shift).numpy()


@pytest.mark.parametrize("smoothing", [0.0, 0.3])
def test_isotonic_link_is_monotone_and_accurate(smoothing):
    t, z = _samples_from_link(_true_link, 20000, 0)
    link = IsotonicLink(smoothing=smoothing).fit(t, z)
    grid = torch.linspace(-3, 3, 121, dtype=torch.float64)
    est = link(grid)
    assert (est[1:] - est[:-1] >= -1e-12).all()
    assert float((est - torch.as_tensor(_true_link(grid.numpy()))).abs().max()) < 0.08


def test_isotonic_link_has_a_gradient_between_knots():
    link = IsotonicLink().fit(np.array([-1.0, 0.0, 1.0, 2.0]), np.array([0.0, 0.0, 1.0, 1.0]))
    x = torch.tensor([0.5], dtype=torch.float64, requires_grad=True)
    link(x).sum().backward()
    assert x.grad.item() > 0


def test_kernel_link_is_accurate_and_oriented():
    t, z = _samples_from_link(_true_link, 20000, 1)
    link = KernelLink(memory_size=20000, bandwidth=0.25, rule="fixed")
    link.add(t, z)
    grid = torch.linspace(-3, 3, 61, dtype=torch.float64)
    est = link(grid)
    assert float((est - torch.as_tensor(_true_link(grid.numpy()))).abs().max()) < 0.08
    assert link.orientation() == 1.0
    flipped = KernelLink(memory_size=100)
    flipped.add(t[:100], 1 - z[:100])
    assert flipped.orientation() == -1.0
    # the memory is a FIFO of the given size
    small = KernelLink(memory_size=5)
    small.add(np.arange(8.0), np.zeros(8))
    assert list(small.t) == [3.0, 4.0, 5.0, 6.0, 7.0]


def test_kernel_link_matches_a_direct_nadaraya_watson_sum():
    link = KernelLink(memory_size=50, bandwidth=0.7, rule="fixed")
    mt, mz = np.linspace(-2, 2, 9), (np.arange(9) % 3 == 0).astype(float)
    link.add(mt, mz)
    for x in (-1.3, 0.0, 2.5):
        w = [math.exp(-0.5 * ((x - a) / 0.7) ** 2) for a in mt]
        ref = min(max(sum(wi * b for wi, b in zip(w, mz)) / (sum(w) + 1e-6), 1e-4), 1 - 1e-4)
        assert link(torch.tensor([x], dtype=torch.float64)).item() == pytest.approx(ref, rel=1e-10)


def test_objectives_use_the_blended_link_once_fitted():
    t, z = _data(3, n=64)
    pspo = SPOObjective(SPOOptions(method="pspo", pspo_fit="memory", pspo_link="linear", refit_every=1,
                                   min_fit_points=10, blend=0.9))
    first = pspo(t, z)  # memory empty: logistic loss, then remembered
    assert first.item() == pytest.approx(losses.dpo_loss(t, z).item())
    second = pspo(t, z)
    iso = IsotonicLink(clip=1e-4).fit(t.numpy(), z.numpy())
    psi = 0.9 * iso(t) + 0.1 * torch.sigmoid(t)
    assert second.item() == pytest.approx(losses.link_cross_entropy(psi, z).item(), rel=1e-10)
    ospo = SPOObjective(SPOOptions(method="ospo", min_fit_points=10, blend=0.9, bandwidth=0.5, bandwidth_rule="fixed"))
    ospo(t, z)
    mem = KernelLink(bandwidth=0.5, rule="fixed")
    mem.add(t.numpy(), z.numpy())
    psi = 0.9 * mem(t) + 0.1 * torch.sigmoid(t)
    assert ospo(t, z).item() == pytest.approx(losses.link_cross_entropy(psi, z).item(), rel=1e-10)
    with pytest.raises(ValueError, match="method"):
        SPOOptions(method="ppo")


def test_exact_kl_matches_monte_carlo():
    cfg = syn.SyntheticConfig(contexts=5, actions=4)
    problem = syn.make_problem(0, cfg)
    theta = torch.randn(5, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    log_pi = syn.policy_at_beta(problem, theta, 0.8)
    reward, kl = syn.exact_reward_kl(problem, log_pi)
    g = torch.Generator().manual_seed(2)
    n = 200000
    x = torch.randint(0, 5, (n,), generator=g)
    y = torch.multinomial(log_pi.exp()[x], 1, generator=g).squeeze(1)
    mc_kl = (log_pi[x, y] - problem.log_ref[x, y]).mean().item()
    mc_reward = problem.reward[x, y].mean().item()
    assert mc_kl == pytest.approx(kl, abs=0.01)
    assert mc_reward == pytest.approx(reward, abs=0.01)
    # pi_beta = pi_ref^(1 - 1/beta) pi^(1/beta), normalised
    pi = torch.log_softmax(problem.log_ref + theta, 1)
    direct = torch.log_softmax((1 - 1 / 0.8) * problem.log_ref + pi / 0.8, 1)
    assert torch.allclose(direct, log_pi, atol=1e-12)


def test_preferences_follow_the_link_and_are_normalised():
    cfg = syn.SyntheticConfig(contexts=4, actions=3)
    problem = syn.make_problem(3, cfg)
    x, y0, y1, z = syn.sample_pairs(problem, 100000, shift=1.5, temperature=1.0, seed=0)
    diff = (problem.reward[x, y1] - problem.reward[x, y0]) / problem.diff_std
    assert diff.std().item() == pytest.approx(1.0, abs=0.02)
    assert z.mean().item() == pytest.approx(losses.mixture_link(diff, shift=1.5).mean().item(), abs=0.01)


def test_small_benchmark_runs_and_reports_every_cell(tmp_path):
    cfg = syn.SyntheticConfig(contexts=4, actions=3, n_pairs=200, steps=20, seeds=2, shifts=(0.0, 2.0),
                              betas=(0.5, 1.0, 2.0))
    result = syn.run(cfg, progress=False)
    assert len(result["cells"]) == 2 * 2 * 4
    for c in result["cells"]:
        assert c["reward_at_budget"] <= c["oracle"] + 1e-9  # nothing beats the optimum at that KL
    syn.write_outputs(result, tmp_path)
    assert (tmp_path / "pareto.png").stat().st_size > 1000
    assert "rspo" in syn.format_table(result["summary"], cfg.kl_budget)
