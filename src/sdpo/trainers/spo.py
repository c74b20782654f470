"""Semiparametric preference optimization: DPO and three link-agnostic variants.

All four methods see the same index per preference pair,
``t = [log pi(y1) - log pi_ref(y1)] - [log pi(y0) - log pi_ref(y0)]`` (sequence
log-probs, no beta), and differ in the link ``P(z = 1 | t)`` they assume. The defaults
are those of causalml/spo (``ultrafeedback/src/spo/training``); see docs/FIDELITY.md.

- ``dpo``: the logistic link, loss ``-log sigmoid((2z - 1) t)``.
- ``pspo`` (profiled): an isotonic fit (PAVA) of ``z`` on ``t`` over the *whole*
  preference set with the current weights, at step 0 and every ``refit_every`` steps
  (the trainer supplies the indices through ``refit_data``). The fitted blocks
  ``(x_k, y_k)`` (``x_k`` the block's mid-point, ``y_k`` clipped to
  ``[link_clip, 1 - link_clip]``) give the soft link
  ``psi(t) = sum_k softmax_k(-|t - x_k| / soft_tau) y_k``, blended
  ``blend * psi + (1 - blend) * sigmoid(t)``; cross-entropy of ``z``.
  Our earlier variant (``pspo_fit="memory"``, ``pspo_link="linear"``): scikit-learn's
  isotonic fit on a FIFO memory of recent (stale) indices, linear interpolation.
- ``ospo`` (orthogonalized): a Gaussian Nadaraya-Watson estimate of the link from a
  memory of the ``memory_size`` *earlier* pairs (bandwidth ``bandwidth * (std + 1e-6)``
  of the memory's indices), 0.5 while the memory is empty, clipped to
  ``[link_clip, 1 - link_clip]``, the same blend and cross-entropy. After training, the
  sign of cov(t, z) over the data (:func:`index_sign`) is stored with the model and the
  evaluation uses ``sign / beta``. ``ospo_orient=True`` (ours) also orients the index by
  that sign in memory during training.
- ``rspo`` (ranking): ``-log sigmoid(s_i + s_j)`` averaged over all ``B^2`` ordered pairs
  of the batch's signed indices, ``i = j`` included (``rspo_pairs="upper"``: i < j).

:class:`SPOObjective` holds the state (memory, fitted link) and is shared by the
synthetic benchmark (:mod:`sdpo.spo.synthetic`) and the LLM trainer
(:mod:`sdpo.spo.pipeline`).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from .. import losses

METHODS = ("dpo", "pspo", "ospo", "rspo")
PSPO_FITS = ("dataset", "memory")
PSPO_LINKS = ("soft", "linear")
BANDWIDTH_RULES = ("std", "fixed", "silverman")


def interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear interpolation (constant outside ``xp``), differentiable in ``x``."""
    if xp.numel() == 1:
        return fp.expand_as(x).clone()
    idx = torch.searchsorted(xp, x.detach().contiguous()).clamp(1, xp.numel() - 1)
    x0, x1, y0, y1 = xp[idx - 1], xp[idx], fp[idx - 1], fp[idx]
    w = ((x - x0) / (x1 - x0).clamp(min=1e-12)).clamp(0.0, 1.0)
    return y0 + w * (y1 - y0)


