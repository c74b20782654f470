import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sdpo.cli import main
from sdpo.data.prompts import PromptRecord, write_prompts
from sdpo.eval.checkpoints import GenerationCache, answers_for
from sdpo.judges.pairwise import CallableJudge, RuleJudge, judge_both_orders, parse_verdict
from sdpo.judges.stats import win_rate_summary

ROOT = Path(__file__).resolve().parents[1]


def test_always_a_judge_gives_only_ties():
    judge = CallableJudge("no_emojis", fn=lambda texts: ["A"] * len(texts))
    outcomes = judge_both_orders(judge, ["p"] * 5, ["x"] * 5, ["y"] * 5)
    assert outcomes == ["tie"] * 5
    assert win_rate_summary(outcomes)["coverage"] == 0.0


def test_rule_judge_exact_win_rate_and_binomial_se():
    judge = RuleJudge("no_emojis")
    # real answers (the judge lets a non-answer lose first; see tests/test_degeneracy.py)
    clean = "Water the garden plants early in the morning, at the roots, until the soil is damp."
    emoji = clean + " 🎉"
    same = "Garden plants want water at their roots in the cool morning hours, about twice a week."
    candidate = [clean] * 6 + [emoji] * 2 + [same] * 2
    baseline = [emoji] * 6 + [clean] * 2 + [same] * 2
    outcomes = judge_both_orders(judge, ["How should I water my garden plants?"] * 10, candidate, baseline)
    assert outcomes == ["win"] * 6 + ["loss"] * 2 + ["tie"] * 2
    s = win_rate_summary(outcomes)
    assert (s["wins"], s["losses"], s["ties"], s["unparsed"]) == (6, 2, 2, 0)
    assert s["win_rate"] == 0.75 and s["coverage"] == 0.8
    assert s["se_binomial"] == pytest.approx(math.sqrt(0.75 * 0.25 / 8))


def test_bootstrap_se_on_known_data():
    outcomes = ["win"] * 300 + ["loss"] * 100 + ["tie"] * 100
    s = win_rate_summary(outcomes, n_bootstrap=5000, seed=1)
    assert s["se_bootstrap"] == pytest.approx(s["se_binomial"], rel=0.1)
    # a float64 reference bootstrap with another seed agrees too
    rng = np.random.default_rng(7)
    codes = np.array([1] * 300 + [-1] * 100 + [0] * 100)
    rates = []
    for _ in range(2000):
        sample = codes[rng.integers(0, len(codes), len(codes))]
        rates.append((sample == 1).sum() / (sample != 0).sum())
    assert s["se_bootstrap"] == pytest.approx(np.std(rates, ddof=1), rel=0.1)


@pytest.mark.parametrize("reply, verdict", [
    ("A", "A"), (" b.", "B"), ("Tie", "tie"), ("**A**", "A"), ("The answer is B", "B"),
    ("Verdict: tie", "tie"), ("I prefer A because it is shorter.", "A"), ("", None), ("A or B, hard to say", None),
    ("Neither", None),
])
def test_parse_verdict(reply, verdict):
    assert parse_verdict(reply) == verdict


def test_unparseable_replies_are_counted():
    judge = CallableJudge("no_emojis", fn=lambda texts: ["hmm"] * len(texts))
    outcomes = judge_both_orders(judge, ["p"] * 3, ["x"] * 3, ["y"] * 3)
    assert outcomes == ["unparsed"] * 3 and judge.unparsed == 6
    assert win_rate_summary(outcomes)["unparsed"] == 3


def test_generations_are_cached(tmp_path, tiny):
    model, tok = tiny
    calls = []

    def loader(name):
        calls.append(name)
        return model, tok

    prompts = [PromptRecord([{"role": "user", "content": f"question {i}"}]) for i in range(3)]
    cache = GenerationCache(tmp_path)
    first = answers_for("m1", prompts, cache, max_new_tokens=4, max_prompt_tokens=64, loader=loader)
    second = answers_for("m1", prompts, cache, max_new_tokens=4, max_prompt_tokens=64, loader=loader)
    assert first == second and calls == ["m1"]  # the model was not loaded the second time
    answers_for("m1", prompts + [PromptRecord([{"role": "user", "content": "new"}])], cache, max_new_tokens=4,
                max_prompt_tokens=64, loader=loader)
    assert calls == ["m1", "m1"]  # only a missing prompt triggers generation


