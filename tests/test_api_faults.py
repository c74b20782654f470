"""API faults: simulators and judges survive a fault schedule from a local fake server.

Schedule: 429, 500, a hang past the client timeout, a 200 with a body that is not JSON,
a dropped connection, an empty completion, then success. Nothing crashes, every
request is accounted for (real replies + fallbacks = requests; every judged pair has
an outcome), the counts are metrics, messages name the endpoint really used and the
real number of tries, and the API key appears in no output and no file.

Issue 28: a follow-up that could not be obtained is marked (``simulator.last_failed``),
empty replies are retried like errors, a total outage stops the run with one line naming
the endpoint and the resume command (exit 2), a flapping server does not, and a judge
never caches an empty reply.
"""

import json
import logging
import re

import pytest

from sdpo.cli import main
from sdpo.feedback.simulators import (
    FALLBACK_FOLLOWUP,
    ClaudeStyleUserSimulator,
    OpenAICompatibleUserSimulator,
    SimulatorOutageError,
)
from tests.test_simulators import FakeLLMServer

SECRET = "sk-fault-test-SECRET-4711"
SCHEDULE = [429, 500, "hang", "malformed", "disconnect", "empty"]
RETRIED = 6  # every fault is retried, the empty completion too

APIS = {
    "claude": (ClaudeStyleUserSimulator, "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", ""),
    "openai": (OpenAICompatibleUserSimulator, "OPENAI_API_KEY", "OPENAI_BASE_URL", "/v1"),
}
FAST = dict(timeout=0.5, retry_backoff=0.01)


def _no_secret_anywhere(tmp_path, *texts):
    for text in texts:
        assert SECRET not in text
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


@pytest.mark.parametrize("api", APIS)
def test_simulator_survives_the_fault_schedule(monkeypatch, caplog, capsys, tmp_path, api):
    cls, key_env, _, suffix = APIS[api]
    monkeypatch.setenv(key_env, SECRET)
    caplog.set_level(logging.DEBUG)
    n = 8
    with FakeLLMServer(failures=SCHEDULE, hang=1.5, delay=0.01) as server:
        sim = cls("no_emojis", base_url=server.url + suffix, max_concurrency=2, max_retries=6, **FAST)
        replies = sim.followups([f"question {i}" for i in range(n)], ["Here you go 🎉"] * n)
    assert len(replies) == n
    real = sum(r == server.reply for r in replies)
    assert real + sim.stats.fallbacks == n == sim.stats.requests  # every sample accounted for
    assert (real, sim.stats.fallbacks, sim.stats.empty, sim.stats.failed) == (n, 0, 0, 0)
    assert replies.count(FALLBACK_FOLLOWUP) == 0 and sim.last_failed == [False] * n
    assert sim.stats.retries == RETRIED and server.requests == n + RETRIED
    metrics = sim.stats.as_metrics()
    assert metrics["simulator/retries"] == RETRIED and metrics["simulator/empty_replies"] == 0
    assert metrics["simulator/failed_requests"] == 0 and metrics["simulator/fallbacks"] == 0
    assert all(SECRET in (h or "") for h in server.auth_headers)  # the key was sent...
    out = capsys.readouterr()
    _no_secret_anywhere(tmp_path, caplog.text, out.out, out.err, repr(sim))  # ...and shown nowhere


@pytest.mark.parametrize("api", APIS)
def test_simulator_exhausted_retries_give_counted_fallbacks_naming_the_real_endpoint(monkeypatch, caplog, api):
    cls, key_env, url_env, suffix = APIS[api]
    monkeypatch.setenv(key_env, SECRET)
    with FakeLLMServer(failures=["malformed", "hang", 503, 429, "disconnect"], hang=1.5, delay=0.01) as server:
        # no base_url argument: the SDK takes it from its environment variable, and messages must say so
        monkeypatch.setenv(url_env, server.url + suffix)
        sim = cls("no_emojis", max_concurrency=1, max_retries=2, **FAST)
        replies = sim.followups(["q1", "q2", "q3"], ["a1", "a2", "a3"])
    # q1: malformed, hang, 503 -> failed after 3 tries; q2: 429, disconnect, then a reply; q3: a reply
    assert replies == [FALLBACK_FOLLOWUP, server.reply, server.reply]
    assert sim.last_failed == [True, False, False]  # the fallback is marked, not passed off as the user's
    assert (sim.stats.requests, sim.stats.failed, sim.stats.fallbacks, sim.stats.retries) == (3, 1, 1, 4)
    assert server.requests == 3 + 1 + 2 + 1
    assert sim.stats.as_metrics()["simulator/failed_requests"] == 1
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warning) == 1
    assert f"at {server.url + suffix}): 1 of 3 requests failed after 3 tries (HTTP 503)" in warning[0]
    assert "default endpoint" not in caplog.text and "retries" not in warning[0]
    assert SECRET not in caplog.text


