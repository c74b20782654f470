"""The bubblewrap sandbox against code that attacks it, one class of attack per test.

Each test runs hostile code through `run_python_tests` / `CodeTestsReward`, and checks
that the attack is contained and turned into feedback text, that this (the
training) process survives, and that nothing appears outside the sandbox.

Most tests need `bwrap` (marked ``system_package("bubblewrap")``): `make test` installs it where
it can; without it they are skipped and named at the end of the run, or fail where
SDPO_REQUIRE_SYSTEM_PACKAGES=1 (CI). See tests/system_packages.py.
"""

import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from sdpo.feedback.checkers import CodeTestsReward
from sdpo.feedback.sandbox import SandboxLimits, _summarise, Execution, run_python_tests
from sdpo.feedback.sandbox import TestCase as Case

TESTS = [{"args": [[1, 2, 3]], "expected": 6}, {"args": [[]], "expected": 0}, {"args": [[5]], "expected": 5}]
FAST = SandboxLimits(timeout_s=2.0)


def run(code, tests=TESTS, limits=FAST):
    result = run_python_tests(code, "total", tests, limits, sandbox="bwrap")
    assert "bwrap" in result.isolation
    return result


def host_processes_with(marker: str) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if marker in line and "ps -eo" not in line]


# ------------------------------------------------------------- honest code

@pytest.mark.system_package("bubblewrap")
def test_correct_and_wrong_solutions_keep_the_message_format():
    assert run("def total(xs):\n    return sum(xs)\n").feedback == "All 3 tests passed."
    wrong = run("def total(xs):\n    return 0 if len(xs) > 1 else sum(xs)\n",
                tests=[{"args": [[5]], "expected": 5}, {"args": [[1, 2, 3]], "expected": 6}])
    assert wrong.feedback == "1 of 2 tests passed.\ntest 2 failed: input [1, 2, 3], expected 6, got 0"


@pytest.mark.system_package("bubblewrap")
def test_plain_return_types_compare_like_python():
    tests = [{"args": [], "expected": [1, 2]}, {"args": [], "expected": 0.3}, {"args": [], "expected": "a"}]
    r = run_python_tests("def f():\n    return (1, 2)\n", "f", tests[:1], FAST)
    assert r.score == 1.0  # a tuple equals the expected list element-wise, as before
    r = run_python_tests("def f():\n    return 0.1 + 0.2\n", "f", tests[1:2], FAST)
    assert r.score == 1.0
    r = run_python_tests("def f():\n    return {1: b'x', 2: {3, 4}}\n", "f", [{"args": [], "expected": "a"}], FAST)
    assert "got {1: b'x', 2: {3, 4}}" in r.feedback


# ------------------------------------------------------------- escapes

@pytest.mark.system_package("bubblewrap")
def test_writes_outside_through_every_dir_fd_entry_point(tmp_path):
    target = tmp_path / "escape"
    code = f"""
import os
def total(xs):
    made = []
    for d in ({str(tmp_path)!r}, '/', '/dev', '/dev/shm', '/proc', '/usr/lib', '/etc'):
        try:
            fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            continue
        attempts = [
            lambda: os.close(os.open('escape', os.O_CREAT | os.O_WRONLY, dir_fd=fd)),
            lambda: os.mkdir('escape-dir', dir_fd=fd),
            lambda: os.mkfifo('escape-fifo', dir_fd=fd),
            lambda: os.mknod('escape-node', dir_fd=fd),
            lambda: os.symlink('/work', 'escape-link', dir_fd=fd),
            lambda: (open('here', 'w').close(), os.link('here', 'escape-hard', dst_dir_fd=fd)),
            lambda: (open('moved', 'w').close(), os.rename('moved', 'escape-moved', dst_dir_fd=fd)),
            lambda: (open('moved2', 'w').close(), os.replace('moved2', 'escape-moved2', dst_dir_fd=fd)),
        ]
        for attempt in attempts:
            try:
                attempt()
                made.append(d)
            except OSError:
                pass
    return made
"""
    before = set(os.listdir("/dev/shm"))
    r = run_python_tests(code, "total", [{"args": [[]], "expected": []}], FAST)
    assert r.score == 1.0, r.feedback  # every attempt failed inside the sandbox
    assert not any(p.name.startswith("escape") for p in tmp_path.iterdir())
    assert set(os.listdir("/dev/shm")) <= before | set()
    assert not target.exists()


