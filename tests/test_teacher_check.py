"""sdpo teacher-check: verdict logic on hand-made numbers, the persona pairs, and a run on tiny-random."""

from __future__ import annotations

import json

import pytest

from sdpo.analysis.teacher_check import (
    MAX_COPY_SHARE,
    MIN_TEACHER_GAIN,
    PERSONA_PAIRS,
    PersonaPair,
    check_pairs,
    verdict,
)


def _rich(gain, sep, copy):
    return {"teacher_gain": gain, "gap_separation": sep, "copy_share": copy, "accuracy_teacher": 0.5,
            "accuracy_plain_same_problems": 0.5 - (gain or 0), "n_with_teacher": 10, "gap_correct": 1.0,
            "gap_incorrect": 1.0 - (sep or 0)}


@pytest.mark.parametrize("gain,sep,copy,expected", [
    (0.40, 2.0, 0.0, "SDPO"),                          # better teacher, right direction, no copying
    (MIN_TEACHER_GAIN, 0.1, MAX_COPY_SHARE, "SDPO"),  # exactly at the thresholds
    (0.40, 2.0, 0.50, "hybrid"),                       # helps, but copies its context
    (0.40, -1.0, 0.0, "hybrid"),                       # helps greedy, log-probs point the wrong way
    (0.02, 0.5, 0.0, "hybrid"),                        # separates only
    (0.0, -0.5, 0.0, "GRPO"),                          # no better, wrong direction
    (-0.2, None, None, "GRPO"),                        # worse, nothing to separate
    (None, None, None, "GRPO"),                        # no problem had a teacher
])
def test_verdict_rich(gain, sep, copy, expected):
    out = verdict(_rich(gain, sep, copy), None)
    assert out["recommendation"] == expected
    assert out["rich_feedback"]["recommendation"] == expected
    assert any(expected in line for line in out["lines"])
    assert "user_interactions" not in out


@pytest.mark.parametrize("sel,pref,usable", [
    (1.4, 0.8, True), (1.0, 0.8, False), (1.4, 0.5, False), (0.7, 0.2, False), (None, 0.9, False),
])
def test_verdict_user(sel, pref, usable):
    out = verdict(None, {"selectivity": sel, "preference_rate": pref, "n_pairs": 10})
    assert out["user_interactions"]["signal_usable"] is usable
    assert "recommendation" not in out
    assert len(out["lines"]) == 2


def test_persona_pairs_split_on_their_rules():
    check_pairs(PERSONA_PAIRS)
    assert len({p.style for p in PERSONA_PAIRS}) == len(PERSONA_PAIRS) >= 8
    assert all(p.followup for p in PERSONA_PAIRS)
    with pytest.raises(ValueError, match="breaks no rule"):
        check_pairs([PersonaPair("no_emojis", "x", "plain", "also plain")])
    with pytest.raises(ValueError, match="satisfying response breaks a rule"):
        check_pairs([PersonaPair("exclamation", "x", "calm.", "calm.")])


def test_bad_options_are_one_line(capsys):
    from sdpo.cli import main

    assert main(["teacher-check", "--model", "tiny-random", "--task", "poetry"]) == 2
    assert "--task 'poetry' is unknown" in capsys.readouterr().err
    assert main(["teacher-check", "--model", "tiny-random", "--num_generations", "1"]) == 2
    assert "--num_generations must be >= 2" in capsys.readouterr().err
    assert main(["teacher-check", "--task", "none", "--cases", "none", "--persona_pairs", "false"]) == 2
    assert "nothing to check" in capsys.readouterr().err


def test_runs_on_tiny_random_and_writes_the_fields(tmp_path):
    from sdpo.cli import main

    out = tmp_path / "check.json"
    rc = main(["teacher-check", "--model", "tiny-random", "--n_problems", "3", "--num_generations", "2",
               "--max_new_tokens", "4", "--n_cases", "2", "--out", str(out), "--dtype", "float32",
               "--device", "cpu"])
    assert rc == 0
    data = json.loads(out.read_text())
    rich = data["rich_feedback"]
    for key in ("accuracy_plain", "accuracy_teacher", "teacher_gain", "gap_correct", "gap_incorrect",
                "gap_separation", "copy_share", "n_with_teacher", "rollout_success_rate"):
        assert key in rich
    assert rich["n_problems"] == 3
    # tiny-random answers nothing right: every rollout is wrong and gets feedback, so each problem has a teacher
    assert rich["n_with_teacher"] == 3 and rich["n_rollouts_incorrect"] == 6
    user = data["user_interactions"]
    assert user["n_cases"] == 2 and user["n_pairs"] == len(PERSONA_PAIRS)
    assert 0.0 <= user["preference_rate"] <= 1.0 and user["selectivity"] > 0
    assert data["recommendation"] in ("SDPO", "hybrid", "GRPO")
    assert data["recommendation"] == data["verdict"]["recommendation"]
