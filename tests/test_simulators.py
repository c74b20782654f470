import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from sdpo.feedback.personas import PERSONAS, UnknownPersonaError, persona_description
from sdpo.feedback.simulators import (
    FALLBACK_FOLLOWUP,
    ClaudeStyleUserSimulator,
    MissingAPIKeyError,
    OpenAICompatibleUserSimulator,
    RuleUserSimulator,
    SimulatorAPIError,
    StyleUserSimulator,
    rule_score,
    rule_violations,
)

SECRET = "sk-test-SECRET-never-printed-123"


def test_personas_cover_the_reference_identifiers():
    combos = [f"{a}_{b}_{c}" for a in ("concise", "detailed") for b in ("casual", "professional")
              for c in ("beginner", "expert")]
    others = ("poetic no_punctuation no_emojis less_filler_praise_sycophancy answer_directly_reduce_formatting "
              "no_first_person clarification_first single_answer writing_tics formatting no_sycophantic "
              "sycophantic_and_praise answer_first no_filler_followup high_initiative committing no_lists more_lists "
              "more_formatting less_formatting opinionated exclamation").split()
    assert set(PERSONAS) == set(combos) | set(others)
    assert all(len(text) > 30 for text in PERSONAS.values())
    with pytest.raises(UnknownPersonaError, match="unknown style 'nope'; valid styles: concise_casual_beginner"):
        persona_description("nope")
    with pytest.raises(UnknownPersonaError):
        RuleUserSimulator("nope")


def test_rule_simulator_is_deterministic_and_specific():
    sim = RuleUserSimulator("no_emojis")
    a = sim.followups(["Name my shop"], ["The Daily Grind ☕✨"])
    b = sim.followups(["Name my shop"], ["The Daily Grind"])
    assert a == ["Please don't use emojis."] and b == ["Thanks, that's just what I wanted."]
    assert rule_violations("concise_casual_beginner", "word " * 100) == [
        "That's too long, keep it short.", "Can you say that more casually?"]
    assert rule_score("no_lists", "- a\n- b") == 0.0 and rule_score("no_lists", "a and b") == 1.0
    assert sim.stats.requests == 2 and sim.stats.fallbacks == 0


def test_local_simulator_batched_generation(tiny):
    model, tok = tiny
    sim = StyleUserSimulator("no_emojis", model=model, tokenizer=tok, max_new_tokens=8, batch_size=3)
    prompts = [f"question {i}" for i in range(5)]
    replies = sim.followups(prompts, ["answer 🎉"] * 5)
    assert len(replies) == 5 and all(isinstance(r, str) and r for r in replies)


class FakeLLMServer:
    """Speaks just enough of the Anthropic Messages and OpenAI chat-completions APIs.

    ``failures`` is a fault schedule served to the first requests, in arrival order: an
    HTTP status code, ``"hang"`` (answer only after ``hang`` seconds, past a short client
    timeout), ``"malformed"`` (200 with a body that is not JSON), ``"disconnect"`` (close
    the connection without answering) or ``"empty"`` (200 with an empty completion).
    ``reply`` is a text, or a function of the request's last message.
    """

    def __init__(self, failures=(), delay=0.05, empty_for=(), reply="Too many emojis.", hang=2.0):
        self.failures = list(failures)
        self.delay = delay
        self.hang = hang
        self.empty_for = set(empty_for)
        self.reply = reply
        self.requests = 0
        self.active = 0
        self.max_active = 0
        self.auth_headers = []
        self.bodies = []
        self.served = []  # what each request got: 200 or the fault
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests += 1
                    server.active += 1
                    server.max_active = max(server.max_active, server.active)
                    server.bodies.append(body)
                    server.auth_headers.append(self.headers.get("x-api-key") or self.headers.get("authorization"))
                    fault = server.failures.pop(0) if server.failures else 200
                    server.served.append(fault)
                try:
                    time.sleep(server.hang if fault == "hang" else server.delay)
                    if fault == "disconnect":
                        self.close_connection = True
                        self.connection.shutdown(2)
                        return
                    if fault == "malformed":
                        self._send(200, None, raw=b'{"id": "c1", "choices": [{"message": {"content": "trunc')
                        return
                    if isinstance(fault, int) and fault != 200:
                        self._send(fault, {"error": {"type": "overloaded", "message": "try later"}},
                                   {"retry-after-ms": "10", "retry-after": "0"})
                        return
                    text = body["messages"][-1]["content"]
                    empty = fault == "empty" or any(marker in text for marker in server.empty_for)
                    reply = "" if empty else server.reply(text) if callable(server.reply) else server.reply
                    if self.path.endswith("/messages"):
                        payload = {"id": "m1", "type": "message", "role": "assistant", "model": body["model"],
                                   "content": [{"type": "text", "text": reply}], "stop_reason": "end_turn",
                                   "stop_sequence": None, "usage": {"input_tokens": 1, "output_tokens": 1}}
                    else:
                        payload = {"id": "c1", "object": "chat.completion", "created": 0, "model": body["model"],
                                   "choices": [{"index": 0, "finish_reason": "stop",
                                                "message": {"role": "assistant", "content": reply}}]}
                    self._send(200, payload)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
                    pass
                finally:
                    with server.lock:
                        server.active -= 1

            def _send(self, status, payload, headers=None, raw=None):
                data = raw if raw is not None else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