@pytest.mark.system_package("bubblewrap")
def test_dev_shm_and_other_writable_looking_places_are_not_writable():
    code = """
import os
def total(xs):
    for path in ('/dev/shm/x', '/tmp/x', '/x', '/usr/lib/x'):
        try:
            fd = os.open(path, os.O_CREAT | os.O_WRONLY)
            os.close(fd)
            return 'wrote ' + path
        except OSError:
            pass
    return sum(xs)
"""
    r = run(code)
    assert r.score == 1.0, r.feedback
    assert not Path("/x").exists()


@pytest.mark.system_package("bubblewrap")
def test_disk_filling_stops_at_the_tmpfs_cap():
    code = """
def total(xs):
    block = b'x' * (1 << 20)
    with open('fill.bin', 'wb') as f:
        for _ in range(10_000):
            f.write(block)
    return sum(xs)
"""
    limits = SandboxLimits(timeout_s=5.0, max_disk_mb=8, max_file_mb=64)
    r = run(code, tests=TESTS[:1], limits=limits)
    assert r.score == 0
    assert "No space left on device" in r.feedback or "File too large" in r.feedback


@pytest.mark.system_package("bubblewrap")
def test_file_size_limit_applies_inside():
    r = run("def total(xs):\n    open('big', 'wb').write(b'x' * (20 << 20))\n    return sum(xs)\n",
            tests=TESTS[:1], limits=SandboxLimits(timeout_s=5.0, max_file_mb=1))
    assert r.score == 0 and "File too large" in r.feedback


_LOAD_POSIXSUBPROCESS = """
import importlib.machinery, importlib.util, os, sys, time
def _load(name):
    for finder_dir in sys.path:
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = os.path.join(finder_dir, 'lib-dynload', name + suffix) if not finder_dir.endswith('lib-dynload') \\
                else os.path.join(finder_dir, name + suffix)
            if os.path.exists(path):
                # a dotted name: the audit hook sees 'x._posixsubprocess', not a blocked name
                spec = importlib.util.spec_from_file_location('x.' + name, path)
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
                return module
    return sys.modules.get(name) or __import__(name)

def _spawn(ps, argv):
    base = [argv, [os.fsencode(argv[0])], True, (), None, None, -1, -1, -1, -1, -1, -1, *os.pipe(), False, True,
            -1, None, None, None, -1, None]
    for extra in ([False], [], [False, False]):  # the signature differs across 3.x versions
        try:
            return ps.fork_exec(*base, *extra)
        except TypeError:
            continue
    raise RuntimeError('no fork_exec signature matched')
"""


@pytest.mark.system_package("bubblewrap")
def test_process_creation_by_loading_an_extension_by_hand_does_not_outlive_the_run():
    marker = f"sdpo-escape-{uuid.uuid4().hex[:8]}"
    code = _LOAD_POSIXSUBPROCESS + f"""
def total(xs):
    ps = _load('_posixsubprocess')
    argv = [sys.executable, '-c', 'import time; time.sleep(60)', {marker!r}]
    args = [argv, [os.fsencode(sys.executable)], True, (), None, None, -1, -1, -1, -1, -1, -1,
            *os.pipe(), False, True]
    pid = _spawn(ps, argv)
    time.sleep(0.3)
    return 'started' if open('/proc/%d/cmdline' % pid).read() else 'no'
"""
    r = run(code, tests=[{"args": [[]], "expected": "started"}])
    assert r.score == 1.0, r.feedback  # the route works inside: the audit hook did not see it
    # The audit hook does not see this route; the OS sandbox has to hold it.
    deadline = time.time() + 5
    while host_processes_with(marker) and time.time() < deadline:
        time.sleep(0.2)
    assert host_processes_with(marker) == [], "a process started in the sandbox outlived it"
    assert r.total == 1


@pytest.mark.system_package("bubblewrap")
def test_fork_via_the_os_module_is_refused_and_a_fork_bomb_is_contained():
    r = run("import os\ndef total(xs):\n    while True:\n        os.fork()\n")
    assert r.score == 0 and "creating processes is not allowed" in r.feedback


