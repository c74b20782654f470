"""benchmarks/learning_online.py: its smallest configuration end to end (tiny random model)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_learning_online", ROOT / "benchmarks" / "learning_online.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_bundled_prompts_hold_out_200_unseen():
    bench = _bench()
    held, train = bench.load_split(200)
    assert len(held) == 200 and len(train) >= 64
    assert not {p.text for p in held} & {p.text for p in train}


def test_smallest_run_end_to_end_and_resumable(tmp_path, capsys):
    bench = _bench()
    args = ["--model", "tiny-random", "--eval-size", "4", "--steps", "2", "--variants", "reference,contrastive,oracle",
            "--personas", "concise_casual_beginner", "--seeds", "0", "--curve-every", "1", "--curve-size", "2",
            "--max-new-tokens", "6", "--out-dir", str(tmp_path), "--markdown"]
    assert bench.main(args) == 0
    out = capsys.readouterr().out
    result = json.loads((tmp_path / "learning-online.json").read_text())
    rows = {r["variant"]: r for r in result["table"]}
    assert set(rows) == {"reference", "contrastive", "oracle"}
    for r in rows.values():
        assert r["wins"] + r["losses"] + r["ties"] == 4 and 0.0 <= r["nonanswer_rate"] <= 1.0
    run = json.loads((tmp_path / "runs" / "concise_casual_beginner__reference__s0.json").read_text())
    assert [c["step"] for c in run["curve"]] == [1, 2] and len(run["train_metrics"]) == 2
    assert "nonanswer_rate" in run["train_metrics"][0]
    assert "| concise_casual_beginner | reference | 0 |" in out
    # a re-run finds every run done and trains nothing
    before = (tmp_path / "runs" / "concise_casual_beginner__reference__s0.json").stat().st_mtime_ns
    assert bench.main(args) == 0
    assert (tmp_path / "runs" / "concise_casual_beginner__reference__s0.json").stat().st_mtime_ns == before


def test_the_bar_of_issue_25_needs_two_personas_every_seed_and_no_more_non_answers():
    bench = _bench()

    def row(persona, variant, sig, na):
        return {"persona": persona, "variant": variant, "significant_win_every_seed": sig, "nonanswer_rate": na,
                "base": {"nonanswer_rate": 0.06}}

    table = [row("a", "x", True, 0.05), row("b", "x", True, 0.08), row("c", "x", False, 0.05),
             row("a", "y", True, 0.05), row("b", "y", True, 0.09),  # 3 points more non-answers: not a win
             row("a", "oracle", True, 0.0), row("b", "oracle", True, 0.0)]
    bar = bench.bar_summary(table)
    assert bar["x"] == {"personas_won_every_seed": ["a", "b"], "meets_bar": True}
    assert bar["y"] == {"personas_won_every_seed": ["a"], "meets_bar": False}
    assert "oracle" not in bar
