"""The code sandbox contains what generated code tends to do wrong, and says what happened."""

import os
import socket
import threading
import time
from pathlib import Path

import pytest

from sdpo.feedback.checkers import CodeTestsReward, extract_code
from sdpo.feedback.sandbox import SandboxLimits, run_python_tests

TESTS = [{"args": [[1, 2, 3]], "expected": 6}, {"args": [[]], "expected": 0}, {"args": [[5]], "expected": 5}]
FAST = SandboxLimits(timeout_s=1.0)


def run(code, tests=TESTS, limits=FAST):
    return run_python_tests(code, "total", tests, limits)


@pytest.mark.system_package("bubblewrap")
def test_correct_code_scores_one():
    r = run("def total(xs):\n    return sum(xs)\n")
    assert (r.passed, r.total, r.score) == (3, 3, 1.0)
    assert r.feedback == "All 3 tests passed."


@pytest.mark.system_package("bubblewrap")
def test_wrong_answer_is_described_precisely():
    r = run("def total(xs):\n    return 0 if len(xs) > 1 else sum(xs)\n")
    assert r.score == pytest.approx(2 / 3)
    assert "test 1 failed: input [1, 2, 3], expected 6, got 0" in r.feedback


@pytest.mark.system_package("bubblewrap")
def test_exception_type_and_message():
    r = run("def total(xs):\n    return xs[10]\n")
    assert "raised IndexError: list index out of range" in r.feedback
    assert r.score == 0


@pytest.mark.system_package("bubblewrap")
def test_syntax_error_and_missing_function():
    assert "SyntaxError" in run("def total(xs)\n    return 1\n").feedback
    assert "does not define a function named `total`" in run("def other(xs):\n    return 1\n").feedback


@pytest.mark.system_package("bubblewrap")
def test_infinite_loop_times_out_and_later_tests_are_skipped():
    start = time.perf_counter()
    r = run("def total(xs):\n    while True:\n        pass\n")
    assert time.perf_counter() - start < 10
    assert "test 1 failed: input [1, 2, 3], timed out after 1 s" in r.feedback
    assert "tests 2, 3 not run" in r.feedback
    assert r.score == 0


@pytest.mark.system_package("bubblewrap")
def test_loop_that_swallows_exceptions_is_still_stopped():
    code = "def total(xs):\n    while True:\n        try:\n            pass\n        except Exception:\n            pass\n"
    assert "timed out" in run(code).feedback


@pytest.mark.system_package("bubblewrap")
def test_ten_gigabyte_allocation_is_refused():
    r = run("def total(xs):\n    block = bytearray(10 * 1024 ** 3)\n    return sum(xs)\n")
    assert "MemoryError" in r.feedback
    assert r.score == 0


@pytest.mark.system_package("bubblewrap")
def test_fork_bomb_is_contained():
    code = "import os\ndef total(xs):\n    while True:\n        os.fork()\n"
    r = run(code)
    assert r.score == 0
    assert "creating processes is not allowed" in r.feedback


@pytest.mark.system_package("bubblewrap")
def test_subprocess_is_refused():
    code = "import os\ndef total(xs):\n    os.system('echo hi > /tmp/sdpo-should-not-exist')\n    return sum(xs)\n"
    r = run(code)
    assert r.score == 0
    assert not Path("/tmp/sdpo-should-not-exist").exists()


@pytest.mark.system_package("bubblewrap")
def test_writing_outside_the_working_directory_is_refused(tmp_path):
    target = tmp_path / "escaped.txt"
    code = f"def total(xs):\n    open({str(target)!r}, 'w').write('x')\n    return sum(xs)\n"
    r = run(code)
    assert not target.exists()
    assert "writing outside the working directory is not allowed" in r.feedback
    # writing inside its own temporary directory is fine
    ok = run("def total(xs):\n    open('scratch.txt', 'w').write('x')\n    return sum(xs)\n")
    assert ok.score == 1.0


@pytest.mark.system_package("bubblewrap")
def test_network_socket_is_contained():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    accepted = []

    def accept():
        server.settimeout(5)
        try:
            accepted.append(server.accept())
        except OSError:
            pass

    thread = threading.Thread(target=accept)
    thread.start()
    code = ("import socket\ndef total(xs):\n    s = socket.socket()\n"
            f"    s.connect(('127.0.0.1', {port}))\n    return sum(xs)\n")
    r = run(code)
    thread.join()
    server.close()
    assert not accepted, "the sandboxed code reached a socket on the host"
    assert r.score == 0
    assert "network access is not allowed" in r.feedback


@pytest.mark.system_package("bubblewrap")
def test_printed_output_is_capped_and_run_survives():
    r = run("def total(xs):\n    print('x' * 10**7)\n    return sum(xs)\n", limits=SandboxLimits(max_output_chars=100))
    assert r.score == 1.0
    assert len(r.output) <= 100


@pytest.mark.system_package("bubblewrap")
def test_process_dies_hard_and_the_caller_survives():
    r = run("import signal, os\ndef total(xs):\n    raise SystemExit(3)\n")
    assert r.score == 0
    assert os.getpid() > 0  # we are still here


def test_extract_code_prefers_the_block_defining_the_function():
    text = "Here:\n```python\nx = 1\n```\nand\n```python\ndef total(xs):\n    return sum(xs)\n```\nDone."
    assert extract_code(text, "total").startswith("def total")
    assert extract_code("def total(xs):\n    return 1", "total").startswith("def total")


@pytest.mark.system_package("bubblewrap")
def test_code_tests_reward_returns_scores_and_feedback():
    reward = CodeTestsReward(FAST, max_workers=2)
    out = reward(
        prompts=["p", "p"],
        completions=["```python\ndef total(xs):\n    return sum(xs)\n```", "def total(xs):\n    return 0\n"],
        entry_point=["total", "total"], tests=[TESTS, TESTS],
    )
    assert out[0] == {"score": 1.0, "feedback": "All 3 tests passed."}
    assert out[1]["score"] == pytest.approx(1 / 3)
    assert "expected 6, got 0" in out[1]["feedback"]
    with pytest.raises(ValueError, match="entry_point"):
        reward(prompts=["p"], completions=["x"])


def test_bad_test_cases_are_refused_before_running():
    with pytest.raises(ValueError, match="test 1"):
        run_python_tests("def total(xs): return 1", "total", [{"args": [1]}])