@pytest.mark.system_package("bubblewrap")
def test_fork_bomb_through_the_bypass_is_contained_and_cleaned_up():
    marker = f"sdpo-bomb-{uuid.uuid4().hex[:8]}"
    code = _LOAD_POSIXSUBPROCESS + f"""
def total(xs):
    ps = _load('_posixsubprocess')
    n = 0
    try:
        while n < 2000:
            _spawn(ps, [sys.executable, '-c', 'import time; time.sleep(60)', {marker!r}])
            n += 1
    except BaseException as exc:
        return f'stopped after {{n}}: ' + type(exc).__name__
    return n
"""
    r = run(code, tests=[{"args": [[]], "expected": 0}], limits=SandboxLimits(timeout_s=3.0))
    assert r.score == 0
    deadline = time.time() + 5
    while host_processes_with(marker) and time.time() < deadline:
        time.sleep(0.2)
    assert host_processes_with(marker) == []


@pytest.mark.system_package("bubblewrap")
def test_signals_to_the_parent_do_not_reach_it():
    parent = os.getpid()
    code = f"""
import os, signal
def total(xs):
    hits = []
    for pid in ({parent}, {os.getppid()}, 1, -1):
        try:
            os.kill(pid, signal.SIGKILL)
            hits.append(pid)
        except BaseException as exc:
            pass
    try:
        fd = os.pidfd_open({parent})
        signal.pidfd_send_signal(fd, signal.SIGKILL)
        hits.append('pidfd')
    except BaseException:
        pass
    return sum(xs)
"""
    r = run(code)
    assert os.getpid() == parent  # still alive
    assert r.total == 3


@pytest.mark.system_package("bubblewrap")
def test_the_parent_cannot_be_named_by_pidfd_from_inside():
    parent = os.getpid()
    code = f"""
import os
def total(xs):
    try:
        fd = os.pidfd_open({parent})
    except OSError as exc:
        return 'no pidfd: ' + exc.strerror
    return 'opened'
"""
    r = run(code, tests=[{"args": [[]], "expected": "x"}])
    assert os.getpid() == parent
    # the parent's pid does not exist in the sandbox's PID namespace
    assert "got 'no pidfd: No such process'" in r.feedback


@pytest.mark.system_package("bubblewrap")
def test_reading_the_project_home_etc_and_parent_environment(monkeypatch):
    monkeypatch.setenv("SDPO_FAKE_API_KEY", "sk-fake-should-not-leak")
    project = Path(__file__).resolve().parents[1]
    code = f"""
import os
def total(xs):
    found = []
    for path in ({str(project)!r}, {str(project / 'pyproject.toml')!r}, '/etc/shadow', '/etc/passwd',
                 '/etc/hostname', '/home', '/work/..', '/root/.bashrc'):
        if os.path.exists(path) and path != '/work/..':
            found.append(path)
    home = os.path.expanduser('~')
    if home != '/work':
        found.append('home is ' + home)
    for pid in os.listdir('/proc'):
        try:
            if b'sk-fake' in open('/proc/' + pid + '/environ', 'rb').read():
                found.append('key in /proc/' + pid)
        except OSError:
            pass
    extra = sorted(set(os.environ) - {{'HOME', 'TMPDIR', 'LC_ALL', 'PWD'}})
    if extra:
        found.append('env ' + ','.join(extra))
    return found
"""
    r = run_python_tests(code, "total", [{"args": [[]], "expected": []}], FAST)
    assert r.score == 1.0, r.feedback
    assert "sk-fake" not in r.feedback


@pytest.mark.system_package("bubblewrap")
def test_the_network_is_unreachable():
    code = _LOAD_POSIXSUBPROCESS + """
def total(xs):
    sock_mod = _load('_socket')
    s = sock_mod.socket(sock_mod.AF_INET, sock_mod.SOCK_STREAM)
    try:
        s.connect(('1.1.1.1', 53))
        return 'connected'
    except OSError as exc:
        return 'refused'
"""
    r = run_python_tests(code, "total", [{"args": [[]], "expected": "refused"}], FAST)
    assert r.score == 1.0, r.feedback


# ------------------------------------------------------------- reward hacking

