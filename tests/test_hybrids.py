"""GRPO / self-distillation hybrids of SDPOTrainer: each loss against a float64 loop reference."""

from __future__ import annotations

import math
import random

import pytest
import torch

from sdpo import losses
from sdpo.trainers.rich import (
    SDPOConfig,
    SDPOConfigError,
    echoes_teacher_context,
    teacher_only_ngrams,
    template_phrases,
    word_ngrams,
)

B, T, V = 6, 5, 11


def _case(seed):
    g = torch.Generator().manual_seed(seed)
    pg = torch.randn(B, T, generator=g, dtype=torch.float64)
    sd = torch.rand(B, T, generator=g, dtype=torch.float64)
    mask = (torch.rand(B, T, generator=g) > 0.25).double()
    mask[0] = 0  # an empty row
    active = (torch.rand(B, generator=g) > 0.3).double()
    success = (torch.rand(B, generator=g) > 0.5).double()
    rows = torch.rand(B, generator=g, dtype=torch.float64) * 2
    tokw = torch.rand(B, T, generator=g, dtype=torch.float64)
    return pg, sd, mask, active, success, rows, tokw


# ----------------------------------------------------------------------------- references (plain Python)


def ref_mix(pg, sd, mask, active, lam, rows, tokw):
    num = den = 0.0
    for i in range(B):
        for t in range(T):
            if mask[i, t]:
                num += lam * float(pg[i, t]) + (1 - lam) * float(active[i]) * float(rows[i]) * float(tokw[i, t]) * float(sd[i, t])
                den += 1
    return num / max(den, 1.0)


def ref_routed(pg, sd, mask, active, success, rows, tokw):
    num = den = 0.0
    for i in range(B):
        for t in range(T):
            if not mask[i, t]:
                continue
            if success[i]:
                num += float(pg[i, t])
                den += 1
            elif active[i]:
                num += float(rows[i]) * float(tokw[i, t]) * float(sd[i, t])
                den += 1
    return num / max(den, 1.0)


def ref_pass_weighted(sd, mask, active, rows):
    num = den = 0.0
    for i in range(B):
        for t in range(T):
            if mask[i, t] and active[i]:
                num += float(rows[i]) * float(sd[i, t])
                den += 1
    return num / max(den, 1.0)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("lam", [0.0, 0.3, 0.9, 1.0])
def test_lambda_mix_matches_reference(seed, lam):
    pg, sd, mask, active, _, rows, tokw = _case(seed)
    got = losses.lambda_mix_loss(pg, sd, mask, active, lam, row_weights=rows, token_weights=tokw)
    assert got.item() == pytest.approx(ref_mix(pg, sd, mask, active, lam, rows, tokw), rel=1e-12, abs=1e-12)
    plain = losses.lambda_mix_loss(pg, sd, mask, active, lam)
    ones = torch.ones(B, dtype=torch.float64)
    assert plain.item() == pytest.approx(ref_mix(pg, sd, mask, active, lam, ones, torch.ones(B, T)), rel=1e-12)


def test_lambda_mix_at_one_is_grpo_token_mean():
    pg, sd, mask, active, *_ = _case(7)
    got = losses.lambda_mix_loss(pg, sd, mask, active, 1.0)
    assert got.item() == pytest.approx((pg * mask).sum().item() / mask.sum().item(), rel=1e-12)
    with pytest.raises(ValueError, match="lambda"):
        losses.lambda_mix_loss(pg, sd, mask, active, 1.5)


@pytest.mark.parametrize("seed", range(5))
def test_routed_loss_matches_reference(seed):
    pg, sd, mask, active, success, rows, tokw = _case(seed)
    got = losses.routed_loss(pg, sd, mask, active, success, row_weights=rows, token_weights=tokw)
    assert got.item() == pytest.approx(ref_routed(pg, sd, mask, active, success, rows, tokw), rel=1e-12, abs=1e-12)


