"""Semiparametric preference optimization: DPO and three link-agnostic variants.

All four methods see the same index per preference pair,
``t = [log pi(y1) - log pi_ref(y1)] - [log pi(y0) - log pi_ref(y0)]`` (sequence
log-probs, no beta), and differ in the link ``P(z = 1 | t)`` they assume:

- ``dpo``: the logistic link, loss ``-log sigmoid((2z - 1) t)``.
- ``pspo`` (profiled): every ``refit_every`` steps an isotonic regression of ``z`` on
  ``t`` (scikit-learn's ``IsotonicRegression``) over a FIFO memory of recent pairs,
  made continuous by linear interpolation and, with ``smoothing > 0``, a Gaussian
  convolution (both keep it monotone), blended ``blend * fit + (1 - blend) *
  sigmoid(t)`` (the logistic part keeps a gradient where the fit is flat);
  cross-entropy of ``z``.
- ``ospo`` (orthogonalized): a Nadaraya-Watson estimate of the link (Gaussian kernel,
  ``bandwidth`` or Silverman's rule) from the memory of *earlier* batches, so a
  pair's own label never shapes its link; the same blend and cross-entropy, with
  the index oriented by the sign of cov(t, z) in memory.
- ``rspo`` (ranking): the logistic loss on every pair of signed indices in the
  batch, ``-log sigmoid(s_i + s_j)``; it only needs the link to be symmetric.

:class:`SPOObjective` holds the state (memory, fitted link) and is shared by the
synthetic benchmark (:mod:`sdpo.spo.synthetic`) and the LLM trainer below.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch

from .. import losses

METHODS = ("dpo", "pspo", "ospo", "rspo")


def interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear interpolation (constant outside ``xp``), differentiable in ``x``."""
    if xp.numel() == 1:
        return fp.expand_as(x).clone()
    idx = torch.searchsorted(xp, x.detach().contiguous()).clamp(1, xp.numel() - 1)
    x0, x1, y0, y1 = xp[idx - 1], xp[idx], fp[idx - 1], fp[idx]
    w = ((x - x0) / (x1 - x0).clamp(min=1e-12)).clamp(0.0, 1.0)
    return y0 + w * (y1 - y0)


class IsotonicLink:
    """Monotone link estimate: isotonic fit, linear interpolation, optional Gaussian smoothing."""

    def __init__(self, smoothing: float = 0.0, grid: int = 257):
        self.smoothing = smoothing
        self.grid = grid
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
        self.xp, self.fp = xp, np.maximum.accumulate(fp)  # guard exact monotonicity against rounding
        return self

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        if not self.fitted:
            raise RuntimeError("IsotonicLink used before fit()")
        xp = torch.as_tensor(self.xp, dtype=t.dtype, device=t.device)
        fp = torch.as_tensor(self.fp, dtype=t.dtype, device=t.device)
        return interp(t, xp, fp)


class KernelLink:
    """Nadaraya-Watson link from a FIFO memory of (t, z), Gaussian kernel."""

    def __init__(self, memory_size: int = 4096, bandwidth: float | None = None):
        self.t: deque = deque(maxlen=memory_size)
        self.z: deque = deque(maxlen=memory_size)
        self.bandwidth = bandwidth

    def __len__(self):
        return len(self.t)

    def add(self, t, z) -> None:
        self.t.extend(np.asarray(t, dtype=np.float64).ravel().tolist())
        self.z.extend(np.asarray(z, dtype=np.float64).ravel().tolist())

    def current_bandwidth(self) -> float:
        if self.bandwidth is not None:
            return self.bandwidth
        t = np.asarray(self.t)
        spread = float(t.std()) if t.size > 1 else 1.0
        return max(1.06 * max(spread, 1e-3) * t.size ** (-0.2), 1e-3)  # Silverman's rule

    def orientation(self) -> float:
        if len(self.t) < 2:
            return 1.0
        t, z = np.asarray(self.t), np.asarray(self.z)
        cov = float(np.mean((t - t.mean()) * (z - z.mean())))
        return -1.0 if cov < 0 else 1.0

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        if not self.t:
            raise RuntimeError("KernelLink used with an empty memory")
        mt = torch.as_tensor(np.asarray(self.t), dtype=t.dtype, device=t.device)
        mz = torch.as_tensor(np.asarray(self.z), dtype=t.dtype, device=t.device)
        h = self.current_bandwidth()
        logw = -0.5 * ((t[:, None] - mt[None, :]) / h) ** 2
        w = torch.softmax(logw, dim=1)  # normalised kernel weights, stable for far-away t
        return (w * mz[None, :]).sum(1)


@dataclass
class SPOOptions:
    method: str = "dpo"
    refit_every: int = 50
    """PSPO: steps between isotonic refits."""
    smoothing: float = 0.0
    """PSPO: Gaussian smoothing bandwidth of the isotonic link (0: linear interpolation only)."""
    blend: float = 0.95
    """Weight of the estimated link; the rest is the logistic sigmoid(t)."""
    memory_size: int = 4096
    """PSPO/OSPO: how many recent (t, z) pairs the link is estimated from."""
    bandwidth: float | None = None
    """OSPO: kernel bandwidth (None: Silverman's rule on the memory)."""
    min_fit_points: int = 32
    """PSPO/OSPO use the logistic link until the memory holds this many pairs."""

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if not 0.0 <= self.blend <= 1.0:
            raise ValueError(f"blend must be in [0, 1], got {self.blend}")
        if self.refit_every < 1 or self.memory_size < 1:
            raise ValueError("refit_every and memory_size must be >= 1")
        if self.bandwidth is not None and self.bandwidth <= 0:
            raise ValueError("bandwidth must be > 0")


@dataclass
class SPOObjective:
    """The loss of one method, with the link state it carries between steps."""

    options: SPOOptions
    step: int = 0
    memory: KernelLink = field(init=False)
    isotonic: IsotonicLink = field(init=False)
    stats: dict = field(default_factory=dict)

    def __post_init__(self):
        self.memory = KernelLink(self.options.memory_size, self.options.bandwidth)
        self.isotonic = IsotonicLink(self.options.smoothing)

    def link(self, t: torch.Tensor) -> torch.Tensor | None:
        """The current link P(z=1 | t) (None while the logistic one is used)."""
        o = self.options
        if o.method == "pspo" and self.isotonic.fitted:
            return o.blend * self.isotonic(t) + (1 - o.blend) * torch.sigmoid(t)
        if o.method == "ospo" and len(self.memory) >= o.min_fit_points:
            sign = self.memory.orientation()
            return o.blend * self.memory(sign * t) + (1 - o.blend) * torch.sigmoid(sign * t)
        return None

    def __call__(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        o = self.options
        if o.method == "dpo":
            loss = losses.dpo_loss(t, z)
        elif o.method == "rspo":
            loss = losses.rspo_loss(t, z)
        else:
            if o.method == "pspo" and self.step % o.refit_every == 0 and len(self.memory) >= o.min_fit_points:
                self.isotonic.fit(np.asarray(self.memory.t), np.asarray(self.memory.z))
            psi = self.link(t)
            loss = losses.dpo_loss(t, z) if psi is None else losses.link_cross_entropy(psi, z)
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

