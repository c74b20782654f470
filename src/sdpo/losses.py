"""Losses on the hindsight signal.

:func:`advantage_pg_loss` is the SDPO policy-gradient loss for one batch of
responses. For response ``i`` with student log-probs ``s_t`` (differentiable) and
teacher log-probs ``q_t`` (fixed),

    A_t    = q_t - stopgrad(s_t)                (the per-token signal)
    loss_i = - sum_{t in V_i} A_t * s_t / |V_i|  (+ kl_coef * mean_{t in V_i} KL_t)

where ``V_i`` are the response positions from ``ignore_first`` on. Optionally the
advantages are mean-centred within each sequence and/or clipped to ``[-clip, clip]``.
Its gradient ``-sum_t A_t grad s_t / |V_i|`` is the one-sample policy gradient of the
per-token KL from the student to the (stop-gradient) teacher. The batch loss is the
mean over sequences that have at least one valid position.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

CENTERING = ("none", "sequence")


def sequence_advantages(
    student: torch.Tensor,
    teacher: torch.Tensor,
    *,
    ignore_first: int = 0,
    centering: str = "none",
    clip: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(advantages, valid mask)`` for one response; advantages carry no gradient."""
    if centering not in CENTERING:
        raise ValueError(f"advantage centering must be one of {CENTERING}, got {centering!r}")
    adv = (teacher.detach() - student.detach()).float()
    valid = torch.arange(adv.shape[0], device=adv.device) >= ignore_first
    if centering == "sequence" and adv.shape[0] > ignore_first:  # from the shape: no device sync
        adv = adv - adv[ignore_first:].mean()
    if clip is not None:
        adv = adv.clamp(-clip, clip)
    return adv, valid


