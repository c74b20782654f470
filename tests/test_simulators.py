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
    """Speaks just enough of the Anthropic Messages and OpenAI chat-completions APIs."""

    def __init__(self, failures=(), delay=0.05, empty_for=(), reply="Too many emojis."):
        self.failures = list(failures)  # status codes to return first, in order
        self.delay = delay
        self.empty_for = set(empty_for)
        self.reply = reply
        self.requests = 0
        self.active = 0
        self.max_active = 0
        self.auth_headers = []
        self.bodies = []
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
                    status = server.failures.pop(0) if server.failures else 200
                try:
                    time.sleep(server.delay)
                    if status != 200:
                        self._send(status, {"error": {"type": "overloaded", "message": "try later"}},
                                   {"retry-after-ms": "10", "retry-after": "0"})
                        return
                    text = body["messages"][-1]["content"]
                    reply = "" if any(marker in text for marker in server.empty_for) else server.reply
                    if self.path.endswith("/messages"):
                        payload = {"id": "m1", "type": "message", "role": "assistant", "model": body["model"],
                                   "content": [{"type": "text", "text": reply}], "stop_reason": "end_turn",
                                   "stop_sequence": None, "usage": {"input_tokens": 1, "output_tokens": 1}}
                    else:
                        payload = {"id": "c1", "object": "chat.completion", "created": 0, "model": body["model"],
                                   "choices": [{"index": 0, "finish_reason": "stop",
                                                "message": {"role": "assistant", "content": reply}}]}
                    self._send(200, payload)
                finally:
                    with server.lock:
                        server.active -= 1

            def _send(self, status, payload, headers=None):
                data = json.dumps(payload).encode()
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
        sim = cls("no_emojis", base_url=base(server.url), max_concurrency=3, max_retries=5)
        prompts = [f"question {i}" for i in range(10)]
        replies = sim.followups(prompts, ["Here you go 🎉"] * 10)
    assert server.requests == 10 + 3  # three failures were retried
    assert server.max_active <= 3  # bounded concurrency
    assert server.max_active >= 2  # and actually concurrent
    assert replies[3] == FALLBACK_FOLLOWUP and replies[0] == "Too many emojis."
    assert sim.stats.fallbacks == 1 and sim.stats.requests == 10
    assert all(b["temperature"] == 0 and b["max_tokens"] == 256 for b in server.bodies)
    assert all(SECRET in (h or "") for h in server.auth_headers)  # the key was sent...
    out = capsys.readouterr()
    assert SECRET not in caplog.text + out.out + out.err + repr(sim)  # ...and never shown


@pytest.mark.parametrize("cls, env, base", API_SIMS)
def test_api_simulator_gives_clear_error_when_retries_run_out(monkeypatch, cls, env, base):
    monkeypatch.setenv(env, SECRET)
    with FakeLLMServer(failures=[500] * 10) as server:
        sim = cls("no_emojis", base_url=base(server.url), max_retries=1)
        with pytest.raises(SimulatorAPIError, match=r"failed after 1 retries: HTTP 500") as info:
            sim.followups(["q"], ["a"])
    assert SECRET not in str(info.value)
    assert server.requests == 2


@pytest.mark.parametrize("cls, env, base", API_SIMS)
def test_missing_key_fails_at_construction(monkeypatch, cls, env, base):
    monkeypatch.delenv(env, raising=False)
    with pytest.raises(MissingAPIKeyError, match=env):
        cls("no_emojis")
