"""Run model-written Python against test cases in a separate, limited process.

Each call gets a fresh temporary working directory and a child process
(``python -I -S``) with:

- a wall-clock limit per test (``timeout_s``) and a hard limit for the whole run;
- ``RLIMIT_AS`` (memory), ``RLIMIT_CPU``, ``RLIMIT_FSIZE`` (file size),
  ``RLIMIT_NOFILE`` and, when we can drop privileges, ``RLIMIT_NPROC``;
- no network: a private network namespace where the kernel allows it (root or
  unprivileged user namespaces), and in every case an audit hook that refuses
  connect/bind/DNS;
- an audit hook that refuses creating processes, loading native code and writing
  outside the working directory;
- when started as root, the child runs as ``nobody``; its own process group is
  killed when the run ends, so nothing it started outlives it;
- output captured and capped.

These layers contain accidents and the usual failure modes of generated code
(infinite loops, huge allocations, fork bombs, stray file writes, network calls).
They are not a security boundary against a determined attacker; for untrusted code
at scale, run training inside a container as well.

The result is a score (fraction of tests passed) and feedback text such as
``test 2 failed: input [1, 2, 3], expected 6, got 0``.
"""

from __future__ import annotations

import json
import os
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

RUNNER = Path(__file__).with_name("_sandbox_runner.py")
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000


@dataclass
class SandboxLimits:
    timeout_s: float = 2.0
    """Wall-clock limit for loading the code and for each test."""
    memory_mb: int = 512
    """Address-space limit of the child process."""
    max_output_chars: int = 2000
    """Printed output kept (the rest is dropped)."""
    max_file_mb: int = 16
    """Largest file the code may write in its working directory."""
    max_processes: int = 32
    """RLIMIT_NPROC for the unprivileged user the child runs as (when started as root)."""
    max_failures_reported: int = 3
    """Failing tests described in the feedback; the rest are counted."""


@dataclass
class TestCase:
    args: list[Any]
    expected: Any

    @classmethod
    def from_obj(cls, obj: Any, *, where: str = "test") -> "TestCase":
        if isinstance(obj, TestCase):
            return obj
        if not isinstance(obj, dict) or "expected" not in obj:
            raise ValueError(f"{where}: a test case is a dict with 'args' (list) and 'expected', got {obj!r}")
        args = obj.get("args", obj.get("input", []))
        if not isinstance(args, (list, tuple)):
            raise ValueError(f"{where}: 'args' must be a list of positional arguments, got {args!r}")
        return cls(list(args), obj["expected"])


@dataclass
class SandboxResult:
    passed: int
    total: int
    feedback: str
    statuses: list[str] = field(default_factory=list)
    output: str = ""
    isolation: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def score(self) -> float:
        return self.passed / self.total if self.total else 0.0


def _show_input(args: list[Any]) -> str:
    shown = repr(args[0]) if len(args) == 1 else ", ".join(repr(a) for a in args)
    return shown if len(shown) <= 200 else shown[:197] + "..."


def _libc_unshare(flags: int) -> bool:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.unshare(flags) == 0
    except Exception:  # noqa: BLE001 - best effort; the audit hook still blocks network calls
        return False


def _nobody_ids() -> tuple[int, int] | None:
    if os.geteuid() != 0:
        return None
    try:
        import pwd

        entry = pwd.getpwnam("nobody")
        return entry.pw_uid, entry.pw_gid
    except KeyError:
        return None


class _Preexec:
    """Runs in the child between fork and exec: network namespace and rlimits (the runner
    itself drops privileges once Python is loaded)."""

    def __init__(self, limits: SandboxLimits, cpu_s: int):
        self.limits, self.cpu_s = limits, cpu_s

    def __call__(self):
        flags = CLONE_NEWNET if os.geteuid() == 0 else (CLONE_NEWUSER | CLONE_NEWNET)
        _libc_unshare(flags)
        mem = self.limits.memory_mb * 1024 * 1024
        fsize = self.limits.max_file_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        resource.setrlimit(resource.RLIMIT_CPU, (self.cpu_s, self.cpu_s + 1))
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def _isolation_layers(ids, net_ok: bool) -> list[str]:
    layers = ["process", "rlimits", "audit-hook", "tempdir"]
    if ids is not None:
        layers.append("user:nobody")
    if net_ok:
        layers.append("netns")
    return layers


def _read_events(path: Path, nonce: str, cap_bytes: int = 1 << 20) -> list[dict]:
    if not path.exists():
        return []
    events = []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle.read(cap_bytes).splitlines():
            if line.startswith(nonce):
                try:
                    events.append(json.loads(line[len(nonce):]))
                except json.JSONDecodeError:
                    continue
    return events