def test_routing_sends_successes_to_grpo_only():
    pg, sd, mask, active, _, _, _ = _case(3)
    all_ok = torch.ones(B, dtype=torch.float64)
    assert losses.routed_loss(pg, sd, mask, active, all_ok).item() == pytest.approx(
        ((pg * mask).sum() / mask.sum()).item(), rel=1e-12)
    none_ok = torch.zeros(B, dtype=torch.float64)
    m = mask * active[:, None]
    assert losses.routed_loss(pg, sd, mask, active, none_ok).item() == pytest.approx(
        ((sd * m).sum() / m.sum()).item(), rel=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_pass_rate_weighted_loss_matches_reference(seed):
    _, sd, mask, active, _, rows, _ = _case(seed)
    got = losses.pass_rate_weighted_loss(sd, mask, active, rows)
    assert got.item() == pytest.approx(ref_pass_weighted(sd, mask, active, rows), rel=1e-12, abs=1e-12)


def test_group_pass_rates_and_weights():
    rewards = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, float("nan"), 0.5, 0.0]
    rates = losses.group_pass_rates(rewards, 4, threshold=1.0)
    assert rates == [0.5] * 4 + [1.0] * 4 + [0.0] * 4
    with pytest.raises(ValueError, match="groups of 5"):
        losses.group_pass_rates(rewards, 5, threshold=1.0)
    rng = random.Random(0)
    p = torch.tensor([rng.random() for _ in range(8)], dtype=torch.float64)
    active = torch.tensor([1, 1, 0, 1, 1, 0, 1, 1], dtype=torch.float64)
    raw = losses.pass_rate_weights(p, active, "none")
    for k in range(8):
        assert raw[k].item() == pytest.approx(math.sqrt(p[k].item() * (1 - p[k].item())), rel=1e-6)
    norm = losses.pass_rate_weights(p, active, "batch_mean")
    mean_active = sum(raw[k].item() for k in range(8) if active[k]) / active.sum().item()
    for k in range(8):
        assert norm[k].item() == pytest.approx(raw[k].item() / mean_active, rel=1e-6)
    zero = losses.pass_rate_weights(torch.tensor([0.0, 1.0]), torch.ones(2), "batch_mean")
    assert zero.tolist() == [0.0, 0.0]  # a batch of solved / hopeless groups gives no distillation
    with pytest.raises(ValueError, match="pass_rate_normalization"):
        losses.pass_rate_weights(p, active, "sum")


def test_teacher_entropy_and_weights_match_reference():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 4, V, generator=g, dtype=torch.float64)
    h = losses.teacher_entropy(logits)
    for i in range(3):
        for t in range(4):
            z = [float(v) for v in logits[i, t]]
            m = max(z)
            e = [math.exp(v - m) for v in z]
            s = sum(e)
            ref = -sum((x / s) * math.log(x / s) for x in e)
            assert h[i, t].item() == pytest.approx(ref, rel=1e-5)
    w = losses.entropy_weights(h, 0.7)
    assert torch.allclose(w, torch.exp(-0.7 * h))
    assert torch.equal(losses.entropy_weights(h, 0.0), torch.ones_like(h))


def test_clipped_policy_gradient_matches_reference_and_its_gradient():
    g = torch.Generator().manual_seed(2)
    logp = (torch.randn(B, T, generator=g, dtype=torch.float64) * 0.3 - 1).requires_grad_(True)
    old = logp.detach() + torch.randn(B, T, generator=g, dtype=torch.float64) * 0.2
    adv = torch.randn(B, generator=g, dtype=torch.float64)
    got = losses.clipped_policy_gradient(logp, old, adv, eps_low=0.2, eps_high=0.28)
    for i in range(B):
        for t in range(T):
            r = math.exp(float(logp[i, t]) - float(old[i, t]))
            a = float(adv[i])
            ref = -min(r * a, min(max(r, 0.8), 1.28) * a)
            assert got[i, t].item() == pytest.approx(ref, rel=1e-12, abs=1e-12)
    # on-policy: gradient -A per token
    on = losses.clipped_policy_gradient(logp, logp.detach(), adv)
    (grad,) = torch.autograd.grad(on.sum(), logp)
    assert torch.allclose(grad, -adv[:, None].expand(B, T))


