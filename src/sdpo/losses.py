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
    if centering == "sequence" and valid.any():
        adv = adv - adv[valid].mean()
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
) -> tuple[torch.Tensor, dict[str, float]]:
    """The SDPO policy-gradient loss of a batch, and statistics of its signal.

    With ``old`` (log-probs of the policy that generated the responses) and
    ``ppo_clip`` the per-token term is PPO's clipped surrogate
    ``-min(r A, clip(r, 1-eps, 1+eps) A)`` with ``r = exp(s - old)``; on-policy
    (``old = stopgrad(s)``, r = 1) its gradient equals the plain one.
    """
    if kl_coef and reference is None:
        raise ValueError("kl_coef > 0 needs reference log-probs")
    losses, all_adv, kls = [], [], []
    for i, (s, q) in enumerate(zip(student, teacher)):
        adv, valid = sequence_advantages(s, q, ignore_first=ignore_first, centering=centering, clip=clip)
        if not valid.any():
            continue
        n = valid.sum()
        if old is not None and ppo_clip is not None:
            ratio = torch.exp(s[valid].float() - old[i].detach().float()[valid])
            surrogate = torch.minimum(ratio * adv[valid], ratio.clamp(1 - ppo_clip, 1 + ppo_clip) * adv[valid])
            loss = -surrogate.sum() / n
        else:
            loss = -(adv[valid] * s[valid].float()).sum() / n
        if kl_coef:
            log_ratio = reference[i].detach().float()[valid] - s[valid].float()
            kl = (torch.exp(log_ratio) - log_ratio - 1).mean()  # k3 estimator of KL(student || reference)
            loss = loss + kl_coef * kl
            kls.append(kl.detach())
        losses.append(loss)
        all_adv.append((q.detach() - s.detach()).float()[valid])
    if not losses:
        zero = sum(s.sum() for s in student) * 0.0  # keeps the graph connected for distributed backward
        return zero, {"sequences": 0.0}
    signal = torch.cat(all_adv)
    stats = {
        "signal_mean": signal.mean().item(),
        "signal_abs_mean": signal.abs().mean().item(),
        "signal_std": signal.std().item() if signal.numel() > 1 else 0.0,
        "response_tokens": float(signal.numel()),
        "sequences": float(len(losses)),
    }
    if kls:
        stats["kl"] = torch.stack(kls).mean().item()
    return torch.stack(losses).mean(), stats