API_SIMS = [
    (ClaudeStyleUserSimulator, "ANTHROPIC_API_KEY", lambda url: url),
    (OpenAICompatibleUserSimulator, "OPENAI_API_KEY", lambda url: url + "/v1"),
]


@pytest.mark.parametrize("cls, env, base", API_SIMS)
def test_api_simulator_retries_bounds_concurrency_and_falls_back(monkeypatch, caplog, capsys, cls, env, base):
    monkeypatch.setenv(env, SECRET)
    caplog.set_level(logging.DEBUG)
    with FakeLLMServer(failures=[429, 500, 429], empty_for=["question 3"]) as server:
        sim = cls("no_emojis", base_url=base(server.url), max_concurrency=3, max_retries=5, retry_backoff=0.01)
        prompts = [f"question {i}" for i in range(10)]
        replies = sim.followups(prompts, ["Here you go 🎉"] * 10)
    assert server.requests == 10 + 3 + 5  # three failures were retried, and the always-empty reply 5 times
    assert server.max_active <= 3  # bounded concurrency
    assert server.max_active >= 2  # and actually concurrent
    assert replies[3] == FALLBACK_FOLLOWUP and replies[0] == "Too many emojis."
    assert sim.stats.fallbacks == 1 and sim.stats.requests == 10 and sim.stats.empty == 1
    assert sim.last_failed == [i == 3 for i in range(10)]
    assert all(b["temperature"] == 0 and b["max_tokens"] == 256 for b in server.bodies)
    assert all(SECRET in (h or "") for h in server.auth_headers)  # the key was sent...
    out = capsys.readouterr()
    assert SECRET not in caplog.text + out.out + out.err + repr(sim)  # ...and never shown


@pytest.mark.parametrize("cls, env, base", API_SIMS)
def test_api_simulator_falls_back_when_retries_run_out(monkeypatch, caplog, cls, env, base):
    monkeypatch.setenv(env, SECRET)
    with FakeLLMServer(failures=[500] * 10) as server:
        sim = cls("no_emojis", base_url=base(server.url), max_retries=1, retry_backoff=0.01)
        assert sim.followups(["q"], ["a"]) == [FALLBACK_FOLLOWUP]
    assert server.requests == 2  # one try and one retry
    assert (sim.stats.requests, sim.stats.retries, sim.stats.failed, sim.stats.fallbacks) == (1, 1, 1, 1)
    assert f"at {base(server.url)}): 1 of 1 requests failed after 2 tries (HTTP 500)" in caplog.text
    assert SECRET not in caplog.text


@pytest.mark.parametrize("cls, env, base", API_SIMS)
@pytest.mark.parametrize("status, says", [(401, "was refused"), (404, "no model")])
def test_api_simulator_stops_on_errors_no_retry_can_fix(monkeypatch, cls, env, base, status, says):
    monkeypatch.setenv(env, SECRET)
    with FakeLLMServer(failures=[status] * 10) as server:
        sim = cls("no_emojis", base_url=base(server.url), max_retries=3, max_concurrency=1, retry_backoff=0.01)
        with pytest.raises(SimulatorAPIError, match=f"at {base(server.url)}\\): HTTP {status}: .*{says}") as info:
            sim.followups(["q"], ["a"])
    assert SECRET not in str(info.value)
    assert (env in str(info.value)) == (status == 401)  # a refused key names the variable to check
    assert server.requests == 1  # not retried


@pytest.mark.parametrize("cls, env, base", API_SIMS)
def test_missing_key_fails_at_construction(monkeypatch, cls, env, base):
    monkeypatch.delenv(env, raising=False)
    with pytest.raises(MissingAPIKeyError, match=env):
        cls("no_emojis")
