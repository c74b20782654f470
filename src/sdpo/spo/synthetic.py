"""A preference-optimization benchmark with exact answers.

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
    seeds: int = 5
    methods: tuple[str, ...] = METHODS
    kl_budget: float = 0.25
    reward_scale: float = 1.0
    ref_scale: float = 1.0
    refit_every: int = 20
    memory_size: int = 1024
    blend: float = 0.95
    smoothing: float = 0.0
    bandwidth: float | None = None
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
    objective = SPOObjective(SPOOptions(method=method, refit_every=cfg.refit_every, smoothing=cfg.smoothing,
                                        blend=cfg.blend, memory_size=cfg.memory_size, bandwidth=cfg.bandwidth))
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
    jobs = [(s, seed) for s in cfg.shifts for seed in range(cfg.seeds)]
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


def _mean_ci(values) -> tuple[float, float]:
    v = np.asarray(values, dtype=np.float64)
    if v.size < 2:
        return float(v.mean()), float("nan")
    return float(v.mean()), float(1.96 * v.std(ddof=1) / math.sqrt(v.size))


def summarise(cells: list[dict], cfg: SyntheticConfig) -> list[dict]:
    """Per (method, shift): mean reward at the budget (95% CI over seeds), share of the oracle,
    and the paired difference to DPO on the same problems and pairs."""
    rows = []
    by = {(c["method"], c["shift"], c["seed"]): c for c in cells}
    for shift in cfg.shifts:
        for method in cfg.methods:
            cs = [by[(method, shift, s)] for s in range(cfg.seeds)]
            mean, ci = _mean_ci([c["reward_at_budget"] for c in cs])
            frac, frac_ci = _mean_ci([c["reward_at_budget"] / c["oracle"] for c in cs])
            row = {"method": method, "shift": shift, "reward": mean, "reward_ci95": ci,
                   "oracle_fraction": frac, "oracle_fraction_ci95": frac_ci, "seeds": len(cs)}
            if "dpo" in cfg.methods and method != "dpo":
                diffs = [by[(method, shift, s)]["reward_at_budget"] - by[("dpo", shift, s)]["reward_at_budget"]
                         for s in range(cfg.seeds)]
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


def write_outputs(result: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "curves.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(result["curves"][0]))
        w.writeheader()
        w.writerows(result["curves"])
    with open(out_dir / "summary.csv", "w", newline="") as f:
        fields = list(dict.fromkeys(k for r in result["summary"] for k in r))  # first-seen order
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(result["summary"])
    (out_dir / "summary.json").write_text(json.dumps({k: result[k] for k in ("config", "cells", "summary")}, indent=2))
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