# ----------------------------------------------------------------------------- config


def test_defaults_are_plain_sdpo():
    cfg = SDPOConfig()
    assert cfg.hybrid == "none" and cfg.entropy_beta == 0.0
    assert cfg.grpo_mix == 0.0 and not cfg.sample_routing and not cfg.pass_rate_weighting
    assert SDPOConfig(sample_routing=True).entropy_beta == 1.0
    assert SDPOConfig(sample_routing=True, entropy_weight_beta=0).entropy_beta == 0.0
    assert SDPOConfig(grpo_mix=0.5).hybrid == "lambda_mix"
    assert SDPOConfig(pass_rate_weighting=True).hybrid == "pass_rate"


@pytest.mark.parametrize("kwargs,message", [
    ({"grpo_mix": 1.0}, "grpo_mix must be in"),
    ({"grpo_mix": -0.1}, "grpo_mix must be in"),
    ({"grpo_mix": 0.5, "sample_routing": True}, "choose one"),
    ({"entropy_weight_beta": -1.0}, "entropy_weight_beta"),
    ({"pass_rate_normalization": "max"}, "pass_rate_normalization"),
    ({"enabled": False, "sample_routing": True}, "enabled=False is plain GRPO"),
])
def test_bad_hybrid_options_are_one_clear_line(kwargs, message):
    with pytest.raises(SDPOConfigError, match=message):
        SDPOConfig(**kwargs)


# ----------------------------------------------------------------------------- leakage measure


def test_echo_detects_teacher_only_phrases():
    cfg = SDPOConfig()
    phrases = template_phrases(cfg)
    assert any("judged correct" in p for p in phrases)
    fb = "Wrong: the answer given was 121; the correct answer is 122."
    grams = teacher_only_ngrams([*phrases, fb], "What is 61 + 61? Reply with just the number.")
    assert echoes_teacher_context("The correct answer is 122 okay", grams)
    assert echoes_teacher_context("Here is an attempt at this request", grams)
    assert not echoes_teacher_context("122", grams)
    assert not echoes_teacher_context("61 + 61 = 122", grams)
    # n-grams the student prompt already has are not leakage
    grams2 = teacher_only_ngrams(["reply with just the number please"], "Reply with just the number.")
    assert not echoes_teacher_context("reply with just the number", grams2)
    assert word_ngrams("A b c d e", 4) == {("a", "b", "c", "d"), ("b", "c", "d", "e")}


# ----------------------------------------------------------------------------- the trainer's wiring


@pytest.fixture(scope="module")
def tok():
    from sdpo.models import load_tokenizer

    return load_tokenizer("tiny-random")


def _trainer(tok, tmp_path, reward, sdpo_config, steps=2):
    from datasets import Dataset
    from trl import GRPOConfig

    from sdpo import SDPOTrainer
    from sdpo.models import tiny_random_model

    ds = Dataset.from_list(
        [{"prompt": [{"role": "user", "content": f"What is {a} + {b}?"}], "answer": a + b}
         for a, b in [(1, 2), (3, 4), (5, 6), (7, 8)]]
    )
    args = GRPOConfig(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, num_generations=4,
        max_completion_length=6, max_steps=steps, learning_rate=1e-3, logging_steps=1, report_to=[],
        use_cpu=True, save_strategy="no", seed=0,
    )
    return SDPOTrainer(model=tiny_random_model(len(tok)), args=args, sdpo_config=sdpo_config,
                       processing_class=tok, reward_funcs=[reward], train_dataset=ds)