def test_end_to_end_on_tiny_checkpoints(tmp_path, capsys):
    prompts = write_prompts([PromptRecord([{"role": "user", "content": f"Say something about topic {i}."}])
                             for i in range(6)], tmp_path / "p.jsonl")
    run = tmp_path / "run"
    assert main(["train-online", "--train_jsonl", str(prompts), "--model_name_or_path", "tiny-random",
                 "--simulator", "rule", "--style", "no_emojis", "--max_steps", "2", "--save_steps", "1",
                 "--per_device_train_batch_size", "2", "--max_new_tokens", "4", "--summary_prompts", "0",
                 "--progress", "false", "--output_dir", str(run)]) == 0
    capsys.readouterr()
    args = ["eval", "checkpoints", "--run_dir", str(run), "--data_path", str(prompts), "--ckpts", "1 2",
            "--baseline", "tiny-random", "--judge", "rule", "--style", "no_emojis", "--eval_n", "4",
            "--max_new_tokens", "4"]
    assert main(args) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert "checkpoint-1" in out and "checkpoint-2" in out
    # one line per stage, and progress bars (stderr) for generating and judging
    assert "baseline tiny-random: generating 4 of 4 answers" in out and "checkpoint-2: generating 4 of 4" in out
    assert "generate checkpoint-1" in captured.err and "judge checkpoint-2" in captured.err
    assert "95% Wilson" in out
    for name in ("winrates.csv", "winrates.json", "winrates.png"):
        assert (run / "eval" / name).is_file()
    assert main(args[:-2] + ["--ckpts", "7"]) == 2
    assert "no checkpoint for step(s) [7]" in capsys.readouterr().err
    # ties and n first, a warning under 20 decisive pairs, one verdict line per checkpoint
    assert "verdict: too few prompts - checkpoint-2 vs tiny-random on n=4 prompts" in out
    assert "warning: fewer than 20 decisive pairs" in out
    header = next(line for line in out.splitlines() if "95% Wilson" in line)
    assert header.split()[1:5] == ["n", "T", "W", "L"]

    # the run's own settings: baseline (its starting model), persona, answer length from its saved config
    assert main(["eval", "checkpoints", "--run_dir", str(run), "--data_path", str(prompts), "--ckpts", "2",
                 "--eval_n", "4", "--output_dir", str(tmp_path / "eval-run-settings")]) == 0
    out = capsys.readouterr().out
    assert "baseline=tiny-random (run)" in out and "style=no_emojis (run)" in out and "max_new_tokens=4 (run)" in out
    assert "sdpo_online_config.json" in out and "vs tiny-random" in out
    assert main(["eval", "checkpoints", "--run_dir", str(run), "--data_path", str(prompts), "--ckpts", "2",
                 "--eval_n", "4", "--style", "exclamation", "--output_dir", str(tmp_path / "eval-other")]) == 0
    assert "warning: --style exclamation differs from the run's style=no_emojis" in capsys.readouterr().out

    # the same evaluation with the generations shared by 2 processes (accelerate, gloo)
    import json

    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29547",
           "-m", "sdpo.cli", *args, "--output_dir", str(tmp_path / "eval2")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, env=os.environ.copy())
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("win rate vs tiny-random") == 1  # one report, from the main process
    one = json.loads((run / "eval" / "winrates.json").read_text())["results"]
    two = json.loads((tmp_path / "eval2" / "winrates.json").read_text())["results"]
    assert one == two
    cached = list((tmp_path / "eval2" / "generations").glob("*.jsonl"))
    assert len(cached) == 3 and all(len(p.read_text().splitlines()) == 4 for p in cached)


def test_eval_scripts_dry_run():
    env = {k: v for k, v in os.environ.items() if k not in ("ANTHROPIC_API_KEY",)}
    env.update(SDPO_BIN=str(Path(sys.executable).parent / "sdpo"), RUN_DIR="runs/x", ANTHROPIC_API_KEY="sk-hidden")
    done = subprocess.run(["bash", "scripts/eval_checkpoints.sh", "--dry-run"], capture_output=True, text=True,
                          cwd=ROOT, env=env)
    assert done.returncode == 0 and "sk-hidden" not in done.stdout
    for part in ("--judge claude", "claude-haiku-4-5-20251001", "--eval_n 256", "--baseline Qwen/Qwen3-8B"):
        assert part in done.stdout
    done = subprocess.run(["bash", "scripts/eval_checkpoints_tldr.sh", "--dry-run"], capture_output=True, text=True,
                          cwd=ROOT, env={**env, "CKPTS": "3 6", "STYLE": "poetic"})
    assert "--judge local" in done.stdout and "--style poetic" in done.stdout and "--ckpts 3\\ 6" in done.stdout


