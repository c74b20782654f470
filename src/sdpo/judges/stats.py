"""Win-rate statistics: wins / (wins + losses), binomial and bootstrap standard errors.

With no decisive pair the rate and its errors are NaN here (undefined); files written
from them carry ``null`` (:func:`json_safe`).
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Sequence

import numpy as np


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
    return {
        "n": len(outcomes), "wins": wins, "losses": losses, "ties": counts["tie"], "unparsed": counts["unparsed"],
        "failed": counts["failed"],
        "win_rate": rate, "se_binomial": binom, "se_bootstrap": boot,
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
