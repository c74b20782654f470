"""Sandbox backends: the refusal without bubblewrap, the explicit process-only mode, the
remote (SandboxFusion-style) backend against a fake service on 127.0.0.1, batches,
and the plain-data encoding against a straightforward reference."""

import json
import logging
import os
import random
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from sdpo.feedback import sandbox as sb
from sdpo.feedback.checkers import CodeTestsReward
from sdpo.feedback.remote_sandbox import RemoteSandbox, RemoteSandboxError
from sdpo.feedback.sandbox import (BwrapSandbox, SandboxLimits, SandboxUnavailable, decode_plain, resolve_sandbox,
                                   run_python_tests, run_python_tests_batch)

TESTS = [{"args": [[1, 2, 3]], "expected": 6}, {"args": [[]], "expected": 0}, {"args": [[5]], "expected": 5}]
FAST = SandboxLimits(timeout_s=2.0)
GOOD = "def total(xs):\n    return sum(xs)\n"
WRONG = "def total(xs):\n    return 0 if len(xs) > 1 else sum(xs)\n"


# ------------------------------------------------------------- refusal

def test_missing_bwrap_is_one_clear_refusal(tmp_path):
    backend = BwrapSandbox(bwrap=str(tmp_path / "no-such-bwrap"))
    with pytest.raises(SandboxUnavailable) as info:
        run_python_tests(GOOD, "total", TESTS, FAST, sandbox=backend)
    message = str(info.value)
    assert "\n" not in message
    assert "apt-get install bubblewrap" in message and "sandbox='process-unsafe'" in message


def test_user_namespaces_refused_is_one_clear_refusal(tmp_path):
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to create new namespace, likely because the kernel "
                    "does not allow non-privileged user namespaces.' >&2\nexit 1\n")
    fake.chmod(0o755)
    with pytest.raises(SandboxUnavailable) as info:
        run_python_tests(GOOD, "total", TESTS, FAST, sandbox=BwrapSandbox(bwrap=str(fake)))
    message = str(info.value)
    assert "\n" not in message
    assert "No permissions to create new namespace" in message
    assert "unprivileged user namespaces" in message and "process-unsafe" in message


def test_unknown_sandbox_name_is_refused():
    with pytest.raises(ValueError, match="sandbox: expected one of bwrap, process-unsafe"):
        resolve_sandbox("docker")


def test_environment_variable_selects_the_backend(monkeypatch):
    monkeypatch.setenv("SDPO_SANDBOX", "process-unsafe")
    assert resolve_sandbox(None).name == "process-unsafe"
    monkeypatch.delenv("SDPO_SANDBOX")
    assert resolve_sandbox(None).name == "bwrap"


def test_process_unsafe_mode_warns_once_and_works(caplog, monkeypatch):
    monkeypatch.setattr(sb.ProcessSandbox, "_warned", False)
    with caplog.at_level(logging.WARNING, logger="sdpo.feedback.sandbox"):
        results = run_python_tests_batch([(GOOD, "total", TESTS), (WRONG, "total", TESTS)], FAST,
                                         sandbox="process-unsafe", max_workers=2)
        run_python_tests(GOOD, "total", TESTS, FAST, sandbox="process-unsafe")
    warnings = [r for r in caplog.records if "process-only sandbox" in r.getMessage()]
    assert len(warnings) == 1
    assert [r.score for r in results] == [1.0, pytest.approx(2 / 3)]
    assert "test 1 failed: input [1, 2, 3], expected 6, got 0" in results[1].feedback
    assert "bwrap" not in results[0].isolation


# ------------------------------------------------------------- batches

@pytest.mark.system_package("bubblewrap")
def test_batch_keeps_order_and_reward_passes_the_backend():
    jobs = [(GOOD if i % 2 == 0 else WRONG, "total", TESTS) for i in range(6)]
    results = run_python_tests_batch(jobs, FAST, sandbox="bwrap", max_workers=3)
    assert [r.score for r in results] == [1.0, pytest.approx(2 / 3)] * 3
    with pytest.raises(ValueError, match="max_workers"):
        run_python_tests_batch(jobs, FAST, max_workers=0)
    with pytest.raises(ValueError, match="max_workers"):
        CodeTestsReward(FAST, max_workers=0)


# ------------------------------------------------------------- remote backend

