"""Synthetic preference-optimization benchmarks with exact answers.

Two designs. ``design="reference"`` (:func:`run_reference`) is the paper's synthetic study
(causalml/spo ``synthetic/``): Gaussian contexts, an MLP policy class, a uniform reference,
the true reward ``nu log(pi*/pi_ref)`` of a random teacher MLP, and the training
procedures of that code for the four methods. ``design="ours"`` (:func:`run`, below) is
our tabular design, trained with :class:`sdpo.trainers.spo.SPOObjective`:

Contexts ``x`` (uniform) each have a few discrete actions; the reference policy is a
softmax of random logits and the true reward ``r(x, a)`` is random. A preference pair
draws ``y0, y1 ~ pi_ref(.|x)`` independently; the reward difference is divided by its
exact standard deviation under that sampling, and ``z ~ Bernoulli(Psi(diff))`` with
the shifted-logistic-mixture link ``Psi(u) = 1/2 sigmoid(u/tau - s) + 1/2 sigmoid(u/tau + s)``.

The policy is ``pi_theta(a|x) ∝ pi_ref(a|x) exp(theta[x, a])`` (theta = 0 is the
reference), trained with each method on the same pairs. For a scan of beta,
``pi_beta ∝ pi_ref^(1 - 1/beta) pi^(1/beta) = pi_ref exp(theta / beta)``, and both the
expected reward and ``KL(pi_beta || pi_ref)`` are exact sums. Reward at a KL budget
is read off that curve by interpolation; the best achievable reward at the budget
(``pi ∝ pi_ref exp(r / lambda)``) is the oracle.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..losses import mixture_link
from ..trainers.spo import METHODS, SPOObjective, SPOOptions


@dataclass
class SyntheticConfig:
    contexts: int = 20
    actions: int = 6
    n_pairs: int = 2000
    steps: int = 400
    batch_size: int = 128
    learning_rate: float = 0.05
    shifts: tuple[float, ...] = (0.0, 1.0, 2.0, 3.0)
    temperature: float = 1.0
    seeds: int | tuple[int, ...] = 5
    """A count (seeds 0..n-1) or the seeds themselves."""
    methods: tuple[str, ...] = METHODS
    kl_budget: float = 0.25
    reward_scale: float = 1.0
    ref_scale: float = 1.0
    refit_every: int = 20
    memory_size: int = 1024
    blend: float = 0.95
    smoothing: float = 0.0
    bandwidth: float = 0.5
    bandwidth_rule: str = "std"
    pspo_fit: str = "dataset"
    pspo_link: str = "soft"
    rspo_pairs: str = "all"
    betas: tuple[float, ...] = field(default_factory=lambda: tuple(np.geomspace(0.01, 100.0, 161).tolist()))


@dataclass
class Problem:
    log_ref: torch.Tensor  # (contexts, actions), log pi_ref
    reward: torch.Tensor  # (contexts, actions)

    @property
    def diff_std(self) -> float:
        """Exact std of r(y1) - r(y0) for x uniform, y0, y1 ~ pi_ref independently."""
        p = self.log_ref.exp()
        mean = (p * self.reward).sum(1)
        var = (p * self.reward**2).sum(1) - mean**2
        return math.sqrt(float((2 * var).mean()))


def make_problem(seed: int, cfg: SyntheticConfig) -> Problem:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(cfg.contexts, cfg.actions, generator=g, dtype=torch.float64) * cfg.ref_scale
    reward = torch.randn(cfg.contexts, cfg.actions, generator=g, dtype=torch.float64) * cfg.reward_scale
    return Problem(torch.log_softmax(logits, 1), reward)


def sample_pairs(problem: Problem, n: int, *, shift: float, temperature: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, problem.log_ref.shape[0], (n,), generator=g)
    p = problem.log_ref.exp()[x]
    y0 = torch.multinomial(p, 1, generator=g).squeeze(1)
    y1 = torch.multinomial(p, 1, generator=g).squeeze(1)
    diff = (problem.reward[x, y1] - problem.reward[x, y0]) / problem.diff_std
    prob = mixture_link(diff, shift=shift, temperature=temperature)
    z = (torch.rand(n, generator=g, dtype=torch.float64) < prob).to(torch.float64)
    return x, y0, y1, z


def policy_at_beta(problem: Problem, theta: torch.Tensor, beta: float) -> torch.Tensor:
    return torch.log_softmax(problem.log_ref + theta / beta, dim=1)


def exact_reward_kl(problem: Problem, log_pi: torch.Tensor) -> tuple[float, float]:
    p = log_pi.exp()
    reward = float((p * problem.reward).sum(1).mean())
    kl = float((p * (log_pi - problem.log_ref)).sum(1).mean())
    return reward, kl


def beta_curve(problem: Problem, theta: torch.Tensor, betas) -> list[tuple[float, float, float]]:
    return [(b, *exact_reward_kl(problem, policy_at_beta(problem, theta, b))) for b in betas]


def reward_at_kl(curve: list[tuple[float, float, float]], budget: float) -> float:
    """Reward at KL = budget, interpolated along the curve (ordered by KL)."""
    pts = sorted((kl, r) for _, r, kl in curve)
    kls = np.array([k for k, _ in pts])
    rs = np.array([r for _, r in pts])
    if budget >= kls[-1]:
        return float(rs[-1])  # the policy never moves that far: its best point
    return float(np.interp(budget, kls, rs))


def oracle_reward_at_kl(problem: Problem, budget: float) -> float:
    curve = [(lam, *exact_reward_kl(problem, torch.log_softmax(problem.log_ref + problem.reward / lam, 1)))
             for lam in np.geomspace(1e-3, 1e3, 400)]
    return reward_at_kl(curve, budget)


def train_policy(problem: Problem, pairs, method: str, cfg: SyntheticConfig, seed: int) -> torch.Tensor:
    x, y0, y1, z = pairs
    theta = torch.zeros_like(problem.reward, requires_grad=True)
    opt = torch.optim.Adam([theta], lr=cfg.learning_rate)
    options = SPOOptions(method=method, refit_every=cfg.refit_every, smoothing=cfg.smoothing, blend=cfg.blend,
                         memory_size=cfg.memory_size, bandwidth=cfg.bandwidth, bandwidth_rule=cfg.bandwidth_rule,
                         pspo_fit=cfg.pspo_fit, pspo_link=cfg.pspo_link, rspo_pairs=cfg.rspo_pairs)

    def refit_data():  # every pair's index under the current theta
        with torch.no_grad():
            return (theta[x, y1] - theta[x, y0]).numpy(), z.numpy()

    objective = SPOObjective(options, refit_data=refit_data)
    g = torch.Generator().manual_seed(seed + 7919)
    n = x.shape[0]
    for _ in range(cfg.steps):
        idx = torch.randint(0, n, (min(cfg.batch_size, n),), generator=g)
        t = theta[x[idx], y1[idx]] - theta[x[idx], y0[idx]]  # log-ratio index (pi_ref cancels)
        loss = objective(t, z[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return theta.detach()


def run(cfg: SyntheticConfig, *, progress: bool = True) -> dict:
    """Every (shift, seed, method): the beta curve and the reward at the KL budget."""
    from tqdm.auto import tqdm

    for m in cfg.methods:
        if m not in METHODS:
            raise ValueError(f"unknown method {m!r}; choose from {', '.join(METHODS)}")
    curves, cells = [], []
    jobs = [(s, seed) for s in cfg.shifts for seed in _seed_list(cfg.seeds)]
    bar = tqdm(total=len(jobs) * len(cfg.methods), desc="synthetic SPO", disable=not progress)
    for shift, seed in jobs:
        problem = make_problem(seed, cfg)
        pairs = sample_pairs(problem, cfg.n_pairs, shift=shift, temperature=cfg.temperature, seed=seed + 1000)
        oracle = oracle_reward_at_kl(problem, cfg.kl_budget)
        for method in cfg.methods:
            theta = train_policy(problem, pairs, method, cfg, seed)
            curve = beta_curve(problem, theta, cfg.betas)
            for beta, reward, kl in curve:
                curves.append({"method": method, "shift": shift, "seed": seed, "n": cfg.n_pairs, "beta": beta,
                               "reward": reward, "kl": kl})
            cells.append({"method": method, "shift": shift, "seed": seed,
                          "reward_at_budget": reward_at_kl(curve, cfg.kl_budget), "oracle": oracle})
            bar.update()
    bar.close()
    return {"config": asdict(cfg), "curves": curves, "cells": cells, "summary": summarise(cells, cfg)}


def _seed_list(seeds) -> list[int]:
    return list(range(seeds)) if isinstance(seeds, int) else [int(v) for v in seeds]


def _mean_ci(values, z: float = 1.96) -> tuple[float, float]:
    v = np.asarray(values, dtype=np.float64)
    if v.size < 2:
        return float(v.mean()), float("nan")
    return float(v.mean()), float(z * v.std(ddof=1) / math.sqrt(v.size))


def summarise(cells: list[dict], cfg: SyntheticConfig) -> list[dict]:
    """Per (method, shift): mean reward at the budget (95% CI over seeds), share of the oracle,
    and the paired difference to DPO on the same problems and pairs."""
    rows = []
    by = {(c["method"], c["shift"], c["seed"]): c for c in cells}
    for shift in cfg.shifts:
        for method in cfg.methods:
            cs = [by[(method, shift, s)] for s in _seed_list(cfg.seeds)]
            mean, ci = _mean_ci([c["reward_at_budget"] for c in cs])
            frac, frac_ci = _mean_ci([c["reward_at_budget"] / c["oracle"] for c in cs])
            row = {"method": method, "shift": shift, "reward": mean, "reward_ci95": ci,
                   "oracle_fraction": frac, "oracle_fraction_ci95": frac_ci, "seeds": len(cs)}
            if "dpo" in cfg.methods and method != "dpo":
                diffs = [by[(method, shift, s)]["reward_at_budget"] - by[("dpo", shift, s)]["reward_at_budget"]
                         for s in _seed_list(cfg.seeds)]
                row["diff_vs_dpo"], row["diff_vs_dpo_ci95"] = _mean_ci(diffs)
            rows.append(row)
    return rows


def format_table(summary: list[dict], budget: float) -> str:
    methods = list(dict.fromkeys(r["method"] for r in summary))
    shifts = list(dict.fromkeys(r["shift"] for r in summary))
    by = {(r["method"], r["shift"]): r for r in summary}
    head = f"reward at KL = {budget:g} (mean ± 95% CI over seeds; [share of oracle]; Δ vs DPO ± CI)"
    lines = [head, "| shift | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    for s in shifts:
        cells = []
        for m in methods:
            r = by[(m, s)]
            cell = f"{r['reward']:.3f} ± {r['reward_ci95']:.3f} [{r['oracle_fraction']:.2f}]"
            if "diff_vs_dpo" in r:
                cell += f" Δ {r['diff_vs_dpo']:+.3f} ± {r['diff_vs_dpo_ci95']:.3f}"
            cells.append(cell)
        lines.append(f"| {s:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _write_csv(path: Path, rows: list[dict], fields: list[str] | None = None) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields or list(dict.fromkeys(k for r in rows for k in r)))  # first-seen order
        w.writeheader()
        w.writerows(rows)


def _write_summary(result: dict, out_dir: Path) -> None:
    _write_csv(out_dir / "summary.csv", result["summary"])
    (out_dir / "summary.json").write_text(json.dumps({k: result[k] for k in ("config", "cells", "summary")}, indent=2))


def write_outputs(result: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_csv(out_dir / "curves.csv", result["curves"], list(result["curves"][0]))
    _write_summary(result, out_dir)
    plot_pareto(result, out_dir / "pareto.png")


def plot_pareto(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = result["config"]
    shifts = cfg["shifts"]
    fig, axes = plt.subplots(1, len(shifts), figsize=(4 * len(shifts), 3.6), squeeze=False, sharey=True)
    for ax, shift in zip(axes[0], shifts):
        for method in cfg["methods"]:
            rows = [r for r in result["curves"] if r["method"] == method and r["shift"] == shift]
            betas = sorted({r["beta"] for r in rows})
            kl = [np.mean([r["kl"] for r in rows if r["beta"] == b]) for b in betas]
            rw = [np.mean([r["reward"] for r in rows if r["beta"] == b]) for b in betas]
            ax.plot(kl, rw, label=method)
        ax.axvline(cfg["kl_budget"], color="grey", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_xlim(1e-3, max(5 * cfg["kl_budget"], 1.0))
        ax.set_title(f"link shift {shift:g}")
        ax.set_xlabel("KL(π_β ‖ π_ref)")
    axes[0][0].set_ylabel("expected true reward")
    axes[0][-1].legend()
    fig.suptitle("Reward vs KL along the β scan (mean over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------
# The paper's synthetic design (causalml/spo synthetic/spo_sim, scripts/run_single.py)
# ---------------------------------------------------------------------------

REFERENCE_BETAS = (0.2, 0.3, 0.5, 0.8, 1, 1.5, 2, 3, 5, 8, 10, 15, 20, 30, 50, 80, 100, 150, 200, 300, 500, 800, 1000)


@dataclass
class ReferenceDesignConfig:
    """Defaults are those of the reference's ``scripts/run_grid.py`` (grid) and
    ``run_single.py`` / ``spo_sim`` (one run); ``kappa`` is the README's KL budget."""

    seeds: tuple[int, ...] = (0, 1, 2)
    n_grid: tuple[int, ...] = (500, 1000, 2000)
    s_grid: tuple[float, ...] = (0.0, 1.0, 1.5)
    tau_grid: tuple[float, ...] = (0.25,)
    methods: tuple[str, ...] = METHODS
    d: int = 20
    k: int = 10
    nu: float = 10.0
    m: int = 2000
    hidden: tuple[int, ...] = (32, 32)
    epochs: int = 100
    batch_size: int = 128
    lr: float = 2e-3
    betas: tuple[float, ...] = REFERENCE_BETAS
    kappa: float = 0.2
    pspo_outer: int = 4
    pspo_inner: int = 2
    pspo_warm: int = 3
    iso_eps: float = 1e-4
    iso_expand: str = "points"
    """PSPO isotonic write-back: 'points' (reference, see step_isotonic_fit) or 'knots'."""
    ospo_mem: int = 0
    """0: the whole data set is the kernel memory."""
    ospo_bandwidth: float = 1.0
    ospo_warm: int = 2
    ospo_eps: float = 1e-6
    ci_z: float = 1.64