@pytest.mark.system_package("bubblewrap")
def test_expected_outputs_are_not_in_the_sandbox():
    secret = f"expected-{uuid.uuid4().hex}"
    code = f"""
import os, gc
def total(xs):
    wanted = {secret[::-1]!r}[::-1].encode()
    blobs = []
    for root, dirs, files in os.walk('/work'):
        for name in files:
            blobs.append(open(os.path.join(root, name), 'rb').read())
    for pid in os.listdir('/proc'):
        if pid.isdigit():
            for part in ('cmdline', 'environ'):
                try:
                    blobs.append(open(f'/proc/{{pid}}/{{part}}', 'rb').read())
                except OSError:
                    pass
    blobs.append(repr(gc.get_objects()).encode())
    return 'seen' if any(wanted in b for b in blobs) else 'not seen'
"""
    r = run_python_tests(code, "total", [{"args": [[]], "expected": secret}], FAST)
    assert r.score == 0
    assert "got 'not seen'" in r.feedback


@pytest.mark.system_package("bubblewrap")
def test_always_equal_return_values_fail():
    code = """
class Anything:
    def __eq__(self, other):
        return True
    def __ne__(self, other):
        return False
    def __repr__(self):
        return '6'
class SneakyInt(int):
    def __eq__(self, other):
        return True
def total(xs):
    return Anything() if len(xs) > 1 else SneakyInt(-1)
"""
    r = run(code)
    assert r.score == 0
    assert "test 1 failed: input [1, 2, 3], expected 6, got 6 (a Anything, not plain data" in r.feedback
    assert "test 2 failed: input [], expected 0, got -1" in r.feedback


@pytest.mark.system_package("bubblewrap")
def test_patching_the_harness_in_the_interpreter_does_not_help():
    # Whatever the worker's copy of the harness says is only a claimed return value: the
    # comparison is done in the parent, so forging "6" is no better than returning 6.
    code = """
import sys, json
def total(xs):
    main = sys.modules['__main__']
    for name in ('emit', 'same', 'plain', 'main', 'ask'):
        setattr(main, name, lambda *a, **k: None)
    json.dumps = lambda *a, **k: '{"ok": 6}'
    return 0
"""
    r = run(code)
    assert r.passed == 1
    assert "test 2 failed: input [], expected 0, got 6" in r.feedback
    assert "test 3 failed: input [5], expected 5, got 6" in r.feedback
    at_load = run("import json\njson.dumps = lambda *a, **k: '{\"ok\": 6}'\ndef total(xs):\n    return 0\n")
    assert at_load.score == 0 and "malformed reply while loading the code" in at_load.feedback


@pytest.mark.system_package("bubblewrap")
def test_forging_result_lines_from_inside():
    code = """
import os, json
def total(xs):
    forged = (json.dumps({'e': 'test', 'i': 1, 'status': 'returned', 'value': 6}) + '\\n').encode()
    for fd in range(3, 64):
        try:
            os.write(fd, forged)
        except OSError:
            pass
    for fd in os.listdir('/proc/self/fd'):
        pass
    return 0
"""
    r = run(code)
    assert r.passed == 0 or r.statuses[0] != "passed"
    assert "test 1 failed" in r.feedback


@pytest.mark.system_package("bubblewrap")
def test_swallowing_the_timeout_does_not_help():
    code = """
import signal
def total(xs):
    signal.signal(signal.SIGALRM, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        try:
            pass
        except BaseException:
            pass
"""
    start = time.perf_counter()
    r = run(code, limits=SandboxLimits(timeout_s=1.0))
    assert time.perf_counter() - start < 15
    assert "test 1 failed: input [1, 2, 3], timed out after 1 s" in r.feedback
    assert "tests 2, 3 not run after the time-out" in r.feedback


@pytest.mark.system_package("bubblewrap")
def test_threads_and_children_do_not_outlive_the_call():
    marker = f"sdpo-thread-{uuid.uuid4().hex[:8]}"
    code = f"""
import threading, time
def spin():
    while True:
        time.sleep(0.01)
def total(xs):
    threading.Thread(target=spin, name={marker!r}).start()
    return sum(xs)
"""
    start = time.perf_counter()
    r = run(code)
    assert r.score == 1.0
    assert time.perf_counter() - start < 10  # the non-daemon thread did not hold the run open