class FakeSandboxFusion:
    """A local stand-in for SandboxFusion's POST /run_code: runs the code with the given
    stdin in a plain python process; can fail the first requests and counts concurrency."""

    def __init__(self, fail_first=0, fail_status=503, delay_s=0.0, sandbox_error_first=0):
        self.fail_first, self.fail_status, self.delay_s = fail_first, fail_status, delay_s
        self.sandbox_error_first = sandbox_error_first
        self.requests, self.active, self.max_active = 0, 0, 0
        self.lock = threading.Lock()
        self.bodies = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.requests += 1
                    n = outer.requests
                    outer.active += 1
                    outer.max_active = max(outer.max_active, outer.active)
                    outer.bodies.append(body)
                try:
                    if self.path != "/run_code":
                        return self._send(404, {"detail": "not found"})
                    if n <= outer.fail_first:
                        return self._send(outer.fail_status, {"detail": "busy"})
                    if n <= outer.fail_first + outer.sandbox_error_first:
                        return self._send(200, {"status": "SandboxError", "message": "pod lost"})
                    time.sleep(outer.delay_s)
                    try:
                        proc = subprocess.run([sys.executable, "-I", "-S", "-c", body["code"]], input=body["stdin"],
                                              capture_output=True, text=True, timeout=body["run_timeout"])
                        run = {"status": "Finished", "return_code": proc.returncode, "stdout": proc.stdout,
                               "stderr": proc.stderr, "execution_time": 0.1}
                    except subprocess.TimeoutExpired:
                        run = {"status": "TimeLimitExceeded", "return_code": None, "stdout": "", "stderr": ""}
                    self._send(200, {"status": "Success", "message": "", "compile_result": None, "run_result": run})
                finally:
                    with outer.lock:
                        outer.active -= 1

            def _send(self, code, obj):
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def test_remote_backend_runs_and_never_sends_expected_outputs():
    with FakeSandboxFusion() as fake:
        remote = RemoteSandbox(fake.url, max_concurrency=2)
        good = run_python_tests(GOOD, "total", TESTS, FAST, sandbox=remote)
        wrong = run_python_tests(WRONG, "total", TESTS, FAST, sandbox=remote)
        body = fake.bodies[-1]
    assert good.feedback == "All 3 tests passed." and "remote" in good.isolation
    assert "test 1 failed: input [1, 2, 3], expected 6, got 0" in wrong.feedback
    assert body["language"] == "python" and body["run_timeout"] > 0
    spec = json.loads(body["stdin"])
    assert "expected" not in body["stdin"] and spec["args"] == [[[1, 2, 3]], [[]], [[5]]]


def test_remote_backend_retries_with_backoff_then_succeeds():
    with FakeSandboxFusion(fail_first=2, sandbox_error_first=1) as fake:
        remote = RemoteSandbox(fake.url, retries=3, backoff_s=0.01)
        r = run_python_tests(GOOD, "total", TESTS, FAST, sandbox=remote)
        assert r.score == 1.0 and fake.requests == 4


def test_remote_backend_gives_up_with_a_clear_error():
    with FakeSandboxFusion(fail_first=100) as fake:
        remote = RemoteSandbox(fake.url, retries=2, backoff_s=0.01)
        with pytest.raises(RemoteSandboxError, match="after 3 attempts.*HTTP 503"):
            run_python_tests(GOOD, "total", TESTS, FAST, sandbox=remote)
        assert fake.requests == 3
    with FakeSandboxFusion(fail_first=100, fail_status=400) as fake:
        with pytest.raises(RemoteSandboxError, match="HTTP 400.*not retried"):
            run_python_tests(GOOD, "total", TESTS, FAST, sandbox=RemoteSandbox(fake.url, backoff_s=0.01))
        assert fake.requests == 1


def test_remote_backend_time_out_on_a_silent_server():
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)  # accepts connections, never answers
    try:
        remote = RemoteSandbox(f"http://127.0.0.1:{listener.getsockname()[1]}", retries=1, backoff_s=0.01,
                               request_timeout_s=0.5)
        start = time.perf_counter()
        with pytest.raises(RemoteSandboxError, match="after 2 attempts"):
            run_python_tests(GOOD, "total", TESTS, FAST, sandbox=remote)
        assert time.perf_counter() - start < 10
    finally:
        listener.close()