def run_python_tests(
    code: str,
    entry_point: str,
    tests: Sequence[TestCase | dict],
    limits: SandboxLimits | None = None,
) -> SandboxResult:
    """Execute ``code`` in the sandbox and call ``entry_point(*args)`` for every test."""
    limits = limits or SandboxLimits()
    cases = [TestCase.from_obj(t, where=f"test {i}") for i, t in enumerate(tests, start=1)]
    if not cases:
        raise ValueError("run_python_tests needs at least one test case")
    ids = _nobody_ids()
    workdir = Path(tempfile.mkdtemp(prefix="sdpo-sandbox-"))
    nonce = secrets.token_hex(8)
    start = time.perf_counter()
    try:
        (workdir / "solution.py").write_text(code, encoding="utf-8")
        spec = {
            "entry_point": entry_point,
            "timeout_s": limits.timeout_s,
            "max_output_chars": limits.max_output_chars,
            # Started as root, the runner drops to `nobody` itself once Python and the
            # common standard-library modules are loaded (the interpreter may live where
            # `nobody` cannot read it).
            "drop_to": list(ids) if ids is not None else None,
            "max_processes": limits.max_processes,
            "tests": [{"args": c.args, "expected": c.expected} for c in cases],
        }
        try:
            (workdir / "tests.json").write_text(json.dumps(spec), encoding="utf-8")
        except TypeError as exc:
            raise ValueError(f"test cases must be JSON-serialisable: {exc}") from exc
        shutil.copy(RUNNER, workdir / "runner.py")
        (workdir / "results.jsonl").touch()
        if ids is not None:
            os.chown(workdir, *ids)
        hard_limit = limits.timeout_s * (len(cases) + 1) + 5.0
        cpu_s = int(hard_limit) + 1
        env = {"PATH": "/usr/bin:/bin", "HOME": str(workdir), "TMPDIR": str(workdir), "LC_ALL": "C.UTF-8"}
        with open(workdir / "output.txt", "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "runner.py", nonce],
                cwd=workdir, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                preexec_fn=_Preexec(limits, cpu_s), start_new_session=True, close_fds=True,
            )
            killed = False
            try:
                proc.wait(timeout=hard_limit)
            except subprocess.TimeoutExpired:
                killed = True
            finally:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                proc.wait()
        events = _read_events(workdir / "results.jsonl", nonce)
        raw_output = (workdir / "output.txt").read_bytes()[: limits.max_output_chars].decode("utf-8", "replace")
        net_ok = _netns_supported()
        return _summarise(cases, events, limits, killed, proc.returncode, hard_limit, raw_output,
                          _isolation_layers(ids, net_ok), time.perf_counter() - start)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


_NETNS: bool | None = None


def _netns_supported() -> bool:
    """Whether a private network namespace can be created here (checked once)."""
    global _NETNS
    if _NETNS is None:
        # In a fresh network namespace the only interface is the loopback one.
        probe = "import sys;n=[l.split(':')[0].strip() for l in open('/proc/self/net/dev').readlines()[2:]];sys.exit(0 if n==['lo'] else 1)"
        ids = _nobody_ids()
        try:
            rc = subprocess.run([sys.executable, "-I", "-S", "-c", probe], env={"PATH": "/usr/bin:/bin"},
                                preexec_fn=_Preexec(SandboxLimits(), 5), timeout=30).returncode
        except (OSError, subprocess.SubprocessError):
            rc = 1
        _NETNS = rc == 0
    return _NETNS


def _summarise(cases, events, limits, killed, returncode, hard_limit, raw_output, isolation, seconds):
    total = len(cases)
    statuses = ["not run"] * total
    lines: list[str] = []
    output = ""
    for ev in events:
        if ev.get("event") == "error":
            msg = ev["message"]
            if ev.get("stage") == "load" and not msg.startswith(("timed out", "the code does not")):
                msg = f"the code raised while being defined: {msg}"
            lines.append(msg)
            output = ev.get("output", "")
        elif ev.get("event") == "test":
            i = ev["index"] - 1
            statuses[i] = ev["status"]
            case = cases[i]
            where = f"test {i + 1} failed: input {_show_input(case.args)}"
            if ev["status"] == "failed":
                lines.append(f"{where}, expected {case.expected!r}, got {ev['got']}")
            elif ev["status"] == "error":
                lines.append(f"{where}, raised {ev['error']}")
            elif ev["status"] == "timeout":
                lines.append(f"{where}, timed out after {ev['timeout']:g} s")
        elif ev.get("event") == "done":
            output = ev.get("output", "")
    if "timeout" in statuses and "not run" in statuses:
        skipped = [i + 1 for i, s in enumerate(statuses) if s == "not run"]
        lines.append(f"test{'s' if len(skipped) > 1 else ''} {', '.join(map(str, skipped))} not run after the time-out")
    passed = statuses.count("passed")
    finished = any(ev.get("event") in ("done", "error") for ev in events) or "timeout" in statuses
    if not finished:
        if killed:
            lines.append(f"timed out after {hard_limit:g} s (the whole run)")
        elif returncode is not None and returncode < 0:
            sig = signal.Signals(-returncode).name if -returncode in signal.Signals._value2member_map_ else -returncode
            reason = "CPU time limit exceeded" if sig == "SIGXCPU" else f"killed by {sig}"
            lines.append(f"the program stopped: {reason}")
        else:
            tail = raw_output.strip().splitlines()[-1:] or [f"exit status {returncode}"]
            lines.append(f"the program stopped: {tail[0]}")
    shown = lines[: limits.max_failures_reported]
    if len(lines) > len(shown):
        shown.append(f"... and {len(lines) - len(shown)} more failing tests")
    if passed == total:
        feedback = f"All {total} tests passed."
    else:
        feedback = f"{passed} of {total} tests passed.\n" + "\n".join(shown)
    return SandboxResult(passed, total, feedback, statuses, output, isolation, seconds)