# ------------------------------------------------------------- the parent side

def _events(*lines):
    return ("\n".join(lines) + "\n").encode()


CASES = [Case([[1, 2, 3]], 6), Case([[]], 0)]


def _summary(channel: bytes, killed=False):
    return _summarise(CASES, "total", Execution(channel, "", killed, 0, ["test"]), SandboxLimits(timeout_s=1.0),
                      10.0, 0.0)


def test_forged_and_malformed_lines_are_failures_with_precise_messages():
    ok = ['{"e": "load", "status": "ok"}', '{"e": "test", "i": 1, "status": "returned", "value": 6}',
          '{"e": "test", "i": 2, "status": "returned", "value": 0}', '{"e": "done", "output": ""}']
    assert _summary(_events(*ok)).feedback == "All 2 tests passed."
    dup = _summary(_events(*ok[:2], ok[1], *ok[2:]))
    assert "test 1 failed: input [1, 2, 3], the sandbox sent 2 results for this test" in dup.feedback
    assert dup.passed == 1
    out_of_range = _summary(_events(*ok[:3], '{"e": "test", "i": 7, "status": "returned", "value": 1}', ok[3]))
    assert out_of_range.passed == 0
    assert "a result for test 7, which does not exist" in out_of_range.feedback
    for bad in ('not json', '[1, 2]', '{"e": "test", "i": true, "status": "returned", "value": 6}',
                '{"e": "test", "i": 1.0, "status": "returned"}', '{"e": "nope"}',
                '{"e": "test", "i": 2, "status": "passed"}', '[' * 100000):
        r = _summary(_events(*ok, bad))
        assert r.passed == 0, bad
        assert "the results channel carried malformed data" in r.feedback
    undecodable = _summary(_events(ok[0], '{"e": "test", "i": 1, "status": "returned", "value": {"set": [[1]]}}',
                                   ok[2], ok[3]))
    assert "test 1 failed: input [1, 2, 3], the result could not be decoded" in undecodable.feedback
    cut = _summary(_events(*ok)[:-5])
    assert cut.passed == 0 and "cut off" in cut.feedback


def test_missing_results_are_failures_not_exceptions():
    r = _summary(b"")
    assert r.passed == 0 and "the sandbox stopped before test 1 finished" in r.feedback
    r = _summary(_events('{"e": "load", "status": "ok"}'), killed=True)
    assert "timed out after 10 s (the whole run)" in r.feedback
    r = _summary(b"\xff\xfe\n")
    assert r.passed == 0 and "not valid JSON" in r.feedback


@pytest.mark.system_package("bubblewrap")
def test_code_tests_reward_batch_with_attacks_survives():
    reward = CodeTestsReward(FAST, max_workers=3, sandbox="bwrap")
    completions = ["def total(xs):\n    return sum(xs)\n",
                   "import os\ndef total(xs):\n    os.kill(os.getppid(), 9)\n    return 0\n",
                   "def total(xs):\n    raise SystemExit(3)\n",
                   "import os\ndef total(xs):\n    os._exit(0)\n"]
    out = reward(prompts=["p"] * 4, completions=completions, entry_point=["total"] * 4, tests=[TESTS] * 4)
    assert out[0] == {"score": 1.0, "feedback": "All 3 tests passed."}
    assert [o["score"] for o in out[1:]] == [0.0, 0.0, 0.0]
    assert "signalling processes is not allowed" in out[1]["feedback"]
    assert "raised SystemExit: 3" in out[2]["feedback"]
    assert "the process stopped (exit status 0)" in out[3]["feedback"]
    assert os.getpid() > 0
    assert signal.getsignal(signal.SIGINT) is not None


# ------------------------------------------------------------- issue 28: the process-only sandbox's hook, /proc/1