def test_local_judge_runs_and_counts_unparsed(tiny):
    from sdpo.judges.pairwise import LocalJudge

    model, tok = tiny
    judge = LocalJudge("no_emojis", model=model, tokenizer=tok, batch_size=2)
    outcomes = judge_both_orders(judge, ["p1", "p2", "p3"], ["a", "b", "c"], ["x", "y", "z"])
    assert len(outcomes) == 3 and set(outcomes) <= {"win", "loss", "tie", "unparsed"}
    n_unparsed = sum(o == "unparsed" for o in outcomes)
    # each unparsed outcome has one or two unparseable replies; parsed outcomes have none
    assert n_unparsed <= judge.unparsed <= 2 * n_unparsed


@pytest.mark.parametrize("api", ["claude", "openai"])
def test_api_judges_through_a_fake_server(monkeypatch, api):
    from sdpo.feedback.simulators import ClaudeStyleUserSimulator, OpenAICompatibleUserSimulator
    from sdpo.judges.pairwise import APIJudge
    from tests.test_simulators import FakeLLMServer

    cls, env, suffix = ((ClaudeStyleUserSimulator, "ANTHROPIC_API_KEY", "") if api == "claude"
                        else (OpenAICompatibleUserSimulator, "OPENAI_API_KEY", "/v1"))
    monkeypatch.setenv(env, "sk-test")
    with FakeLLMServer(failures=[429], reply="A") as server:
        judge = APIJudge("no_emojis", client=cls("no_emojis", base_url=server.url + suffix, max_retries=3))
        outcomes = judge_both_orders(judge, ["p"] * 4, ["x"] * 4, ["y"] * 4)
    assert outcomes == ["tie"] * 4  # "A" in both orders: position bias cancels to ties
    assert server.requests == 8 + 1
    assert "judge style only" in server.bodies[0]["messages"][0]["content"].lower()
    assert "addresses the request" in server.bodies[0]["messages"][0]["content"]


# --- win-rate intervals and the win-rate figure (issue 19, item 3) ---

def _wilson_reference(k: int, n: int, z: float) -> tuple[float, float]:
    """The Wilson interval's ends as the roots of (k/n - p)^2 = z^2 p (1 - p) / n, in float64."""
    p_hat = k / n
    a = 1 + z * z / n
    b = -(2 * p_hat + z * z / n)
    c = p_hat * p_hat
    disc = max(b * b - 4 * a * c, 0.0)
    return (-b - math.sqrt(disc)) / (2 * a), (-b + math.sqrt(disc)) / (2 * a)


def test_wilson_interval_against_references():
    from scipy.stats import binomtest, norm

    from sdpo.judges.stats import Z95, wilson_interval

    assert Z95 == pytest.approx(norm.ppf(0.975), abs=1e-12)
    rng = np.random.default_rng(3)
    for _ in range(200):
        n = int(rng.integers(1, 400))
        k = int(rng.integers(0, n + 1))
        low, high = wilson_interval(k, n)
        ref_low, ref_high = _wilson_reference(k, n, float(norm.ppf(0.975)))
        assert (low, high) == pytest.approx((ref_low, ref_high), abs=1e-12)
        ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert (low, high) == pytest.approx((ci.low, ci.high), abs=1e-9)
        assert 0.0 <= low <= k / n <= high <= 1.0
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def test_few_decisive_pairs_are_not_plus_minus_zero():
    s = win_rate_summary(["win"] + ["tie"] * 7)
    assert s["win_rate"] == 1.0 and s["se_binomial"] == 0.0 and s["decisive"] == 1  # the reference's SE: 0
    assert s["wilson95_high"] == 1.0 and s["wilson95_low"] == pytest.approx(_wilson_reference(1, 1, 1.959963984540054)[0])
    assert s["wilson95_low"] < 0.25  # one decisive pair says little
    s = win_rate_summary(["loss"] * 4)
    assert (s["win_rate"], s["wilson95_low"], s["decisive"]) == (0.0, 0.0, 4) and s["wilson95_high"] > 0.4