@pytest.mark.parametrize("api", APIS)
def test_a_rejected_request_is_not_retried_and_the_message_says_one_try(monkeypatch, caplog, api):
    cls, key_env, _, suffix = APIS[api]
    monkeypatch.setenv(key_env, SECRET)
    with FakeLLMServer(failures=[400, 500], delay=0.01) as server:
        sim = cls("no_emojis", base_url=server.url + suffix, max_concurrency=1, max_retries=4, **FAST)
        replies = sim.followups(["q1", "q2"], ["a1", "a2"])
    assert replies == [FALLBACK_FOLLOWUP, server.reply] and server.requests == 3  # 400 once; 500 retried
    assert sim.last_failed == [True, False]
    assert (sim.stats.failed, sim.stats.retries, sim.stats.fallbacks) == (1, 1, 1)
    assert "1 of 2 requests failed after 1 try (HTTP 400)" in caplog.text


def _between(text, tag):
    return re.search(f"<{tag}>\n(.*?)\n</{tag}>", text, re.S).group(1)


def _style_judge(text):
    """A judge that prefers the answer without emojis, and says tie when both are alike."""
    a, b = "🎉" in _between(text, "answer_A"), "🎉" in _between(text, "answer_B")
    return "B" if a and not b else "A" if b and not a else "tie"


def _eval_setup(tmp_path, monkeypatch):
    """A run directory with two checkpoints whose answers are fixed (no model loads, no generation)."""
    import sdpo.eval.checkpoints as checkpoints
    from sdpo.data.prompts import PromptRecord, write_prompts

    prompts = [PromptRecord([{"role": "user", "content": f"Tell me about topic {i}."}]) for i in range(6)]
    data = write_prompts(prompts, tmp_path / "prompts.jsonl")
    run = tmp_path / "run"
    answers = {
        "tiny-random": ["Sure 🎉 here it is"] * 6,
        str(run / "checkpoint-1"): ["Plain answer"] * 6,
        str(run / "checkpoint-2"): ["Well 🎉 okay"] * 6,  # the same style as the baseline: all ties
    }
    monkeypatch.setattr(checkpoints, "answers_for", lambda model_id, prompts, *a, **k: answers[model_id])
    (run / "checkpoint-1").mkdir(parents=True)
    (run / "checkpoint-2").mkdir()
    for step in (1, 2):
        (run / f"checkpoint-{step}" / "trainer_state.json").write_text(f'{{"step": {step}}}')
    return run, data


def _no_nan(path):
    def refuse(name):
        raise AssertionError(f"{path} holds {name}")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.mark.parametrize("api", APIS)