class MLPPolicy(torch.nn.Module):
    """Logits of k actions from a d-dimensional context (ReLU MLP)."""

    def __init__(self, d: int, k: int, hidden: tuple[int, ...]):
        super().__init__()
        layers, width = [], d
        for h in hidden:
            layers += [torch.nn.Linear(width, h), torch.nn.ReLU()]
            width = h
        layers.append(torch.nn.Linear(width, k))
        self.net = torch.nn.Sequential(*layers)
        self.k = k

    def log_probs(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.net(x), dim=-1)


def reference_link(u: torch.Tensor, s: float, tau: float) -> torch.Tensor:
    """1/2 sigmoid((u - s)/tau) + 1/2 sigmoid((u + s)/tau) (the shift is applied before dividing by tau)."""
    return 0.5 * torch.sigmoid((u - s) / tau) + 0.5 * torch.sigmoid((u + s) / tau)


def make_reference_data(seed: int, n: int, s: float, tau: float, cfg: ReferenceDesignConfig):
    """Teacher, training pairs and evaluation contexts; uses torch's global generator in the
    reference's order (call inside ``torch.random.fork_rng`` after seeding it)."""
    torch.manual_seed(seed)
    teacher = MLPPolicy(cfg.d, cfg.k, cfg.hidden).eval()
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, cfg.d)).astype(np.float32)
    x_eval = rng.normal(size=(cfg.m, cfg.d)).astype(np.float32)
    y0 = rng.integers(low=0, high=cfg.k, size=n, dtype=np.int64)
    y1 = rng.integers(low=0, high=cfg.k, size=n, dtype=np.int64)
    with torch.no_grad():
        log_pi = teacher.log_probs(torch.from_numpy(x))
        log_ref = -math.log(cfg.k)
        r0 = cfg.nu * (log_pi.gather(1, torch.from_numpy(y0)[:, None]).squeeze(1) - log_ref)
        r1 = cfg.nu * (log_pi.gather(1, torch.from_numpy(y1)[:, None]).squeeze(1) - log_ref)
        z = torch.bernoulli(reference_link(r1 - r0, s, tau)).long()
    data = {"x": torch.from_numpy(x), "y0": torch.from_numpy(y0), "y1": torch.from_numpy(y1), "z": z,
            "x_eval": torch.from_numpy(x_eval)}
    return teacher, data