def advantage_pg_loss(
    student: Sequence[torch.Tensor],
    teacher: Sequence[torch.Tensor],
    *,
    ignore_first: int = 0,
    centering: str = "none",
    clip: float | None = None,
    reference: Sequence[torch.Tensor] | None = None,
    kl_coef: float = 0.0,
    old: Sequence[torch.Tensor] | None = None,
    ppo_clip: float | None = None,
    scalar: Sequence[float] | None = None,
    baseline: Sequence[torch.Tensor] | None = None,
    token_weights: Sequence[torch.Tensor] | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The SDPO policy-gradient loss of a batch, and statistics of its signal.

    ``baseline`` (ours, off by default): per-token log-probs that replace the student's in the
    advantage, ``A_t = q_t - b_t`` - the contrastive signal, with ``b_t`` the teacher's
    log-prob under a generic follow-up, so that what any follow-up would cause cancels.
    ``token_weights`` (ours): multiply each token's advantage after centring and clipping
    (0 leaves a token out of the push; the selectivity mask).

    ``scalar`` (one number per sequence, e.g. a baselined reward) is added to every token's
    advantage of that sequence after centring and clipping; the signal statistics stay the
    hindsight signal's.

    With ``old`` (log-probs of the policy that generated the responses) and
    ``ppo_clip`` the per-token term is PPO's clipped surrogate
    ``-min(r A, clip(r, 1-eps, 1+eps) A)`` with ``r = exp(s - old)``; on-policy
    (``old = stopgrad(s)``, r = 1) its gradient equals the plain one.
    """
    if kl_coef and reference is None:
        raise ValueError("kl_coef > 0 needs reference log-probs")
    losses, all_adv, kls, used_adv = [], [], [], []
    for i, (s, q) in enumerate(zip(student, teacher)):
        if s.shape[0] <= ignore_first:  # no valid position (known from the shape: no device sync)
            continue
        base = baseline[i] if baseline is not None else s
        adv, _ = sequence_advantages(base, q, ignore_first=ignore_first, centering=centering, clip=clip)
        if token_weights is not None:
            adv = adv * token_weights[i].to(adv)
        k = ignore_first  # valid positions are a suffix: slices, not boolean masks (those sync)
        adv, s_v, n = adv[k:], s[k:].float(), s.shape[0] - k
        if scalar is not None:
            adv = adv + float(scalar[i])
        if old is not None and ppo_clip is not None:
            ratio = torch.exp(s_v - old[i].detach().float()[k:])
            surrogate = torch.minimum(ratio * adv, ratio.clamp(1 - ppo_clip, 1 + ppo_clip) * adv)
            loss = -surrogate.sum() / n
        else:
            loss = -(adv * s_v).sum() / n
        if kl_coef:
            log_ratio = reference[i].detach().float()[k:] - s_v
            kl = (torch.exp(log_ratio) - log_ratio - 1).mean()  # k3 estimator of KL(student || reference)
            loss = loss + kl_coef * kl
            kls.append(kl.detach())
        losses.append(loss)
        all_adv.append((q.detach() - s.detach()).float()[k:])
        used_adv.append(adv)
    if not losses:
        zero = sum(s.sum() for s in student) * 0.0  # keeps the graph connected for distributed backward
        return zero, {"sequences": 0.0}
    signal = torch.cat(all_adv)
    # every statistic in one device-to-host transfer
    used = torch.cat(used_adv)
    parts = [signal.mean(), signal.abs().mean(), signal.std() if signal.numel() > 1 else signal.new_zeros(()),
             used.abs().mean(), used.std() if used.numel() > 1 else used.new_zeros(())]
    if kls:
        parts.append(torch.stack(kls).mean())
    values = torch.stack(parts).tolist()
    stats = {
        "signal_mean": values[0],
        "signal_abs_mean": values[1],
        "signal_std": values[2],
        "response_tokens": float(signal.numel()),
        "sequences": float(len(losses)),
        # the advantage as trained (centred, clipped, weighted, + scalar): what moves the weights
        "advantage_abs_mean": values[3],
        "advantage_std": values[4],
    }
    if kls:
        stats["kl"] = values[5]
    return torch.stack(losses).mean(), stats


# ---------------------------------------------------------------------------
# Rich-feedback self-distillation (student -> teacher shown a peer demo / feedback)
#
# Per completion position the student distribution S and the teacher distribution T
# (same model, teacher context) are compared with the generalized Jensen-Shannon
# divergence of weight ``alpha`` (GKD's convention):
#
#     M = (1 - alpha) S + alpha T
#     JSD_alpha = (1 - alpha) KL(S || M) + alpha KL(T || M)
#
# JSD_alpha / alpha -> KL(T || S) as alpha -> 0 and JSD_alpha / (1 - alpha) -> KL(S || T)
# as alpha -> 1, so alpha = 0 is defined as the forward KL(T || S) and alpha = 1 as the
# reverse KL(S || T). The top-k variant restricts both distributions to the student's
# top-k tokens, adding one "tail" category for the remaining mass (or renormalising
# without it). The sampled-token variant only looks at the generated token y_t:
# its value is stopgrad(log S(y_t) - log T(y_t)) * log S(y_t), whose gradient is the
# one-sample estimate of the reverse-KL gradient.
# ---------------------------------------------------------------------------

DISTILLATION_MODES = ("full", "topk", "sampled_token")


def add_tail_bucket(logp: torch.Tensor) -> torch.Tensor:
    """Append ``log(1 - sum(exp(logp)))`` as one more category (last dim)."""
    captured = torch.logsumexp(logp, dim=-1, keepdim=True).clamp(max=-1e-7)
    return torch.cat([logp, torch.log(-torch.expm1(captured))], dim=-1)


def generalized_jsd(student_logp: torch.Tensor, teacher_logp: torch.Tensor, alpha: float) -> torch.Tensor:
    """Generalized JSD between two log-distributions over the last dim (summed over it)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    s, t = student_logp, teacher_logp
    if alpha == 0.0:
        return (t.exp() * (t - s)).sum(-1)
    if alpha == 1.0:
        return (s.exp() * (s - t)).sum(-1)
    log_m = torch.logsumexp(torch.stack([s + math.log(1 - alpha), t + math.log(alpha)]), dim=0)
    kl_s = (s.exp() * (s - log_m)).sum(-1)
    kl_t = (t.exp() * (t - log_m)).sum(-1)
    return (1 - alpha) * kl_s + alpha * kl_t


def full_distillation(student_logits: torch.Tensor, teacher_logits: torch.Tensor, alpha: float) -> torch.Tensor:
    """Per-position generalized JSD over the full vocabulary."""
    return generalized_jsd(
        torch.log_softmax(student_logits.float(), -1), torch.log_softmax(teacher_logits.float(), -1), alpha
    )


def topk_distillation(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, k: int, alpha: float, add_tail: bool = True
) -> torch.Tensor:
    """Per-position generalized JSD on the student's top-k tokens (+ a tail bucket)."""
    student_logits, teacher_logits = student_logits.float(), teacher_logits.float()
    k = min(k, student_logits.shape[-1])
    top_s, idx = torch.topk(student_logits, k, dim=-1)
    s = top_s - torch.logsumexp(student_logits, -1, keepdim=True)
    t = torch.gather(teacher_logits, -1, idx) - torch.logsumexp(teacher_logits, -1, keepdim=True)
    if add_tail:
        s, t = add_tail_bucket(s), add_tail_bucket(t)
    else:
        s = s - torch.logsumexp(s, -1, keepdim=True)
        t = t - torch.logsumexp(t, -1, keepdim=True)
    return generalized_jsd(s, t, alpha)


def token_logprobs(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[ids] (float32), without materialising the full log-softmax twice."""
    logits = logits.float()
    return torch.gather(logits, -1, ids.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, -1)


def sampled_token_distillation(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, ids: torch.Tensor
) -> torch.Tensor:
    """Per-position reverse-KL surrogate on the generated tokens."""
    s = token_logprobs(student_logits, ids)
    t = token_logprobs(teacher_logits, ids).detach()
    return (s - t).detach() * s


def importance_weights(
    student_logp: torch.Tensor, old_logp: torch.Tensor, *, clip: float | None, coef: float = 1.0
) -> torch.Tensor:
    """``min(pi/pi_old, clip) ** coef`` per token, without gradient (coef 0 = no correction).

    ``clip=None`` here means an unclipped ratio; whether to weight at all is the caller's
    decision (the rich-feedback trainer, like the references, does not weight when its
    ``is_clip`` is None).
    """
    log_ratio = (student_logp.detach() - old_logp.detach()).clamp(-20.0, 20.0)
    ratio = log_ratio.exp()
    if clip is not None:
        ratio = ratio.clamp(max=clip)
    return ratio**coef


def masked_sequence_mean(per_token: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over sequences of each sequence's mean over its masked positions.

    Sequences with an empty mask contribute zero (and still count in the mean), matching
    how a masked-out sample simply gives no signal.
    """
    mask = mask.to(per_token.dtype)
    per_seq = (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
    return per_seq.mean()


def masked_token_mean(per_token: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over every masked position of the batch: ``sum(loss * mask) / max(sum(mask), 1)``.

    Each active token weighs the same, wherever it is; rows with an empty mask (rollouts
    without a teacher) neither add to the numerator nor to the count. This is how
    lasgroup/SDPO and sdpo-rl aggregate the self-distillation loss ("token-mean").
    """
    mask = mask.to(per_token.dtype)
    return (per_token * mask).sum() / mask.sum().clamp(min=1.0)


LOSS_AGGREGATIONS = ("token_mean", "sequence_mean_trl")


def aggregate_distillation_loss(per_token: torch.Tensor, mask: torch.Tensor, how: str = "token_mean") -> torch.Tensor:
    """The batch loss from per-token losses: ``token_mean`` (the references) or ``sequence_mean_trl``
    (TRL's: the mean over all rows of each row's token mean, empty rows counting as zero)."""
    if how == "token_mean":
        return masked_token_mean(per_token, mask)
    if how == "sequence_mean_trl":
        return masked_sequence_mean(per_token, mask)
    raise ValueError(f"loss_aggregation must be one of {LOSS_AGGREGATIONS}, got {how!r}")


# ---------------------------------------------------------------------------
# Semiparametric preference optimization (SPO)
#
# For a pair (y0, y1) with z = 1 when y1 is preferred, the index is
#     t = [log pi(y1|x) - log pi_ref(y1|x)] - [log pi(y0|x) - log pi_ref(y0|x)]
# (sequence log-probs summed over tokens; no beta in training) and the signed index
# s = (2z - 1) t. DPO:  -log sigmoid(s). Link-based methods (PSPO, OSPO): the
# cross-entropy of z under a link psi(t). RSPO: the logistic loss on pairs of signed
# indices in the batch, -log sigmoid(s_i + s_j): by default all B^2 ordered pairs with
# i = j included (as causalml/spo), or the i < j pairs only (pairs="upper").
# ---------------------------------------------------------------------------


def mixture_link(u: torch.Tensor, *, shift: float = 0.0, temperature: float = 1.0) -> torch.Tensor:
    """Psi(u) = 1/2 sigmoid(u/tau - s) + 1/2 sigmoid(u/tau + s): symmetric, increasing, logistic at s = 0."""
    return 0.5 * torch.sigmoid(u / temperature - shift) + 0.5 * torch.sigmoid(u / temperature + shift)


def signed_index(t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    return (2 * z.to(t.dtype) - 1) * t


def dpo_loss(t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Mean of -log sigmoid((2z - 1) t)."""
    return -torch.nn.functional.logsigmoid(signed_index(t, z)).mean()


def link_cross_entropy(psi: torch.Tensor, z: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Mean of -[z log psi + (1 - z) log(1 - psi)], psi clamped to [eps, 1 - eps]."""
    psi = psi.clamp(eps, 1 - eps)
    z = z.to(psi.dtype)
    return -(z * torch.log(psi) + (1 - z) * torch.log1p(-psi)).mean()


RSPO_PAIRS = ("all", "upper")


def rspo_loss(t: torch.Tensor, z: torch.Tensor, pairs: str = "all") -> torch.Tensor:
    """Mean of -log sigmoid(s_i + s_j) over pairs of the batch's signed indices.

    ``pairs="all"`` (default, the reference's): all B^2 ordered pairs, i = j included
    (each diagonal term is -log sigmoid(2 s_i)); ``"upper"``: the pairs i < j only
    (needs at least 2 pairs).
    """
    if pairs not in RSPO_PAIRS:
        raise ValueError(f"rspo pairs must be one of {', '.join(RSPO_PAIRS)}, got {pairs!r}")
    s = signed_index(t, z)
    if pairs == "all":
        return -torch.nn.functional.logsigmoid(s[:, None] + s[None, :]).mean()
    n = s.shape[0]
    if n < 2:
        raise ValueError("the RSPO loss with pairs='upper' needs at least 2 pairs in a batch")
    i, j = torch.triu_indices(n, n, offset=1, device=s.device)
    return -torch.nn.functional.logsigmoid(s[i] + s[j]).mean()


# ---------------------------------------------------------------------------
# Hybrids of GRPO and self-distillation (our options of SDPOTrainer; off by default)
#
# Per rollout i and completion position t: g_it is the clipped policy-gradient (GRPO)
# term with the group-normalised advantage A_i, d_it the self-distillation term,
# m_it the completion mask and a_i = 1 when the rollout has a teacher (a peer
# demonstration and/or feedback), else 0. All three losses are token means:
#
#   lambda-mix   sum_it m_it [lam g_it + (1 - lam) a_i q_i d_it]  /  sum_it m_it
#   routing      sum_it m_it [c_i g_it + (1 - c_i) a_i q_i w_it d_it]
#                                        / sum_it m_it [c_i + (1 - c_i) a_i]
#                (SRPO, arXiv 2604.02288: c_i = 1 for a successful rollout; its
#                 entropy weight w_it = exp(-beta H_t), H_t the teacher's entropy)
#   pass-rate    sum_it m_it a_i q_i d_it  /  sum_it m_it a_i
#                (SC-SDPO, arXiv 2605.27765: q_i from the group's pass rate p,
#                 sqrt(p (1 - p)), divided by the mean over the batch's rollouts
#                 that have a teacher so the loss keeps its scale)
#
# q_i = 1 and w_it = 1 where pass-rate weighting / entropy weighting are off.
# ---------------------------------------------------------------------------


def clipped_policy_gradient(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, *, eps_low: float = 0.2,
    eps_high: float = 0.2,
) -> torch.Tensor:
    """GRPO's per-token term ``-min(r A, clip(r, 1 - eps_low, 1 + eps_high) A)``, ``r = exp(logp - old)``.

    ``advantages`` is one value per rollout (shape ``(B,)``) or per token (``(B, T)``);
    on-policy (``old = stopgrad(logp)``) the gradient is ``-A grad logp``.
    """
    adv = advantages.to(logp.dtype)
    if adv.dim() == 1:
        adv = adv.unsqueeze(1)
    ratio = torch.exp(logp - old_logp.detach())
    return -torch.minimum(ratio * adv, ratio.clamp(1 - eps_low, 1 + eps_high) * adv)


def teacher_entropy(teacher_logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of the teacher's full next-token distribution per position, no gradient."""
    logp = torch.log_softmax(teacher_logits.detach().float(), -1)
    return -(logp.exp() * logp).sum(-1)


def entropy_weights(entropy: torch.Tensor, beta: float) -> torch.Tensor:
    """SRPO's per-token weight of a distillation target: ``exp(-beta H)`` (beta 0: all ones)."""
    return torch.exp(-beta * entropy.detach())


def group_pass_rates(rewards: Sequence[float], num_generations: int, threshold: float) -> list[float]:
    """Per rollout: the share of its group (consecutive blocks of ``num_generations``) with reward >= threshold.

    A NaN reward counts as a failure.
    """
    n = len(rewards)
    if num_generations < 1 or n % num_generations:
        raise ValueError(f"{n} rollouts do not split into groups of {num_generations}")
    ok = [not math.isnan(float(r)) and float(r) >= threshold for r in rewards]
    out = []
    for start in range(0, n, num_generations):
        p = sum(ok[start : start + num_generations]) / num_generations
        out.extend([p] * num_generations)
    return out


PASS_RATE_NORMALIZATIONS = ("batch_mean", "none")


def pass_rate_weights(pass_rates: torch.Tensor, active: torch.Tensor, normalization: str = "batch_mean") -> torch.Tensor:
    """SC-SDPO's per-rollout weight ``sqrt(p (1 - p))`` of the self-distillation loss.

    ``batch_mean`` divides by the mean weight over the rollouts with a teacher (``active``),
    so the weights average 1 there (all zero stays zero); ``none`` keeps the raw values.
    """
    if normalization not in PASS_RATE_NORMALIZATIONS:
        raise ValueError(f"pass_rate_normalization must be one of {PASS_RATE_NORMALIZATIONS}, got {normalization!r}")
    p = pass_rates.detach().float().clamp(0.0, 1.0)
    w = torch.sqrt(p * (1 - p))
    if normalization == "batch_mean":
        act = active.to(w.dtype)
        mean = (w * act).sum() / act.sum().clamp(min=1.0)
        w = w / mean if mean > 0 else torch.zeros_like(w)
    return w


def _rows(x: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    if x is None:
        return torch.ones(like.shape[0], dtype=like.dtype, device=like.device)
    return x.to(like.dtype)


def lambda_mix_loss(
    pg: torch.Tensor, sd: torch.Tensor, mask: torch.Tensor, active: torch.Tensor, lam: float,
    row_weights: torch.Tensor | None = None, token_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """``lam * GRPO + (1 - lam) * SDPO`` per token on every rollout, token mean over the completions."""
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lambda must be in [0, 1], got {lam}")
    m = mask.to(pg.dtype)
    a = active.to(pg.dtype) * _rows(row_weights, pg)
    tw = token_weights.to(pg.dtype) if token_weights is not None else 1.0
    per_token = lam * pg + (1 - lam) * a.unsqueeze(1) * tw * sd
    return (per_token * m).sum() / m.sum().clamp(min=1.0)


def routed_loss(
    pg: torch.Tensor, sd: torch.Tensor, mask: torch.Tensor, active: torch.Tensor, success: torch.Tensor,
    row_weights: torch.Tensor | None = None, token_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """SRPO: successful rollouts get the GRPO term, failed ones with a teacher the (weighted) distillation term."""
    m = mask.to(pg.dtype)
    c = success.to(pg.dtype).unsqueeze(1)
    a = active.to(pg.dtype).unsqueeze(1)
    q = _rows(row_weights, pg).unsqueeze(1)
    tw = token_weights.to(pg.dtype) if token_weights is not None else 1.0
    per_token = c * pg + (1 - c) * a * q * tw * sd
    count = (m * (c + (1 - c) * a)).sum()
    return (per_token * m).sum() / count.clamp(min=1.0)


def pass_rate_weighted_loss(
    sd: torch.Tensor, mask: torch.Tensor, active: torch.Tensor, row_weights: torch.Tensor
) -> torch.Tensor:
    """SC-SDPO: each rollout's distillation terms times its question's weight, token mean over active tokens."""
    m = mask.to(sd.dtype) * active.to(sd.dtype).unsqueeze(1)
    return (sd * row_weights.to(sd.dtype).unsqueeze(1) * m).sum() / m.sum().clamp(min=1.0)