PROCESS_UNSAFE_ESCAPES = """
import os
def total(xs):
    made = []
    target = {target!r}
    attempts = {{
        'os.open O_CREAT': lambda: os.close(os.open(target + '/escape-open', os.O_CREAT | os.O_WRONLY, 0o644)),
        'os.open O_APPEND': lambda: os.close(os.open(target + '/existing', os.O_WRONLY | os.O_APPEND)),
        'os.open O_TRUNC': lambda: os.close(os.open(target + '/existing', os.O_RDWR | os.O_TRUNC)),
        'open opener': lambda: open(target + '/escape-opener', 'rb', opener=lambda p, f: os.open(p, f | os.O_CREAT | os.O_WRONLY)).close(),
        'chdir': lambda: os.chdir(target),
        'mkfifo': lambda: os.mkfifo(target + '/escape-fifo'),
        'mknod': lambda: os.mknod(target + '/escape-node'),
        'sqlite3': lambda: __import__('sqlite3').connect(target + '/escape.db').execute('create table t (x)'),
        'sqlite3 uri': lambda: __import__('sqlite3').connect('file:' + target + '/escape2.db?mode=rwc', uri=True).execute('create table t (x)'),
        'inside dir_fd, ../': lambda: os.close(os.open('../' + os.path.basename(target) + '/escape-up', os.O_CREAT | os.O_WRONLY, dir_fd=os.open('.', os.O_RDONLY))),
    }}
    try:
        fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        fd = None
    if fd is not None:
        made.append('a directory outside was opened')
        attempts.update({{
            'dir_fd open': lambda: os.close(os.open('escape', os.O_CREAT | os.O_WRONLY, dir_fd=fd)),
            'dir_fd mkdir': lambda: os.mkdir('escape-dir', dir_fd=fd),
            'dir_fd symlink': lambda: os.symlink('/work', 'escape-link', dir_fd=fd),
            'dst_dir_fd link': lambda: (open('here', 'w').close(), os.link('here', 'escape-hard', dst_dir_fd=fd)),
            'dst_dir_fd rename': lambda: (open('moved', 'w').close(), os.rename('moved', 'escape-moved', dst_dir_fd=fd)),
            'dst_dir_fd replace': lambda: (open('moved2', 'w').close(), os.replace('moved2', 'escape-moved2', dst_dir_fd=fd)),
        }})
    for name, attempt in attempts.items():
        try:
            attempt()
            made.append(name)
        except Exception:  # noqa: BLE001 - refused (OSError), removed (AttributeError), no sqlite3 here, ...
            pass
    # honest work inside the working directory still works
    with open('inside.txt', 'w') as f:
        f.write('ok')
    os.close(os.open('inside2.txt', os.O_CREAT | os.O_WRONLY))
    os.mkdir('sub')
    os.rename('inside.txt', 'sub/inside.txt')
    return made
"""


def test_process_unsafe_blocks_os_open_dir_fd_and_rename_dst_dir_fd(tmp_path):
    target = tmp_path / "outside"
    target.mkdir()
    target.chmod(0o777)  # writable by anyone: only the audit hook stands in the way (the worker may be nobody)
    (target / "existing").write_text("keep")
    (target / "existing").chmod(0o666)
    code = PROCESS_UNSAFE_ESCAPES.format(target=str(target))
    r = run_python_tests(code, "total", [{"args": [[]], "expected": []}], FAST, sandbox="process-unsafe")
    assert r.score == 1.0, r.feedback  # nothing got through, and the honest writes inside worked
    assert sorted(p.name for p in target.iterdir()) == ["existing"]
    assert (target / "existing").read_text() == "keep"


@pytest.mark.system_package("bubblewrap")
def test_the_worker_cannot_reopen_the_files_of_pid_1():
    """PID 1 of the sandbox is the non-dumpable harness (--as-pid-1), not a bubblewrap reaper holding the
    parent's stdin/stdout files: its /proc/1/fd entries can be neither resolved nor reopened."""
    code = """
import os
def total(xs):
    got = []
    try:
        names = os.listdir('/proc/1/fd')
    except OSError:
        names = [str(n) for n in range(16)]
    for name in names:
        path = '/proc/1/fd/' + name
        try:
            got.append(('readlink', name, os.readlink(path)))
        except OSError:
            pass
        try:
            with open(path, 'rb') as f:
                got.append(('read', name, f.read(64)))
        except OSError:
            pass
    cmdline = open('/proc/1/cmdline', 'rb').read().split(b'\\0')[0]
    return [got, b'bwrap' in cmdline]
"""
    r = run(code, tests=[{"args": [[]], "expected": [[], False]}])
    assert r.score == 1.0, r.feedback