def test_eval_with_an_api_judge_survives_faults_counts_them_and_resumes_from_its_cache(
        monkeypatch, capsys, caplog, tmp_path, api):
    cls, key_env, _, suffix = APIS[api]
    monkeypatch.setenv(key_env, SECRET)
    run, data = _eval_setup(tmp_path, monkeypatch)
    args = ["eval", "checkpoints", "--run_dir", str(run), "--data_path", str(data), "--ckpts", "all",
            "--baseline", "tiny-random", "--judge", "claude" if api == "claude" else "openai",
            "--style", "no_emojis", "--eval_n", "6", "--max_new_tokens", "8", "--judge_concurrency", "1",
            "--judge_max_retries", "2", "--judge_timeout", "0.5", "--judge_retry_backoff", "0.01"]
    # with one request at a time the schedule hits known requests: the first pair (checkpoint-1 as A)
    # fails three times; the second is retried twice and answered; the third gets an empty reply
    # twice (retried like any fault) and then none at all: an unparsed verdict, never cached
    schedule = ["malformed", "hang", 500, 429, "disconnect", "empty", "empty", "empty"]
    with FakeLLMServer(failures=schedule, reply=_style_judge, hang=1.5, delay=0.0) as server:
        assert main([*args, "--judge_base_url", server.url + suffix]) == 0
    first = capsys.readouterr()
    pairs = 2 * 6 * 2  # checkpoints x prompts x orders
    assert server.requests == pairs + 2 + 2 + 2
    result = _no_nan(run / "eval" / "winrates.json")
    rows = {r["name"]: r for r in result["results"]}
    one, two = rows["checkpoint-1"], rows["checkpoint-2"]
    for r in (one, two):  # every pair has an outcome
        assert r["wins"] + r["losses"] + r["ties"] + r["unparsed"] + r["failed"] == r["n"] == 6
    assert (one["wins"], one["failed"], one["unparsed"]) == (4, 1, 1) and one["win_rate"] == 1.0
    assert (two["ties"], two["win_rate"], two["se_binomial"], two["se_bootstrap"]) == (6, None, None, None)
    assert result["judge_stats"] == {"requests": pairs, "cached": 0, "retries": 6, "failed": 1, "unparsed": 1}
    assert result["judge_endpoint"] == server.url + suffix
    assert f"1 verdicts failed (no reply from {server.url + suffix} after up to 3 tries)" in first.out
    assert f"at {server.url + suffix}): 1 of 6 requests failed after 3 tries (" in caplog.text
    assert "NaN" not in (run / "eval" / "winrates.csv").read_text()

    # the same command again: only the failed and the empty request are asked; the cached replies are not
    with FakeLLMServer(reply=_style_judge, delay=0.0) as server2:
        assert main([*args, "--judge_base_url", server2.url + suffix]) == 0
    second = capsys.readouterr()
    assert server2.requests == 2
    result = _no_nan(run / "eval" / "winrates.json")
    one = {r["name"]: r for r in result["results"]}["checkpoint-1"]
    assert (one["wins"], one["failed"], one["unparsed"]) == (6, 0, 0)
    assert result["judge_stats"] == {"requests": 2, "cached": pairs - 2, "retries": 0, "failed": 0, "unparsed": 0}
    assert all(SECRET in (h or "") for h in server.auth_headers + server2.auth_headers)
    _no_secret_anywhere(tmp_path, first.out, first.err, second.out, second.err, caplog.text)


@pytest.mark.parametrize("api", APIS)
def test_empty_replies_are_retried_like_errors(monkeypatch, api):
    cls, key_env, _, suffix = APIS[api]
    monkeypatch.setenv(key_env, SECRET)
    with FakeLLMServer(failures=["empty", "empty", "empty", "empty"], delay=0.0) as server:
        sim = cls("no_emojis", base_url=server.url + suffix, max_concurrency=1, max_retries=2, **FAST)
        replies = sim.followups(["q1", "q2"], ["a1", "a2"])
    # q1: empty three times -> the fallback, marked and counted as empty; q2: empty once, then a reply
    assert replies == [FALLBACK_FOLLOWUP, server.reply] and server.requests == 3 + 2
    assert sim.last_failed == [True, False]
    assert (sim.stats.empty, sim.stats.failed, sim.stats.fallbacks, sim.stats.retries) == (1, 0, 1, 3)


@pytest.mark.parametrize("api", APIS)
def test_a_total_outage_stops_with_one_line_naming_the_endpoint(monkeypatch, api):
    cls, key_env, _, suffix = APIS[api]
    monkeypatch.setenv(key_env, SECRET)
    with FakeLLMServer(failures=[503] * 100, delay=0.0) as server:
        sim = cls("no_emojis", base_url=server.url + suffix, max_concurrency=1, max_retries=1,
                  max_consecutive_failures=3, **FAST)
        with pytest.raises(SimulatorOutageError) as info:
            sim.followups([f"q{i}" for i in range(10)], ["a"] * 10)
        sent = server.requests
    message = str(info.value)
    assert sent == 3 * 2  # three requests of two tries each; the other seven are never sent
    assert len(message.splitlines()) == 1 and SECRET not in message
    assert server.url + suffix in message and sim.model in message
    assert "3 requests in a row failed" in message and "--resume_from_checkpoint last" in message
    assert "HTTP 503" in message