def _index(model: MLPPolicy, x, y0, y1) -> torch.Tensor:
    """t = log pi(y1|x) - log pi(y0|x) (the uniform reference cancels)."""
    lp = model.log_probs(x)
    return lp.gather(1, y1[:, None]).squeeze(1) - lp.gather(1, y0[:, None]).squeeze(1)


def step_isotonic_fit(t: np.ndarray, z: np.ndarray, eps: float, expand: str = "points") -> tuple[np.ndarray, np.ndarray]:
    """Isotonic regression of z on t with ties pooled first (weights = counts, strict PAVA),
    values clipped to [eps, 1 - eps]; knots (unique t, fitted value) in float32 as the reference.

    ``expand``: how block means are written back onto the knots. ``"points"`` (the reference's
    ``Isotonic1D.fit``) advances by the block's number of *points*, so when t has ties (pairs
    with y0 = y1 all have t = 0) the values after a tie are shifted towards lower blocks and
    the last blocks are cut off; ``"knots"`` advances by the block's number of knots (the
    plain isotonic fit)."""
    if expand not in ("points", "knots"):
        raise ValueError(f"iso_expand must be points or knots, got {expand!r}")
    t = np.asarray(t)
    z = np.asarray(z, dtype=np.float64)
    knots, inverse = np.unique(t, return_inverse=True)
    counts = np.bincount(inverse).astype(np.float64)
    means = np.bincount(inverse, weights=z) / counts
    blocks: list[list[float]] = []  # [mean, weight, number of knots]
    for mu, w in zip(means.tolist(), counts.tolist()):
        blocks.append([mu, w, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            m2, w2, c2 = blocks.pop()
            m1, w1, c1 = blocks[-1]
            blocks[-1] = [(w1 * m1 + w2 * m2) / (w1 + w2), w1 + w2, c1 + c2]
    fitted = np.empty(len(knots))
    pos = 0
    for mu, w, c in blocks:
        width = int(w) if expand == "points" else c
        fitted[pos : pos + width] = mu  # slices past the end are empty
        pos += width
    return knots.astype(np.float32), np.clip(fitted, eps, 1 - eps).astype(np.float32)


def step_isotonic_predict(t: torch.Tensor, knots: torch.Tensor, values: torch.Tensor, eps: float) -> torch.Tensor:
    """Linear interpolation between the knots (constant outside), clipped to [eps, 1 - eps]."""
    idx = torch.bucketize(t.detach(), knots)
    left = (idx - 1).clamp(0, len(knots) - 1)
    right = idx.clamp(0, len(knots) - 1)
    t0, t1, v0, v1 = knots[left], knots[right], values[left], values[right]
    w = ((t - t0) / (t1 - t0).clamp(min=1e-6)).clamp(0.0, 1.0)
    return (v0 + w * (v1 - v0)).clamp(eps, 1 - eps)


def loo_kernel_link(t: torch.Tensor, t_mem: torch.Tensor, z_mem: torch.Tensor, h: float, eps: float,
                    exclude: torch.Tensor | None = None) -> torch.Tensor:
    """Gaussian Nadaraya-Watson ``sum w z / (sum w + eps)`` with ``w = exp(-((t - t_m) / h)^2 / 2)``;
    ``exclude`` (query x memory, 1 = leave out) drops each pair's own label."""
    u = (t[:, None] - t_mem[None, :]) / h
    w = torch.exp(-0.5 * u * u)
    if exclude is not None:
        w = w * (1.0 - exclude)
    return (w * z_mem[None, :]).sum(1) / (w.sum(1) + eps)


def _epochs(n: int, batch_size: int, epochs: int, perm_source=None):
    for _ in range(epochs):
        perm = torch.randperm(n) if perm_source is None else perm_source[torch.randperm(len(perm_source))]
        for start in range(0, n, batch_size):
            yield perm[start : start + batch_size]


def _bce(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    return -(z * torch.log(p) + (1 - z) * torch.log(1 - p)).mean()


def train_reference_method(method: str, data: dict, cfg: ReferenceDesignConfig) -> tuple[MLPPolicy, float]:
    """One method as the reference's ``spo_sim/methods.py`` trains it; returns the policy and the
    sign ``zeta`` applied at evaluation (OSPO: sign of cov(t, z) over the training pairs)."""
    model = MLPPolicy(cfg.d, cfg.k, cfg.hidden)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    x, y0, y1, z = data["x"], data["y0"], data["y1"], data["z"]
    zf = z.float()
    n = x.shape[0]

    def step(loss):
        opt.zero_grad()
        loss.backward()
        opt.step()

    def dpo_epochs(epochs, perm_source=None):
        for idx in _epochs(n, cfg.batch_size, epochs, perm_source):
            t = _index(model, x[idx], y0[idx], y1[idx])
            step(torch.nn.functional.softplus(-torch.where(z[idx] > 0, t, -t)).mean())

    zeta = 1.0
    if method == "dpo":
        dpo_epochs(cfg.epochs)
    elif method == "rspo":
        for idx in _epochs(n, cfg.batch_size, cfg.epochs):
            t = _index(model, x[idx], y0[idx], y1[idx])
            sp = torch.where(z[idx] > 0, t, -t)
            step(torch.nn.functional.softplus(-(sp[:, None] + sp[None, :])).mean())
    elif method == "pspo":
        dpo_epochs(cfg.pspo_warm)
        for _ in range(cfg.pspo_outer):
            with torch.no_grad():
                knots, values = step_isotonic_fit(_index(model, x, y0, y1).numpy(), z.numpy(), cfg.iso_eps,
                                                  cfg.iso_expand)
            knots_t, values_t = torch.from_numpy(knots), torch.from_numpy(values)
            for idx in _epochs(n, cfg.batch_size, cfg.pspo_inner):
                t = _index(model, x[idx], y0[idx], y1[idx])
                step(_bce(step_isotonic_predict(t, knots_t, values_t, cfg.iso_eps), zf[idx]))
    elif method == "ospo":
        perm_all = torch.randperm(n)
        mem_size = n if cfg.ospo_mem <= 0 else min(cfg.ospo_mem, n)
        mem_idx = perm_all[:mem_size]
        dpo_epochs(cfg.ospo_warm, perm_source=perm_all)
        for _ in range(cfg.epochs):
            with torch.no_grad():
                t_mem = _index(model, x[mem_idx], y0[mem_idx], y1[mem_idx])
            z_mem = zf[mem_idx]
            std = float(torch.std(t_mem).clamp(min=1e-3))
            h = cfg.ospo_bandwidth * mem_size ** (-0.2) * std + cfg.ospo_eps
            for idx in _epochs(n, cfg.batch_size, 1):
                t = _index(model, x[idx], y0[idx], y1[idx])
                exclude = (idx[:, None] == mem_idx[None, :]).float() if mem_size < 5000 else None
                g = loo_kernel_link(t, t_mem, z_mem, h, cfg.ospo_eps, exclude).clamp(cfg.ospo_eps, 1 - cfg.ospo_eps)
                step(_bce(g, zf[idx]))
        with torch.no_grad():
            from ..trainers.spo import index_sign

            zeta = index_sign(_index(model, x, y0, y1).numpy(), zf.numpy())
    else:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    return model, zeta


@torch.no_grad()
def reference_beta_scan(model: MLPPolicy, teacher: MLPPolicy, x_eval: torch.Tensor, cfg: ReferenceDesignConfig,
                        zeta: float = 1.0) -> list[tuple[float, float, float]]:
    """Exact (over actions) mean true reward and KL(pi_beta || pi_ref) on the evaluation contexts,
    ``log pi_beta ∝ (1 - 1/beta) log pi_ref + (1/beta) [log pi_ref + zeta (log pi - log pi_ref)]``."""
    model.eval()
    log_ref = -math.log(cfg.k)
    log_pi = log_ref + zeta * (model.log_probs(x_eval) - log_ref)
    reward = cfg.nu * (teacher.log_probs(x_eval) - log_ref)
    out = []
    for beta in cfg.betas:
        lb = torch.log_softmax((1 - 1 / beta) * log_ref + (1 / beta) * log_pi, dim=1)
        pb = lb.exp()
        out.append((float(beta), float((pb * reward).sum(1).mean()), float((pb * (lb - log_ref)).sum(1).mean())))
    return out


def reward_at_kappa(curve: list[tuple[float, float, float]], kappa: float) -> float:
    """The reference's read-out: points sorted by KL; below the first / above the last the end
    point's reward, otherwise linear between the bracketing points."""
    pts = sorted(((kl, r) for _, r, kl in curve), key=lambda p: p[0])
    kl = [p[0] for p in pts]
    rw = [p[1] for p in pts]
    if kappa <= kl[0]:
        return rw[0]
    if kappa >= kl[-1]:
        return rw[-1]
    hi = next(i for i, v in enumerate(kl) if v >= kappa)
    lo = max(hi - 1, 0)
    if kl[hi] == kl[lo]:
        return rw[hi]
    w = (kappa - kl[lo]) / (kl[hi] - kl[lo])
    return rw[lo] + w * (rw[hi] - rw[lo])


def run_reference_cell(seed: int, n: int, s: float, tau: float, method: str, cfg: ReferenceDesignConfig) -> dict:
    """One (seed, n, s, tau, method) run, with torch's global generator seeded as the reference
    (and restored afterwards)."""
    import random

    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        torch.manual_seed(seed)
        teacher, data = make_reference_data(seed, n, s, tau, cfg)
        model, zeta = train_reference_method(method, data, cfg)
        curve = reference_beta_scan(model, teacher, data["x_eval"], cfg, zeta)
    return {"seed": seed, "n": n, "s": s, "tau": tau, "method": method, "zeta": zeta, "curve": curve,
            "reward_at_kappa": reward_at_kappa(curve, cfg.kappa)}


def run_reference(cfg: ReferenceDesignConfig, *, progress: bool = True) -> dict:
    from tqdm.auto import tqdm

    for m in cfg.methods:
        if m not in METHODS:
            raise ValueError(f"unknown method {m!r}; choose from {', '.join(METHODS)}")
    jobs = [(seed, n, s, tau, m) for seed in cfg.seeds for n in cfg.n_grid for s in cfg.s_grid
            for tau in cfg.tau_grid for m in cfg.methods]
    cells, curves = [], []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the reference's run_single.py; the networks are tiny
    try:
        for job in tqdm(jobs, desc="synthetic SPO (reference design)", disable=not progress):
            cell = run_reference_cell(*job, cfg)
            for beta, reward, kl in cell.pop("curve"):
                curves.append({"seed": cell["seed"], "n": cell["n"], "s": cell["s"], "tau": cell["tau"],
                               "method": cell["method"], "beta": beta, "avg_reward": reward, "avg_kl": kl})
            cells.append(cell)
    finally:
        torch.set_num_threads(threads)
    return {"config": asdict(cfg), "curves": curves, "cells": cells, "summary": summarise_reference(cells, cfg)}


def summarise_reference(cells: list[dict], cfg: ReferenceDesignConfig) -> list[dict]:
    """Per (n, tau, s, method): mean reward at kappa ± ci_z * std / sqrt(seeds) (population std,
    as the reference's analyze_vs_s.py), and the paired difference to DPO (same data) ± ci_z SE."""
    by = {(c["seed"], c["n"], c["s"], c["tau"], c["method"]): c["reward_at_kappa"] for c in cells}
    rows = []
    for n in cfg.n_grid:
        for tau in cfg.tau_grid:
            for s in cfg.s_grid:
                for m in cfg.methods:
                    v = np.array([by[(seed, n, s, tau, m)] for seed in cfg.seeds])
                    half = cfg.ci_z * float(v.std()) / math.sqrt(v.size)
                    row = {"n": n, "tau": tau, "s": s, "method": m, "reward": float(v.mean()), "ci": half,
                           "seeds": int(v.size)}
                    if "dpo" in cfg.methods and m != "dpo":
                        d = v - np.array([by[(seed, n, s, tau, "dpo")] for seed in cfg.seeds])
                        row["diff_vs_dpo"], row["diff_ci"] = _mean_ci(d, cfg.ci_z)
                    rows.append(row)
    return rows


def format_reference_table(summary: list[dict], cfg: ReferenceDesignConfig) -> str:
    methods = list(dict.fromkeys(r["method"] for r in summary))
    lines = []
    for n in cfg.n_grid:
        for tau in cfg.tau_grid:
            lines.append(f"n = {n}, tau = {tau:g}: reward at KL = {cfg.kappa:g} (mean ± {cfg.ci_z:g}·SE over "
                         f"{len(cfg.seeds)} seeds; Δ vs DPO ± {cfg.ci_z:g}·SE, paired)")
            lines += ["| s | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
            for s in cfg.s_grid:
                cells = []
                for m in methods:
                    r = next(r for r in summary if (r["n"], r["tau"], r["s"], r["method"]) == (n, tau, s, m))
                    cell = f"{r['reward']:.3f} ± {r['ci']:.3f}"
                    if "diff_vs_dpo" in r:
                        cell += f" Δ {r['diff_vs_dpo']:+.3f} ± {r['diff_ci']:.3f}"
                    cells.append(cell)
                lines.append(f"| {s:g} | " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines).rstrip()


def write_reference_outputs(result: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_csv(out_dir / "results.csv", result["curves"],  # the reference's per-run CSV columns
               ["seed", "n", "s", "tau", "method", "beta", "avg_reward", "avg_kl"])
    _write_summary(result, out_dir)
    plot_reference(result, out_dir / "reward_vs_s.png")


def plot_reference(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = result["config"]
    panels = [(n, tau) for n in cfg["n_grid"] for tau in cfg["tau_grid"]]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.2), squeeze=False, sharey=True)
    for ax, (n, tau) in zip(axes[0], panels):
        for m in cfg["methods"]:
            rows = [r for r in result["summary"] if r["n"] == n and r["tau"] == tau and r["method"] == m]
            s = np.array([r["s"] for r in rows])
            mean = np.array([r["reward"] for r in rows])
            half = np.array([r["ci"] for r in rows])
            ax.plot(s, mean, marker="o", label=m)
            ax.fill_between(s, mean - half, mean + half, alpha=0.2)
        ax.set_title(f"n = {n}, τ = {tau:g}")
        ax.set_xlabel("link shift s")
    axes[0][0].set_ylabel(f"reward at KL ≈ {cfg['kappa']:g}")
    axes[0][-1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
