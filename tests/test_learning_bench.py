"""benchmarks/learning.py: its smallest configuration end to end, and its paired test."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_learning", ROOT / "benchmarks" / "learning.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mcnemar_exact_against_reference():
    bench = _bench()

    def ref(up, down):  # two-sided exact binomial test, p = 1/2, by summing the pmf
        n = up + down
        if n == 0:
            return 1.0
        pmf = [math.comb(n, i) * 0.5**n for i in range(n + 1)]
        obs = pmf[up]
        return min(1.0, sum(q for q in pmf if q <= obs + 1e-15))

    for up, down in [(0, 5), (3, 3), (1, 9), (12, 4), (0, 0), (7, 0)]:
        a = [True] * down + [False] * up + [True, False]
        b = [False] * down + [True] * up + [True, False]
        assert bench.mcnemar_p(a, b) == pytest.approx(ref(up, down), rel=1e-12)
        d = bench.paired(a, b)
        assert (d["gained"], d["lost"]) == (up, down)
        assert d["delta"] == pytest.approx((up - down) / len(a))


def test_bad_method_is_one_line():
    bench = _bench()
    with pytest.raises(SystemExit, match="--methods 'dpo' is unknown"):
        bench.parse_args(["--methods", "grpo,dpo"])
    with pytest.raises(SystemExit, match="grpo_mix must be in"):
        bench.parse_args(["--methods", "mix:1.5"])


def test_smallest_configuration_end_to_end(tmp_path, capsys):
    bench = _bench()
    out = tmp_path / "bench"
    rc = bench.main(["--model", "tiny-random", "--methods", "grpo,routing", "--seeds", "0", "--steps", "2",
                     "--eval-size", "4", "--train-size", "8", "--max-completion-length", "4",
                     "--curve-every", "1", "--out-dir", str(out)])
    assert rc == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    result = json.loads(line)
    assert result["benchmark"] == "learning" and result["methods"] == ["grpo", "routing"]
    seed = result["seeds"]["0"]
    assert seed["n_held_out"] == 4 and 0.0 <= seed["base_accuracy"] <= 1.0
    for method in ("grpo", "routing"):
        m = seed["methods"][method]
        assert [pt["step"] for pt in m["curve"]] == [0, 1, 2]
        assert [pt["rollouts"] for pt in m["curve"]] == [0, 8, 16]
        assert set(m["vs_base"]) == {"delta", "gained", "lost", "p"}
    assert "vs_grpo" in seed["methods"]["routing"] and "vs_grpo" not in seed["methods"]["grpo"]
    assert set(result["pooled"]) == {"grpo", "routing"}
    assert (out / "learning.json").is_file() and (out / "learning.png").stat().st_size > 1000


def test_bf16_variant_is_paired_with_its_fp32_run(tmp_path, capsys):
    bench = _bench()
    rc = bench.main(["--model", "tiny-random", "--methods", "grpo,grpo@bf16", "--seeds", "0", "--steps", "1",
                     "--eval-size", "4", "--train-size", "8", "--max-completion-length", "4",
                     "--out-dir", str(tmp_path / "b")])
    assert rc == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    m = result["seeds"]["0"]["methods"]["grpo@bf16"]
    assert set(m["vs_fp32"]) == {"delta", "gained", "lost", "p"} and len(m["correct"]) == 4
    assert "vs_fp32" in result["pooled"]["grpo@bf16"] and "vs_fp32" not in result["pooled"]["grpo"]