@pytest.mark.parametrize("api", APIS)
def test_a_flapping_server_does_not_stop_the_run(monkeypatch, api):
    cls, key_env, _, suffix = APIS[api]
    monkeypatch.setenv(key_env, SECRET)
    # every other request fails for good (both its tries): never 2 in a row, so the run goes on
    schedule = []
    for _ in range(6):
        schedule += [500, 500, 200]
    with FakeLLMServer(failures=schedule, delay=0.0) as server:
        sim = cls("no_emojis", base_url=server.url + suffix, max_concurrency=1, max_retries=1,
                  max_consecutive_failures=2, **FAST)
        for _ in range(3):
            replies = sim.followups(["q1", "q2", "q3", "q4"], ["a"] * 4)
            assert replies == [FALLBACK_FOLLOWUP, server.reply] * 2
            assert sim.last_failed == [True, False, True, False]
    assert sim.stats.failed == 6 and sim.stats.fallbacks == 6 and sim.stats.requests == 12
    # and 0 never stops
    with FakeLLMServer(failures=[500] * 40, delay=0.0) as server:
        sim = cls("no_emojis", base_url=server.url + suffix, max_concurrency=2, max_retries=0,
                  max_consecutive_failures=0, **FAST)
        assert sim.followups([f"q{i}" for i in range(20)], ["a"] * 20) == [FALLBACK_FOLLOWUP] * 20
        assert sim.last_failed == [True] * 20


def test_train_online_stops_on_an_outage_with_one_line_and_exit_2(monkeypatch, capsys, tmp_path):
    from sdpo.data.prompts import PromptRecord, write_prompts

    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    data = write_prompts([PromptRecord([{"role": "user", "content": f"Question {i}?"}]) for i in range(4)],
                         tmp_path / "prompts.jsonl")
    with FakeLLMServer(failures=[500] * 100, delay=0.0) as server:
        code = main(["train-online", "--model_name_or_path", "tiny-random", "--train_jsonl", str(data),
                     "--output_dir", str(tmp_path / "run"), "--simulator", "openai",
                     "--simulator_base_url", server.url + "/v1", "--simulator_max_retries", "0",
                     "--simulator_retry_backoff", "0.01", "--simulator_max_consecutive_failures", "2",
                     "--simulator_concurrency", "1", "--per_device_train_batch_size", "2", "--max_steps", "2",
                     "--max_new_tokens", "4", "--summary_prompts", "0", "--report_to", "none",
                     "--progress", "false"])
        sent = server.requests
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and sent == 2
    assert err[-1].startswith("sdpo train-online: error: ")
    assert f"at {server.url}/v1" in err[-1] and "--resume_from_checkpoint last" in err[-1]
    assert "Traceback" not in "\n".join(err)
    _no_secret_anywhere(tmp_path, *err)


def test_judge_never_caches_an_empty_reply(tmp_path):
    from sdpo.judges.pairwise import CallableJudge

    calls = []
    answers = iter([["A", "", None], ["B"], ["B"]])

    def fn(texts):
        calls.append(len(texts))
        return next(answers)[: len(texts)]

    judge = CallableJudge("no_emojis", fn=fn, name="fn")
    judge.use_cache(tmp_path)
    assert judge.judge(["p"] * 3, ["x1", "x2", "x3"], ["y"] * 3) == ["A", None, "failed"]
    # the empty and the missing reply are asked again; the verdict is not cached as 'unparsed'
    assert judge.judge(["p"] * 2, ["x1", "x2"], ["y"] * 2) == ["A", "B"]
    assert calls == [3, 1] and judge.stats.cached == 1


def test_judge_reply_cache_ignores_a_line_cut_by_a_crash(tmp_path):
    from sdpo.judges.pairwise import CallableJudge, ReplyCache

    calls = []

    def fn(texts):
        calls.append(len(texts))
        return ["A"] * len(texts)

    judge = CallableJudge("no_emojis", fn=fn, name="fn")
    path = judge.use_cache(tmp_path).path
    judge.chunk_size = 2
    assert judge.judge(["p"] * 3, ["x1", "x2", "x3"], ["y"] * 3) == ["A"] * 3 and calls == [2, 1]
    with path.open("a") as f:
        f.write('{"key": "abc", "rep')  # a crash in the middle of a line
    judge.cache = ReplyCache(path)
    assert judge.judge(["p"] * 4, ["x1", "x2", "x3", "x4"], ["y"] * 4) == ["A"] * 4
    assert calls == [2, 1, 1] and judge.stats.cached == 3 and judge.stats.requests == 4


def test_json_safe_turns_nan_into_null():
    import math

    import numpy as np

    from sdpo.judges.stats import json_safe, win_rate_summary

    summary = win_rate_summary(["tie", "tie", "unparsed"])
    assert math.isnan(summary["win_rate"])
    safe = json_safe({"rows": [summary], "x": np.float64("inf"), "y": (1.5, float("nan"))})
    text = json.dumps(safe, allow_nan=False)
    assert json.loads(text)["rows"][0]["win_rate"] is None
    assert safe["x"] is None and safe["y"] == [1.5, None]