def _reward(prompts, completions, **_):
    # group 1: rollouts 0 and 1 succeed (pass rate 0.5); group 2: nobody (pass rate 0), feedback only
    return [{"score": 1.0 if k in (0, 1) else 0.0, "feedback": f"attempt {k} was wrong"}
            for k in range(len(completions))]


@pytest.mark.parametrize("config", [
    SDPOConfig(grpo_mix=0.5), SDPOConfig(sample_routing=True), SDPOConfig(pass_rate_weighting=True),
    SDPOConfig(entropy_weight_beta=0.5),
], ids=["lambda_mix", "routing", "pass_rate", "entropy"])
def test_hybrids_train_and_log(tok, tmp_path, config):
    trainer = _trainer(tok, tmp_path, _reward, config)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 2 and all(math.isfinite(h["loss"]) for h in logs)
    assert "hybrid/loss" in logs[-1]
    assert 0.0 <= logs[-1]["self_distillation/teacher_context_echo_rate"] <= 1.0
    if config.sample_routing:
        assert logs[-1]["hybrid/routed_grpo_fraction"] == pytest.approx(2 / 8)
    if config.pass_rate_weighting:
        # only group 1 (p = 0.5) keeps a non-zero weight; group 2 (p = 0) is switched off
        assert logs[-1]["hybrid/pass_rate_weight_nonzero_fraction"] == pytest.approx(0.5)
    after = list(trainer.model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after))


def test_hybrid_loss_wiring_matches_reference(tok, tmp_path):
    """The trainer's routed + pass-rate + entropy loss from logits, against a float64 recomputation."""
    from trl.experimental.sdpo.sdpo_trainer import DistillationLogits

    cfg = SDPOConfig(sample_routing=True, pass_rate_weighting=True, entropy_weight_beta=0.5,
                     distillation_topk=None, full_logit_distillation=True)
    trainer = _trainer(tok, tmp_path, _reward, cfg, steps=1)
    g = torch.Generator().manual_seed(0)
    n, t, v = 8, 4, len(tok)
    student = torch.randn(n, t, v, generator=g)
    teacher = torch.randn(n, t, v, generator=g)
    ids = torch.randint(0, v, (n, t), generator=g)
    mask = torch.ones(n, t)
    mask[3, 2:] = 0
    active = torch.tensor([1, 1, 1, 1, 1, 0, 1, 1.0])
    success = torch.tensor([1, 1, 0, 0, 0, 0, 0, 0.0])
    rates = torch.tensor([0.5] * 4 + [0.0] * 4)
    adv = torch.randn(n, generator=g)
    inputs = {"self_distillation_mask": active, "rollout_success": success, "group_pass_rate": rates,
              "advantages": adv}
    dl = DistillationLogits(completion_ids=ids, completion_mask=mask, loss_mask=mask * active[:, None],
                            student_logits=student, teacher_logits=teacher)
    trainer.model.train()
    got = trainer._compute_hybrid_loss(trainer.model, inputs, dl).item()

    s64, t64 = torch.log_softmax(student.double(), -1), torch.log_softmax(teacher.double(), -1)
    num = den = 0.0
    raw_w = [math.sqrt(r * (1 - r)) for r in rates.tolist()]
    mean_w = sum(w for w, a in zip(raw_w, active.tolist()) if a) / sum(active.tolist())
    for i in range(n):
        for k in range(t):
            if not mask[i, k]:
                continue
            if success[i]:
                num += -float(adv[i])  # on-policy clipped surrogate: ratio 1
                den += 1
            elif active[i]:
                ps, pt = s64[i, k].exp(), t64[i, k].exp()
                m = 0.5 * ps + 0.5 * pt
                jsd = 0.5 * float((ps * (s64[i, k] - m.log())).sum()) + 0.5 * float((pt * (t64[i, k] - m.log())).sum())
                h = -float((pt * t64[i, k]).sum())
                num += (raw_w[i] / mean_w) * math.exp(-0.5 * h) * jsd
                den += 1
    assert got == pytest.approx(num / den, rel=1e-4)
