"""Win-rate statistics: wins / (wins + losses), binomial and bootstrap standard errors
(the reference's), and a 95 % Wilson score interval.

The standard errors are 0 when every decisive pair went one way (1 win of 1, 4 of 4);
the Wilson interval is not (1 of 1: 20.7 %–100 %), so plots and tables show it, with
the number of decisive pairs. With no decisive pair the rate, its errors and the
interval are NaN here (undefined); files written from them carry ``null``
(:func:`json_safe`).
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Sequence

import numpy as np

Z95 = 1.959963984540054  # the standard normal's 97.5 % quantile


def wilson_interval(successes: int, trials: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95 % for the default ``z``); NaNs for no trials."""
    if trials <= 0:
        return float("nan"), float("nan")
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials))
    # exact at the ends (p = 0 or 1 hits the bound analytically; keep rounding from moving it)
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == trials else min(1.0, centre + half)
    return low, high


def win_rate_summary(outcomes: Sequence[str], *, n_bootstrap: int = 5000, seed: int = 0) -> dict:
    counts = Counter(outcomes)
    wins, losses = counts["win"], counts["loss"]
    decided = wins + losses
    rate = wins / decided if decided else float("nan")
    binom = math.sqrt(rate * (1 - rate) / decided) if decided else float("nan")
    boot = float("nan")
    if decided:
        # resample prompts (ties included, they just do not count) and recompute the rate
        codes = np.array([1 if o == "win" else -1 if o == "loss" else 0 for o in outcomes])
        rng = np.random.default_rng(seed)
        samples = codes[rng.integers(0, len(codes), size=(n_bootstrap, len(codes)))]
        w = (samples == 1).sum(axis=1)
        d = w + (samples == -1).sum(axis=1)
        rates = w[d > 0] / d[d > 0]
        boot = float(rates.std(ddof=1)) if len(rates) > 1 else float("nan")
    low, high = wilson_interval(wins, decided)
    return {
        "n": len(outcomes), "wins": wins, "losses": losses, "ties": counts["tie"], "unparsed": counts["unparsed"],
        "failed": counts["failed"], "decisive": decided,
        "win_rate": rate, "se_binomial": binom, "se_bootstrap": boot, "wilson95_low": low, "wilson95_high": high,
        "coverage": decided / len(outcomes) if outcomes else 0.0,
    }


def json_safe(obj):
    """``obj`` with every NaN or infinite float replaced by None (JSON ``null``), recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        return json_safe(obj.item())
    return obj


MIN_VERDICT_N = 20  # prompts below which a summary says it cannot tell


def sign_test_p(wins: int, losses: int) -> float:
    """Two-sided exact sign test of wins vs losses (ties left out): 1.0 with no decisive pair."""
    n = wins + losses
    if n == 0:
        return 1.0
    k = min(wins, losses)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0**n
    return min(1.0, 2.0 * tail)


def verdict(wins: int, losses: int, ties: int, *, alpha: float = 0.05, min_n: int = MIN_VERDICT_N,
            degenerate_before: float | None = None, degenerate_after: float | None = None,
            max_degeneracy_rise: float = 0.02) -> dict:
    """One plain verdict from paired judgments (each prompt: win, loss or tie for the new model).

    ``improved`` / ``worse`` when the sign test on the decisive pairs gives p < ``alpha``;
    ``no measurable change`` otherwise; ``too few prompts`` under ``min_n`` prompts. A rise
    of the non-answer rate by more than ``max_degeneracy_rise`` (and by 2 answers or more) makes
    it ``worse (more non-answers)``: a collapse must not pass as a win."""
    n = wins + losses + ties
    p = sign_test_p(wins, losses)
    low, high = wilson_interval(wins, wins + losses)
    if n < min_n:
        word = "too few prompts"
    elif p < alpha:
        word = "improved" if wins > losses else "worse"
    else:
        word = "no measurable change"
    if degenerate_before is not None and degenerate_after is not None:
        rise = degenerate_after - degenerate_before
        # a rise of more than max_degeneracy_rise, and of at least 2 answers (one answer of a few is noise)
        if rise > max_degeneracy_rise and rise * n >= 2 - 1e-9:
            word = "worse (more non-answers)"
    return {"verdict": word, "n": n, "wins": wins, "losses": losses, "ties": ties, "p_sign": p,
            "win_rate": wins / (wins + losses) if wins + losses else float("nan"),
            "wilson95_low": low, "wilson95_high": high,
            "degenerate_before": degenerate_before, "degenerate_after": degenerate_after}


def format_verdict(v: dict, *, what: str = "trained vs initial") -> str:
    """``verdict: improved - trained vs initial on n=40 prompts: 18 W / 6 L / 16 T, win rate 75% (95% 55-88%),
    sign test p=0.023; non-answers 3% -> 5%``"""
    counts = f"{v['wins']} W / {v['losses']} L / {v['ties']} T"
    if v["wins"] + v["losses"]:
        rate = (f"win rate {100 * v['win_rate']:.0f}% of {v['wins'] + v['losses']} decisive "
                f"(95% {100 * v['wilson95_low']:.0f}-{100 * v['wilson95_high']:.0f}%), sign test p={v['p_sign']:.3g}")
    else:
        rate = "no decisive pair"
    line = f"verdict: {v['verdict']} - {what} on n={v['n']} prompts: {counts}, {rate}"
    if v["verdict"] == "too few prompts":
        line += f" (a verdict needs >= {MIN_VERDICT_N})"
    if v.get("degenerate_before") is not None and v.get("degenerate_after") is not None:
        line += f"; non-answers {100 * v['degenerate_before']:.0f}% -> {100 * v['degenerate_after']:.0f}%"
    return line