def pava(t: np.ndarray, z: np.ndarray, eps: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """Pool-adjacent-violators on the points sorted by ``t`` (numpy's default argsort, one
    block per point, ties not pooled first): adjacent blocks are merged while the left mean
    exceeds the right one by more than ``eps``. Returns each block's mid-point
    ``(min t + max t) / 2`` and its mean ``z`` (non-decreasing up to ``eps``)."""
    t = np.asarray(t, dtype=np.float64).ravel()
    z = np.asarray(z, dtype=np.float64).ravel()
    if t.size == 0 or t.size != z.size:
        raise ValueError(f"pava needs matching non-empty t and z, got {t.size} and {z.size} values")
    order = np.argsort(t)
    lo: list[float] = []
    hi: list[float] = []
    mean: list[float] = []
    count: list[int] = []
    for ti, zi in zip(t[order].tolist(), z[order].tolist()):
        lo.append(ti), hi.append(ti), mean.append(zi), count.append(1)
        while len(mean) > 1 and mean[-2] > mean[-1] + eps:
            m2, c2, h2 = mean.pop(), count.pop(), hi.pop()
            lo.pop()
            c1 = count[-1]
            mean[-1] = (mean[-1] * c1 + m2 * c2) / (c1 + c2)
            count[-1] = c1 + c2
            hi[-1] = h2
    x_hat = 0.5 * (np.asarray(lo) + np.asarray(hi))
    return x_hat, np.asarray(mean)


def soft_step_link(t: torch.Tensor, x_hat: torch.Tensor, y_hat: torch.Tensor, tau: float) -> torch.Tensor:
    """``sum_k softmax_k(-|t - x_k| / tau) y_k``: a smooth, differentiable read-out of step values."""
    w = torch.softmax(-(t[:, None] - x_hat[None, :]).abs() / tau, dim=1)
    return (w * y_hat[None, :]).sum(1)


class SoftIsotonicLink:
    """PAVA fit of z on t, block values clipped, read out with :func:`soft_step_link` (the reference's PSPO link)."""

    def __init__(self, tau: float = 0.1, clip: float = 1e-4, eps: float = 1e-6):
        self.tau, self.clip, self.eps = tau, clip, eps
        self.xp: np.ndarray | None = None
        self.fp: np.ndarray | None = None

    @property
    def fitted(self) -> bool:
        return self.xp is not None

    def fit(self, t: np.ndarray, z: np.ndarray) -> "SoftIsotonicLink":
        x_hat, y_hat = pava(t, z, self.eps)
        self.xp, self.fp = x_hat, np.clip(y_hat, self.clip, 1 - self.clip)
        return self

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        if not self.fitted:
            raise RuntimeError("SoftIsotonicLink used before fit()")
        xp = torch.as_tensor(self.xp, dtype=t.dtype, device=t.device)
        fp = torch.as_tensor(self.fp, dtype=t.dtype, device=t.device)
        return soft_step_link(t, xp, fp, self.tau)


class IsotonicLink:
    """Our earlier PSPO link: scikit-learn isotonic fit, linear interpolation, optional Gaussian smoothing."""

    def __init__(self, smoothing: float = 0.0, grid: int = 257, clip: float = 0.0):
        self.smoothing = smoothing
        self.grid = grid
        self.clip = clip
        self.xp: np.ndarray | None = None
        self.fp: np.ndarray | None = None

    @property
    def fitted(self) -> bool:
        return self.xp is not None

    def fit(self, t: np.ndarray, z: np.ndarray) -> "IsotonicLink":
        from sklearn.isotonic import IsotonicRegression

        t, z = np.asarray(t, dtype=np.float64), np.asarray(z, dtype=np.float64)
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip").fit(t, z)
        xp, fp = np.asarray(iso.X_thresholds_, dtype=np.float64), np.asarray(iso.y_thresholds_, dtype=np.float64)
        if self.smoothing > 0 and xp.size > 1:
            h = self.smoothing
            grid = np.linspace(xp[0] - 3 * h, xp[-1] + 3 * h, self.grid)
            offsets = np.linspace(-3 * h, 3 * h, 61)
            weights = np.exp(-0.5 * (offsets / h) ** 2)
            weights /= weights.sum()
            fp = sum(w * np.interp(grid - o, xp, fp) for o, w in zip(offsets, weights))
            xp = grid
        fp = np.maximum.accumulate(fp)  # guard exact monotonicity against rounding
        if self.clip > 0:
            fp = np.clip(fp, self.clip, 1 - self.clip)
        self.xp, self.fp = xp, fp
        return self

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        if not self.fitted:
            raise RuntimeError("IsotonicLink used before fit()")
        xp = torch.as_tensor(self.xp, dtype=t.dtype, device=t.device)
        fp = torch.as_tensor(self.fp, dtype=t.dtype, device=t.device)
        return interp(t, xp, fp)


def index_sign(t, z) -> float:
    """+1 when cov(t, z) >= 0 (population covariance), else -1: the orientation OSPO stores with the model."""
    t = np.asarray(t, dtype=np.float64).ravel()
    z = np.asarray(z, dtype=np.float64).ravel()
    if t.size == 0:
        return 1.0
    cov = float(np.mean((t - t.mean()) * (z - z.mean())))
    return 1.0 if cov >= 0 else -1.0


class KernelLink:
    """Gaussian Nadaraya-Watson link from a FIFO memory of (t, z).

    ``g(t) = sum_m w_m z_m / (sum_m w_m + 1e-6)``, ``w_m = exp(-((t - t_m) / h)^2 / 2)``,
    clipped to ``[clip, 1 - clip]``; 0.5 with an empty memory. The bandwidth ``h``:
    ``rule="std"`` (reference) ``bandwidth * (std(t_m) + 1e-6)`` (population std);
    ``"fixed"``: ``bandwidth``; ``"silverman"``: ``1.06 std n^(-1/5)``.
    """

    def __init__(self, memory_size: int = 4096, bandwidth: float = 0.5, rule: str = "std", clip: float = 1e-4):
        if rule not in BANDWIDTH_RULES:
            raise ValueError(f"bandwidth rule must be one of {', '.join(BANDWIDTH_RULES)}, got {rule!r}")
        self.t: deque = deque(maxlen=memory_size)
        self.z: deque = deque(maxlen=memory_size)
        self.bandwidth, self.rule, self.clip = bandwidth, rule, clip

    def __len__(self):
        return len(self.t)

    def add(self, t, z) -> None:
        self.t.extend(np.asarray(t, dtype=np.float64).ravel().tolist())
        self.z.extend(np.asarray(z, dtype=np.float64).ravel().tolist())

    def current_bandwidth(self) -> float:
        t = np.asarray(self.t)
        std = float(t.std()) if t.size else 0.0
        if self.rule == "fixed":
            return float(self.bandwidth)
        if self.rule == "std":
            return float(self.bandwidth) * (std + 1e-6)
        return max(1.06 * max(std, 1e-3) * max(t.size, 1) ** (-0.2), 1e-3)  # Silverman's rule

    def orientation(self) -> float:
        return index_sign(np.asarray(self.t), np.asarray(self.z)) if len(self.t) >= 2 else 1.0

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        if not self.t:
            return torch.full_like(t, 0.5) + 0.0 * t
        mt = torch.as_tensor(np.asarray(self.t), dtype=t.dtype, device=t.device)
        mz = torch.as_tensor(np.asarray(self.z), dtype=t.dtype, device=t.device)
        u = (t[:, None] - mt[None, :]) / self.current_bandwidth()
        w = torch.exp(-0.5 * u * u)
        g = (w * mz[None, :]).sum(1) / (w.sum(1) + 1e-6)
        return g.clamp(self.clip, 1 - self.clip)


@dataclass
class SPOOptions:
    method: str = "dpo"
    refit_every: int = 50
    """PSPO: steps (loss calls, i.e. micro-batches) between isotonic refits; the first fit is at step 0."""
    pspo_fit: str = "dataset"
    """PSPO: 'dataset' refits on every pair with the current weights (reference; needs refit_data);
    'memory' (ours) on the FIFO memory of indices seen in earlier steps."""
    pspo_link: str = "soft"
    """PSPO: 'soft' PAVA blocks read out by a softmax over distances (reference); 'linear' (ours):
    scikit-learn isotonic fit with linear interpolation (and optional smoothing)."""
    soft_tau: float = 0.1
    """PSPO soft link temperature."""
    link_clip: float = 1e-4
    """PSPO block values / OSPO kernel estimate are clipped to [link_clip, 1 - link_clip]."""
    smoothing: float = 0.0
    """PSPO 'linear' link: Gaussian smoothing bandwidth (0: linear interpolation only)."""
    blend: float = 0.95
    """Weight of the estimated link; the rest is the logistic sigmoid(t)."""
    memory_size: int = 4096
    """OSPO (and PSPO with pspo_fit='memory'): how many earlier (t, z) pairs are remembered."""
    bandwidth: float = 0.5
    """OSPO kernel bandwidth: a multiple of the memory's std (bandwidth_rule 'std'), or absolute ('fixed')."""
    bandwidth_rule: str = "std"
    """OSPO: 'std' (reference), 'fixed', or 'silverman' (ours before; ignores bandwidth)."""
    ospo_orient: bool = False
    """OSPO (ours): orient the index by the sign of cov(t, z) in memory during training."""
    min_fit_points: int = 0
    """OSPO / memory-PSPO: use the logistic (DPO) loss until the memory holds this many pairs
    (0: reference behaviour, OSPO uses the constant link 0.5 while the memory is empty)."""
    rspo_pairs: str = "all"
    """RSPO: 'all' B^2 ordered pairs with i = j (reference), or 'upper' (i < j, ours before)."""

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if not 0.0 <= self.blend <= 1.0:
            raise ValueError(f"blend must be in [0, 1], got {self.blend}")
        if self.refit_every < 1 or self.memory_size < 1:
            raise ValueError("refit_every and memory_size must be >= 1")
        if self.bandwidth is not None and self.bandwidth <= 0:
            raise ValueError(f"bandwidth must be > 0, got {self.bandwidth}")
        for name, value, allowed in (("pspo_fit", self.pspo_fit, PSPO_FITS), ("pspo_link", self.pspo_link, PSPO_LINKS),
                                     ("bandwidth_rule", self.bandwidth_rule, BANDWIDTH_RULES),
                                     ("rspo_pairs", self.rspo_pairs, losses.RSPO_PAIRS)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        if self.soft_tau <= 0:
            raise ValueError(f"soft_tau must be > 0, got {self.soft_tau}")
        if not 0.0 <= self.link_clip < 0.5:
            raise ValueError(f"link_clip must be in [0, 0.5), got {self.link_clip}")


@dataclass
class SPOObjective:
    """The loss of one method, with the link state it carries between steps.

    ``refit_data`` (PSPO with ``pspo_fit='dataset'``): a callable returning ``(t, z)`` for
    every preference pair under the current weights, without gradient.
    """

    options: SPOOptions
    refit_data: Callable[[], tuple] | None = None
    step: int = 0
    memory: KernelLink = field(init=False)
    isotonic: object = field(init=False)
    refits: list = field(default_factory=list)
    """Steps at which the PSPO link was (re)fitted."""

    def __post_init__(self):
        o = self.options
        self.memory = KernelLink(o.memory_size, o.bandwidth, o.bandwidth_rule, o.link_clip)
        if o.pspo_link == "soft":
            self.isotonic = SoftIsotonicLink(o.soft_tau, o.link_clip)
        else:
            self.isotonic = IsotonicLink(o.smoothing, clip=o.link_clip)
        if o.method == "pspo" and o.pspo_fit == "dataset" and self.refit_data is None:
            raise ValueError("pspo with pspo_fit='dataset' needs refit_data (the indices of all pairs)")

    def _blend(self, psi: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.options.blend * psi + (1 - self.options.blend) * torch.sigmoid(t)

    def link(self, t: torch.Tensor) -> torch.Tensor | None:
        """The current link P(z=1 | t) (None while the logistic one is used)."""
        o = self.options
        if o.method == "pspo" and self.isotonic.fitted:
            return self._blend(self.isotonic(t), t)
        if o.method == "ospo" and len(self.memory) >= o.min_fit_points:
            sign = self.memory.orientation() if o.ospo_orient else 1.0
            return self._blend(self.memory(sign * t), sign * t)
        return None

    def _refit_pspo(self) -> None:
        o = self.options
        if o.pspo_fit == "dataset":
            if not self.isotonic.fitted or self.step % o.refit_every == 0:
                t_all, z_all = self.refit_data()
                self.isotonic.fit(np.asarray(t_all, dtype=np.float64), np.asarray(z_all, dtype=np.float64))
                self.refits.append(self.step)
        elif self.step % o.refit_every == 0 and len(self.memory) >= max(o.min_fit_points, 2):
            self.isotonic.fit(np.asarray(self.memory.t), np.asarray(self.memory.z))
            self.refits.append(self.step)

    def __call__(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        o = self.options
        if o.method == "dpo":
            loss = losses.dpo_loss(t, z)
        elif o.method == "rspo":
            loss = losses.rspo_loss(t, z, pairs=o.rspo_pairs)
        else:
            if o.method == "pspo":
                self._refit_pspo()
            psi = self.link(t)
            loss = losses.dpo_loss(t, z) if psi is None else losses.link_cross_entropy(psi, z)
            if o.method == "ospo" or o.pspo_fit == "memory":
                self.memory.add(t.detach().cpu().double().numpy(), z.detach().cpu().double().numpy())
        self.step += 1
        return loss


# ---------------------------------------------------------------------------
# LLM training on preference pairs
# ---------------------------------------------------------------------------


def sequence_logprob(model, prompt_ids: list[list[int]], response_ids: list[list[int]], pad_id: int) -> torch.Tensor:
    """Sum over response tokens of log p(y_t | x, y_<t), for a right-padded batch."""
    device = next(model.parameters()).device
    seqs = [p + r for p, r in zip(prompt_ids, response_ids)]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    target = torch.zeros((len(seqs), width), dtype=torch.bool)
    for i, (p, s) in enumerate(zip(prompt_ids, seqs)):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
        target[i, len(p) : len(s)] = True
    ids, mask, target = ids.to(device), mask.to(device), target.to(device)
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1].float()
    tok = ids[:, 1:]
    lp = torch.gather(logits, -1, tok.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, -1)
    return (lp * target[:, 1:]).sum(-1)


def pair_index(model, ref_model, batch, pad_id) -> torch.Tensor:
    """t for a batch of pairs: dicts with prompt_ids, y0_ids, y1_ids."""
    prompts = [b["prompt_ids"] for b in batch]
    lp1 = sequence_logprob(model, prompts, [b["y1_ids"] for b in batch], pad_id)
    lp0 = sequence_logprob(model, prompts, [b["y0_ids"] for b in batch], pad_id)
    with torch.no_grad():
        if ref_model is None:  # LoRA: the base model is the reference
            with model.disable_adapter():
                r1 = sequence_logprob(model, prompts, [b["y1_ids"] for b in batch], pad_id)
                r0 = sequence_logprob(model, prompts, [b["y0_ids"] for b in batch], pad_id)
        else:
            r1 = sequence_logprob(ref_model, prompts, [b["y1_ids"] for b in batch], pad_id)
            r0 = sequence_logprob(ref_model, prompts, [b["y0_ids"] for b in batch], pad_id)
    return (lp1 - r1) - (lp0 - r0)