def test_remote_backend_bounds_concurrency():
    with FakeSandboxFusion(delay_s=0.3) as fake:
        remote = RemoteSandbox(fake.url, max_concurrency=2)
        reward = CodeTestsReward(FAST, max_workers=6, sandbox=remote)
        out = reward(prompts=["p"] * 6, completions=[GOOD] * 6, entry_point=["total"] * 6, tests=[TESTS] * 6)
        assert [o["score"] for o in out] == [1.0] * 6
        assert fake.max_active == 2


def test_remote_url_string_form():
    backend = resolve_sandbox("remote:http://127.0.0.1:9/")
    assert isinstance(backend, RemoteSandbox) and backend.endpoint == "http://127.0.0.1:9/run_code"
    with pytest.raises(ValueError, match="url must start with http"):
        RemoteSandbox("ftp://x")


# ------------------------------------------------------------- plain-data encoding

def _runner_plain():
    """The harness's encoder, loaded without running the harness."""
    source = open(sb.RUNNER, encoding="utf-8").read()
    head = source[: source.index("SPEC = _read_spec()")]
    body = source[source.index("class NotPlain"): source.index("class CappedText")]
    namespace: dict = {}
    exec(head + body, namespace)
    return namespace["plain"], namespace["NotPlain"]


def _random_value(rng, depth=0):
    kinds = ["int", "float", "str", "bool", "none", "bytes", "complex"]
    if depth < 3:
        kinds += ["list", "tuple", "dict", "set"]
    kind = rng.choice(kinds)
    if kind == "int":
        return rng.choice([rng.randint(-10**6, 10**6), 3 ** rng.randint(0, 40000)])
    if kind == "float":
        return rng.choice([rng.uniform(-1e6, 1e6), float("inf"), -0.0])
    if kind == "str":
        return "".join(rng.choice("ab\n\"'\\é😀") for _ in range(rng.randint(0, 5)))
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "none":
        return None
    if kind == "bytes":
        return bytes(rng.randrange(256) for _ in range(rng.randint(0, 4)))
    if kind == "complex":
        return complex(rng.uniform(-5, 5), rng.uniform(-5, 5))
    items = [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    if kind == "list":
        return items
    if kind == "tuple":
        return tuple(items)
    if kind == "set":
        return {rng.randint(0, 100) for _ in items} | {"k"}
    return {rng.choice([rng.randint(0, 9), "s", (1, 2)]): v for v in items}


def _types(v):
    if isinstance(v, (list, tuple)):
        return (type(v).__name__, [_types(x) for x in v])
    if isinstance(v, (set, frozenset)):
        return (type(v).__name__, sorted(map(repr, map(_types, v))))
    if isinstance(v, dict):
        return ("dict", sorted((repr(_types(k)), repr(_types(x))) for k, x in v.items()))
    return type(v).__name__


def test_plain_encoding_round_trips_builtin_values_exactly():
    plain, not_plain = _runner_plain()
    rng = random.Random(0)
    for _ in range(300):
        value = _random_value(rng)
        decoded = decode_plain(json.loads(json.dumps(plain(value))))
        assert decoded == value and _types(decoded) == _types(value)
    nan = decode_plain(json.loads(json.dumps(plain(float("nan")))))
    assert nan != nan

    class Weird:
        pass

    with pytest.raises(not_plain):
        plain([1, Weird()])
    nested: list = []
    nested.append(nested)
    with pytest.raises(not_plain):
        plain(nested)


@pytest.mark.system_package("bubblewrap")
def test_a_huge_integer_result_is_compared_and_shown_without_raising():
    r = run_python_tests("def f():\n    return 3 ** 40000\n", "f", [{"args": [], "expected": 1}], FAST)
    assert "got <int of 63399 bits>" in r.feedback
    r = run_python_tests("def f():\n    return 3 ** 40000 + 1\n", "f", [{"args": [], "expected": 3 ** 40000 + 1}],
                         FAST)
    assert r.score == 1.0


def test_same_matches_a_reference_on_random_numbers():
    rng = random.Random(1)
    for _ in range(500):
        expected = rng.uniform(-1e3, 1e3)
        got = expected + rng.choice([0.0, 1e-9, 1e-7, 1e-5, 1e-3]) * rng.choice([-1, 1])
        reference = abs(got - expected) <= max(1e-6 * max(abs(got), abs(expected)), 1e-6)
        assert sb._same(got, expected) == reference
        assert sb._same([got, 1], (expected, 1)) == reference
    assert sb._same(True, 1) and not sb._same("6", 6) and not sb._same(None, 0.0)