def _row(name, step, outcomes):
    return {"name": name, "step": step, "model": "m", **win_rate_summary(outcomes)}


META = {"baseline": "tiny-random", "judge": "rule", "style": "no_emojis", "eval_n": 8}


def _texts(fig):
    return [t.get_text() for ax in fig.axes for t in ax.texts] + [
        t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]


def test_plot_all_ties_says_so_with_a_sensible_axis(tmp_path):
    import json

    import matplotlib.pyplot as plt

    from sdpo.eval.checkpoints import plot_winrates, write_results

    rows = [_row("checkpoint-3", 3, ["tie"] * 8)]
    fig = plot_winrates(rows, META)
    ax = fig.axes[0]
    assert any("no decisive pairs" in t for t in _texts(fig))
    low, high = ax.get_xlim()
    assert low < 3 < high and high - low >= 2  # not -0.04..0.04 around nothing
    assert list(ax.get_xticks()) == [3]
    assert ax.get_ylim() == (-5, 105)
    plt.close(fig)
    write_results(rows, tmp_path, META)
    [result] = json.loads((tmp_path / "winrates.json").read_text())["results"]
    assert result["decisive"] == 0 and result["wilson95_low"] is None and result["win_rate"] is None
    assert "decisive,win_rate,se_binomial,se_bootstrap,wilson95_low,wilson95_high" in (
        tmp_path / "winrates.csv").read_text().splitlines()[0]


def test_plot_oracle_at_100_percent_is_inside_the_frame_and_small_n_shows_its_interval():
    import matplotlib.pyplot as plt

    from sdpo.eval.checkpoints import plot_winrates

    rows = [_row("checkpoint-3", 3, ["win"] * 2 + ["tie"] * 6), _row("checkpoint-6", 6, ["win"] * 3 + ["loss"]),
            _row("oracle (persona in system prompt)", None, ["win"] * 4 + ["tie"] * 4)]
    fig = plot_winrates(rows, META)
    ax = fig.axes[0]
    y0, y1 = ax.get_ylim()
    assert y0 < 0 and y1 > 100  # 0 % and 100 % are inside the frame, not on it
    oracle = [line for line in ax.get_lines() if "oracle" in line.get_label()]
    assert len(oracle) == 1 and set(oracle[0].get_ydata()) == {100.0} and oracle[0].get_marker() == "D"
    texts = _texts(fig)
    # the ties stay visible next to each rate
    assert "2W/0L/6T (n=2)" in texts and "3W/1L/0T (n=4)" in texts
    assert any("100% (4W/0L/4T (n=4))" in t for t in texts)
    assert "8 prompts" in ax.get_title()
    # the error bar of 2 of 2 wins reaches far below 100 %: the Wilson interval, not a binomial SE of 0
    bars = [c for c in ax.collections if c.get_segments() and len(c.get_segments()) == 2]
    ends = {round(seg[0][0]): (min(seg[:, 1]), max(seg[:, 1])) for c in bars for seg in c.get_segments()}
    expected = win_rate_summary(["win"] * 2)
    assert ends[3] == pytest.approx((100 * expected["wilson95_low"], 100.0))
    assert ends[3][0] < 50
    plt.close(fig)


def test_a_model_load_error_names_the_option(tmp_path, capsys):
    from tests.conftest import error_lines

    prompts = write_prompts([PromptRecord([{"role": "user", "content": "hi"}])], tmp_path / "p.jsonl")
    (tmp_path / "run" / "checkpoint-1").mkdir(parents=True)
    (tmp_path / "run" / "checkpoint-1" / "trainer_state.json").write_text('{"step": 1}')
    args = ["eval", "checkpoints", "--run_dir", str(tmp_path / "run"), "--data_path", str(prompts), "--ckpts", "1",
            "--style", "no_emojis", "--eval_n", "1"]
    assert main([*args, "--judge", "rule", "--baseline", str(tmp_path / "no-such-model")]) == 2
    err = "\n".join(error_lines(capsys.readouterr().err))
    assert err.startswith("sdpo eval: error: --baseline:") and "no-such-model" in err and "\n" not in err
    assert main([*args, "--judge", "local", "--judge_model", str(tmp_path / "no-such-judge"),
                 "--baseline", "tiny-random"]) == 2
    err = "\n".join(error_lines(capsys.readouterr().err))
    assert err.startswith("sdpo eval: error: --judge_model:") and "no-such-judge" in err
