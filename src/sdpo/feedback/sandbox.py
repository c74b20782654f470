"""Run model-written Python against test cases, isolated by the operating system.

Each call runs the in-sandbox harness (:mod:`sdpo.feedback._sandbox_runner`) in one
of these backends (``sandbox=`` argument, or the ``SDPO_SANDBOX`` environment
variable; default ``"bwrap"``):

- ``"bwrap"``: bubblewrap. New user, PID, network, IPC, UTS, cgroup and mount
  namespaces; the user inside is uid/gid 65534 with no capabilities, and no new
  user namespaces can be made inside; the root file system is an empty read-only
  tmpfs with read-only binds of only the interpreter, its standard library and the
  system's shared-library directories (the interpreter's ``site-packages`` is hidden);
  the working directory ``/work`` (``$HOME``, ``$TMPDIR``) is a private tmpfs capped at
  ``max_disk_mb``; ``/dev`` is bubblewrap's minimal read-only one; ``/proc`` shows
  only the sandbox's processes; the environment is cleared; ``--die-with-parent``
  and a new session; PID 1 of the sandbox is the harness itself (``--as-pid-1``,
  non-dumpable), so ``/proc/1`` names no file of the parent. Started as root, bubblewrap itself runs as ``nobody`` when the
  interpreter is readable by it (so the sandbox is uid 65534 on the host too);
  otherwise it runs as root and maps the sandbox's uid 65534 to host root without any
  capability (``isolation`` says which). Missing ``bwrap`` or user namespaces that
  the kernel refuses are a :class:`SandboxUnavailable` error that says what to
  install.
- ``"process-unsafe"``: the same harness in a plain ``python -I -S`` process (rlimits,
  audit hook, a private network namespace where the kernel allows, ``nobody`` when
  started as root). Weaker; chosen explicitly, it logs a warning once per process.
  What its audit hook refuses outside the working directory: ``open`` and ``os.open``
  with any write, create, append or truncate flag; the ``os`` calls that create,
  remove, rename, link or change files (``mkdir``, ``remove``, ``rmdir``, ``rename`` /
  ``replace``, ``link``, ``symlink``, ``chmod``, ``chown``, ``utime``, ``truncate``), their
  ``dir_fd`` / ``src_dir_fd`` / ``dst_dir_fd`` resolved through ``/proc/self/fd``; sqlite
  databases. ``os.open`` of a directory outside is refused (so no ``dir_fd`` can point
  there, which the ``open`` event would not show) and the working directory cannot be
  changed. ``os.mkfifo`` and ``os.mknod`` raise no audit event, so they are removed from
  ``os`` and ``posix`` in the worker. What it does not stop: anything that is not one of
  these Python calls - native code (``ctypes`` is refused, other C extensions are not
  checked), a rebuilt ``posix`` module, reading files outside - so the model's code can
  still write wherever the user it runs as may write. Only ``"bwrap"`` makes that
  impossible.
- ``"remote:<url>"`` (or an ``http(s)://`` URL, or a
  :class:`~sdpo.feedback.remote_sandbox.RemoteSandbox`): a SandboxFusion-style
  ``/run_code`` service.

Inside, the harness and the model's code are two processes: the code runs in a
forked worker with rlimits (address space, CPU, file size, open files, processes) and
the audit hook as a second layer; the harness asks for one call at a time, kills the
worker when a call runs past ``timeout_s`` and passes return values on as tagged plain
data over a pipe the worker has closed. The expected outputs never enter the
sandbox: the comparison happens here, on decoded plain values, and anything
malformed, duplicated or missing on the results channel becomes a failed test with
a precise message. The parent kills the whole sandbox when the run exceeds its
overall limit.

The result is a score (fraction of tests passed) and feedback text such as
``test 2 failed: input [1, 2, 3], expected 6, got 0``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pwd
import select
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

logger = logging.getLogger(__name__)

RUNNER = Path(__file__).with_name("_sandbox_runner.py")
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
NOBODY = 65534
SANDBOX_ENV = "SDPO_SANDBOX"
BWRAP_ENV = "SDPO_BWRAP"
SANDBOX_CHOICES = ("bwrap", "process-unsafe", "remote:<url>")
FLOAT_TOLERANCE = 1e-6


class SandboxUnavailable(RuntimeError):
    """The requested sandbox cannot run here; the message says what to install or set."""


@dataclass
class SandboxLimits:
    timeout_s: float = 2.0
    """Wall-clock limit for loading the code and for each test."""
    memory_mb: int = 512
    """Address-space limit of the process that runs the code."""
    max_output_chars: int = 2000
    """Printed output kept (the rest is dropped)."""
    max_file_mb: int = 16
    """Largest file the code may write."""
    max_processes: int = 32
    """RLIMIT_NPROC of the process that runs the code."""
    max_failures_reported: int = 3
    """Failing tests described in the feedback; the rest are counted."""
    max_disk_mb: int = 64
    """Size of the private tmpfs working directory (bwrap)."""
    max_open_files: int = 64
    """RLIMIT_NOFILE of the process that runs the code."""
    max_result_chars: int = 1_000_000
    """Largest encoded return value accepted from one call."""


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


@dataclass
class Execution:
    """What a backend brings back from one run of the harness."""

    channel: bytes
    raw_output: str = ""
    killed: bool = False
    returncode: int | None = None
    isolation: list[str] = field(default_factory=list)
    overflow: bool = False


# ----------------------------------------------------------------- backends

def _runner_source() -> str:
    return RUNNER.read_text(encoding="utf-8")


def _collect(proc: subprocess.Popen, read_fd: int, deadline: float, cap: int) -> tuple[bytes, bool, bool]:
    """Read the results channel until EOF, the deadline or the size cap; (data, killed, overflow)."""
    chunks, size = [], 0
    killed = overflow = False
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                killed = True
                break
            ready, _, _ = select.select([read_fd], [], [], min(left, 1.0))
            if not ready:
                if proc.poll() is not None and not select.select([read_fd], [], [], 0)[0]:
                    break
                continue
            block = os.read(read_fd, 1 << 16)
            if not block:
                break
            size += len(block)
            if size > cap:
                overflow = True
                break
            chunks.append(block)
        if not killed and not overflow:
            try:
                proc.wait(timeout=max(0.1, min(5.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                killed = True
    finally:
        os.close(read_fd)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if proc.poll() is None:
            try:
                proc.kill()
            except ProcessLookupError:
                pass
        proc.wait()
    return b"".join(chunks), killed, overflow


def _run_local(argv, spec, limits, hard_limit, *, cwd, preexec, isolation) -> Execution:
    read_fd, write_fd = os.pipe()
    spec = dict(spec, channel_fd=write_fd)
    cap = (len(spec["args"]) + 4) * (limits.max_result_chars + 4096)
    with tempfile.TemporaryFile() as stdin, tempfile.TemporaryFile() as out:
        stdin.write(json.dumps(spec).encode("utf-8"))
        stdin.seek(0)
        try:
            proc = subprocess.Popen(
                argv, cwd=cwd, stdin=stdin, stdout=out, stderr=subprocess.STDOUT, env={"LC_ALL": "C.UTF-8",
                "PATH": "/usr/bin:/bin"}, preexec_fn=preexec, start_new_session=True, close_fds=True,
                pass_fds=(write_fd,),
            )
        except OSError:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        channel, killed, overflow = _collect(proc, read_fd, time.monotonic() + hard_limit, cap)
        out.seek(0)
        raw = out.read(max(limits.max_output_chars, 4000)).decode("utf-8", "replace")
    return Execution(channel, raw, killed, proc.returncode, isolation, overflow)


def _drop_to_nobody():
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


def _readable_by_others(path: str) -> bool:
    """Whether `nobody` can reach and read ``path`` (every parent searchable by others)."""
    p = Path(path)
    try:
        for parent in list(p.parents):
            if not os.stat(parent).st_mode & stat.S_IXOTH:
                return False
        mode = os.stat(p).st_mode
    except OSError:
        return False
    need = stat.S_IROTH | (stat.S_IXOTH if stat.S_ISDIR(mode) else 0)
    return mode & need == need


class BwrapSandbox:
    """Bubblewrap backend (see the module docstring for what is isolated and how)."""

    name = "bwrap"

    def __init__(self, bwrap: str | None = None):
        self.bwrap = bwrap or os.environ.get(BWRAP_ENV) or shutil.which("bwrap")
        self._lock = threading.Lock()
        self._ready: tuple[bool, list[str]] | None = None  # (run as nobody, isolation)
        self._help_text = ""

    # The interpreter the sandbox runs: the base one (not a venv's), with -I -S.
    @staticmethod
    def interpreter() -> str:
        return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)

    @staticmethod
    def mounts() -> tuple[list[str], list[tuple[str, str]], list[str]]:
        """(read-only bind sources, symlinks (target, path), directories to hide)."""
        base = {"base": sys.base_prefix, "platbase": sys.base_exec_prefix,
                "installed_base": sys.base_prefix, "installed_platbase": sys.base_exec_prefix}
        paths = sysconfig.get_paths(vars=base)
        binds = [BwrapSandbox.interpreter(), paths["stdlib"], paths["platstdlib"]]
        if sysconfig.get_config_var("Py_ENABLE_SHARED"):
            libdir = sysconfig.get_config_var("LIBDIR")
            if libdir:
                binds.append(libdir)
        links = []
        for d in ("/usr/lib", "/usr/lib64", "/lib", "/lib64", "/usr/lib32", "/lib32"):
            if os.path.islink(d):
                links.append((os.readlink(d), d))
            elif os.path.isdir(d):
                binds.append(d)
        if os.path.isfile("/etc/ld.so.cache"):
            binds.append("/etc/ld.so.cache")
        real = sorted({os.path.realpath(b) for b in binds if os.path.exists(b)}, key=len)
        kept: list[str] = []
        for b in real:
            if not any(b == k or b.startswith(k.rstrip("/") + "/") for k in kept):
                kept.append(b)
        hide = []
        for key in ("purelib", "platlib"):
            site = os.path.realpath(paths[key])
            if os.path.isdir(site) and any(site.startswith(k.rstrip("/") + "/") for k in kept) and site not in hide:
                hide.append(site)
        return kept, links, hide

    def _help(self) -> str:
        try:
            return subprocess.run([self.bwrap, "--help"], capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    def argv(self, limits: SandboxLimits, runner_source: str) -> list[str]:
        binds, links, hide = self.mounts()
        args = [self.bwrap, "--unshare-all", "--unshare-user"]
        if "--disable-userns" in self._help_text:
            args.append("--disable-userns")
        # --as-pid-1: the harness (non-dumpable) is PID 1 of the sandbox's PID namespace, not a bubblewrap
        # reaper holding the parent's stdin/stdout files, whose /proc/1/fd the worker could reopen
        args += ["--uid", str(NOBODY), "--gid", str(NOBODY), "--hostname", "sandbox", "--die-with-parent",
                 "--as-pid-1", "--new-session", "--cap-drop", "ALL", "--clearenv",
                 "--setenv", "HOME", "/work", "--setenv", "TMPDIR", "/work", "--setenv", "LC_ALL", "C.UTF-8"]
        for source in binds:
            args += ["--ro-bind", source, source]
        for target, path in links:
            args += ["--symlink", target, path]
        for path in hide:
            args += ["--size", "4096", "--tmpfs", path, "--remount-ro", path]
        args += ["--proc", "/proc", "--dev", "/dev", "--remount-ro", "/dev",
                 "--size", str(limits.max_disk_mb * 1024 * 1024), "--tmpfs", "/work",
                 "--remount-ro", "/", "--chdir", "/work",
                 "--", self.interpreter(), "-I", "-S", "-c", runner_source]
        return args

    def _ensure(self) -> tuple[bool, list[str]]:
        with self._lock:
            if self._ready is not None:
                return self._ready
            if not self.bwrap or not os.access(self.bwrap, os.X_OK):
                raise SandboxUnavailable(
                    "code sandbox: bubblewrap (`bwrap`) was not found; install it (Debian/Ubuntu: apt-get install "
                    "bubblewrap; Fedora: dnf install bubblewrap) or opt in to the weaker process-only sandbox with "
                    "sandbox='process-unsafe' (environment: SDPO_SANDBOX=process-unsafe)")
            self._help_text = self._help()
            binds, _, _ = self.mounts()
            tries = [True, False] if os.geteuid() == 0 and all(map(_readable_by_others, binds)) else [False]
            problem = ""
            for as_nobody in tries:
                isolation = self._isolation(as_nobody)
                spec = _spec("def f():\n    return 1\n", "f", [[]], SandboxLimits(timeout_s=10.0))
                ex = self._execute(spec, SandboxLimits(timeout_s=10.0), 30.0, as_nobody, isolation)
                events, problems = _parse_channel(ex.channel, 1)
                if not problems and events.get("tests", {}).get(1) and events.get("done"):
                    self._ready = (as_nobody, isolation)
                    return self._ready
                problem = (ex.raw_output.strip().splitlines() or [f"exit status {ex.returncode}"])[0]
            hint = ("allow unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1, "
                    "user.max_user_namespaces>0; on Ubuntu 24.04 kernel.apparmor_restrict_unprivileged_userns=0)")
            raise SandboxUnavailable(
                f"code sandbox: bubblewrap cannot start a sandbox here ({problem}); {hint}, or opt in to the weaker "
                "process-only sandbox with sandbox='process-unsafe' (environment: SDPO_SANDBOX=process-unsafe)")

    def _isolation(self, as_nobody: bool) -> list[str]:
        if os.geteuid() == 0:
            host = "host-uid:65534" if as_nobody else "host-uid:0-no-capabilities"
        else:
            host = f"host-uid:{os.geteuid()}"
        return ["bwrap", "user-ns", "pid-ns", "net-ns", "ipc-ns", "uts-ns", "mount-ns", "uid:65534", host,
                "cap-drop:all", "tmpfs-workdir", "rlimits", "audit-hook", "two-process-harness"]

    def _execute(self, spec, limits, hard_limit, as_nobody, isolation) -> Execution:
        return _run_local(self.argv(limits, _runner_source()), spec, limits, hard_limit, cwd="/",
                          preexec=_drop_to_nobody if as_nobody else None, isolation=isolation)

    def execute(self, spec: dict, limits: SandboxLimits, hard_limit: float) -> Execution:
        as_nobody, isolation = self._ensure()
        return self._execute(spec, limits, hard_limit, as_nobody, isolation)


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
        entry = pwd.getpwnam("nobody")
        return entry.pw_uid, entry.pw_gid
    except KeyError:
        return NOBODY, NOBODY


def _process_preexec():
    _libc_unshare(CLONE_NEWNET if os.geteuid() == 0 else (CLONE_NEWUSER | CLONE_NEWNET))


class ProcessSandbox:
    """The weaker process-only sandbox (explicit opt-in: ``sandbox="process-unsafe"``)."""

    name = "process-unsafe"
    _warned = False
    _warn_lock = threading.Lock()

    def execute(self, spec: dict, limits: SandboxLimits, hard_limit: float) -> Execution:
        with ProcessSandbox._warn_lock:
            if not ProcessSandbox._warned:
                ProcessSandbox._warned = True
                logger.warning("code sandbox: running model-written code with the process-only sandbox "
                               "(sandbox='process-unsafe'): no OS-level isolation of files, processes or signals; "
                               "use the default bubblewrap sandbox for untrusted code")
        ids = _nobody_ids()
        workdir = tempfile.mkdtemp(prefix="sdpo-sandbox-")
        try:
            if ids is not None:
                os.chown(workdir, *ids)
            spec = dict(spec, drop_to=list(ids) if ids else None)
            layers = ["process", "rlimits", "audit-hook", "tempdir", "two-process-harness"]
            if ids is not None:
                layers.append("user:nobody")
            return _run_local([BwrapSandbox.interpreter(), "-I", "-S", "-c", _runner_source()], spec, limits,
                              hard_limit, cwd=workdir, preexec=_process_preexec, isolation=layers)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


_BACKENDS: dict[str, Any] = {}
_BACKENDS_LOCK = threading.Lock()


def resolve_sandbox(sandbox: Any = None):
    """The backend for ``sandbox``: None (``$SDPO_SANDBOX``, default bwrap), "bwrap",
    "process-unsafe", "remote:<url>" / an http(s) URL, or a backend object."""
    if sandbox is None:
        sandbox = os.environ.get(SANDBOX_ENV) or "bwrap"
    if not isinstance(sandbox, str):
        if not callable(getattr(sandbox, "execute", None)):
            raise ValueError(f"sandbox: expected one of {', '.join(SANDBOX_CHOICES)} or a backend object, "
                             f"got {sandbox!r}")
        return sandbox
    key = sandbox.strip()
    with _BACKENDS_LOCK:
        if key not in _BACKENDS:
            if key == "bwrap":
                _BACKENDS[key] = BwrapSandbox()
            elif key == "process-unsafe":
                _BACKENDS[key] = ProcessSandbox()
            elif key.startswith(("remote:", "http://", "https://")):
                from .remote_sandbox import RemoteSandbox

                _BACKENDS[key] = RemoteSandbox(key[len("remote:"):] if key.startswith("remote:") else key)
            else:
                raise ValueError(f"sandbox: expected one of {', '.join(SANDBOX_CHOICES)}, got {sandbox!r}")
        return _BACKENDS[key]


# ----------------------------------------------------------------- protocol

def _spec(code: str, entry_point: str, args: list, limits: SandboxLimits) -> dict:
    hard_limit = _hard_limit(limits, len(args))
    return {
        "code": code, "entry_point": entry_point, "args": args, "timeout_s": limits.timeout_s,
        "memory_mb": limits.memory_mb, "max_file_mb": limits.max_file_mb, "max_processes": limits.max_processes,
        "max_open_files": limits.max_open_files, "cpu_s": int(hard_limit) + 1,
        "max_output_chars": limits.max_output_chars, "max_result_chars": limits.max_result_chars,
        "max_repr_chars": 200,
    }


def _hard_limit(limits: SandboxLimits, n: int) -> float:
    return limits.timeout_s * (n + 1) + 5.0


_TAGS = ("tuple", "dict", "set", "frozenset", "bytes", "complex", "bigint")


def decode_plain(node: Any, depth: int = 0) -> Any:
    """The plain value of a tagged result (see the harness's ``plain``); ValueError if malformed."""
    if depth > 100:
        raise ValueError("nested too deeply")
    if node is None or isinstance(node, (bool, int, float, str)):
        return node
    if isinstance(node, list):
        return [decode_plain(x, depth + 1) for x in node]
    if isinstance(node, dict) and len(node) == 1:
        ((tag, body),) = node.items()
        try:
            if tag in ("tuple", "set", "frozenset") and isinstance(body, list):
                items = [decode_plain(x, depth + 1) for x in body]
                return {"tuple": tuple, "set": set, "frozenset": frozenset}[tag](items)
            if tag == "dict" and isinstance(body, list):
                pairs = []
                for pair in body:
                    if not (isinstance(pair, list) and len(pair) == 2):
                        raise ValueError("a dict entry is not a [key, value] pair")
                    pairs.append((decode_plain(pair[0], depth + 1), decode_plain(pair[1], depth + 1)))
                return dict(pairs)
            if tag == "bytes" and isinstance(body, str):
                return bytes.fromhex(body)
            if tag == "complex" and isinstance(body, list) and len(body) == 2 \
                    and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in body):
                return complex(body[0], body[1])
            if tag == "bigint" and isinstance(body, str):
                return int(body, 16)
        except TypeError as exc:  # e.g. an unhashable set member or dict key
            raise ValueError(str(exc)) from exc
        raise ValueError(f"malformed {tag!r} value")
    raise ValueError(f"unexpected {type(node).__name__} in a result")


def _same(got: Any, expected: Any, tol: float = FLOAT_TOLERANCE) -> bool:
    """Equality on plain values; floats within ``tol``; lists and tuples element-wise."""
    if isinstance(expected, float) or isinstance(got, float):
        if isinstance(got, (int, float)) and isinstance(expected, (int, float)):
            return math.isclose(float(got), float(expected), rel_tol=tol, abs_tol=tol)
        return False
    if isinstance(expected, (list, tuple)) and isinstance(got, (list, tuple)):
        return len(got) == len(expected) and all(_same(g, e, tol) for g, e in zip(got, expected))
    try:
        return bool(got == expected)
    except Exception:  # noqa: BLE001 - plain values compare; be safe anyway
        return False


_TEST_STATUSES = {"returned", "raised", "timeout", "not_plain", "broken"}


def _repr(value: Any) -> str:
    """repr() that never raises (ints past the digit limit, hostile sizes)."""
    try:
        return repr(value)
    except (ValueError, RecursionError, MemoryError):
        if isinstance(value, int):
            return f"<int of {value.bit_length()} bits>"
        return f"<{type(value).__name__} that cannot be shown>"


def _short(text: str, cap: int = 200) -> str:
    return text if len(text) <= cap else text[: cap - 3] + "..."


def _parse_channel(data: bytes, n: int) -> tuple[dict, list[str]]:
    """Validate the harness's event lines. Returns ({"load": ev, "tests": {i: [ev, ...]},
    "done": ev}, problems); any line that is not a well-formed event is a problem."""
    events: dict[str, Any] = {"load": None, "tests": {}, "done": None}
    problems: list[str] = []
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    elif lines:
        problems.append("the last line was cut off")
        lines.pop()
    for number, raw in enumerate(lines, start=1):
        try:
            ev = json.loads(raw.decode("utf-8"))
        except (ValueError, RecursionError):
            problems.append(f"line {number} is not valid JSON: {_short(repr(raw), 80)}")
            continue
        kind = ev.get("e") if isinstance(ev, dict) else None
        if kind == "start":
            continue
        if kind == "load" and ev.get("status") in ("ok", "error", "timeout", "missing") and events["load"] is None:
            if ev["status"] == "error" and not isinstance(ev.get("message"), str):
                problems.append(f"line {number}: a load error without a message")
                continue
            events["load"] = ev
            continue
        if kind == "done" and events["done"] is None and isinstance(ev.get("output", ""), str):
            events["done"] = ev
            continue
        if kind == "test":
            index = ev.get("i")
            if not isinstance(index, int) or isinstance(index, bool) or not 1 <= index <= n:
                problems.append(f"line {number}: a result for test {_short(repr(index), 40)}, which does not exist")
                continue
            if ev.get("status") not in _TEST_STATUSES:
                problems.append(f"line {number}: test {index} has an unknown status {_short(repr(ev.get('status')), 40)}")
                continue
            events["tests"].setdefault(index, []).append(ev)
            continue
        problems.append(f"line {number} is not an expected event: {_short(repr(raw), 80)}")
    return events, problems


def _show_input(args: list[Any]) -> str:
    shown = repr(args[0]) if len(args) == 1 else ", ".join(repr(a) for a in args)
    return shown if len(shown) <= 200 else shown[:197] + "..."


def _summarise(cases: list[TestCase], entry_point: str, ex: Execution, limits: SandboxLimits, hard_limit: float,
               seconds: float) -> SandboxResult:
    total = len(cases)
    events, problems = _parse_channel(ex.channel, total)
    if ex.overflow:
        problems.append("the results channel carried more data than allowed")
    statuses = ["not run"] * total
    lines: list[str] = []
    load = events["load"]
    done = events["done"]
    output = done.get("output", "") if done else ""
    stopped_at = None
    if load is not None and load["status"] != "ok":
        if load["status"] == "timeout":
            lines.append(f"timed out after {limits.timeout_s:g} s while defining the code")
        elif load["status"] == "missing":
            lines.append(f"the code does not define a function named `{entry_point}`")
        else:
            msg = load["message"]
            lines.append(msg if load.get("stage") == "compile" else f"the code raised while being defined: {msg}")
            output = load.get("output", "") if isinstance(load.get("output", ""), str) else ""
    for i, case in enumerate(cases):
        evs = events["tests"].get(i + 1, [])
        if not evs:
            continue
        where = f"test {i + 1} failed: input {_show_input(case.args)}"
        if len(evs) > 1:
            statuses[i] = "error"
            lines.append(f"{where}, the sandbox sent {len(evs)} results for this test")
            continue
        ev = evs[0]
        status = ev["status"]
        if status == "returned":
            try:
                got = decode_plain(ev.get("value"))
            except (ValueError, RecursionError) as exc:
                statuses[i] = "error"
                lines.append(f"{where}, the result could not be decoded ({exc})")
                continue
            if _same(got, case.expected):
                statuses[i] = "passed"
            else:
                statuses[i] = "failed"
                lines.append(f"{where}, expected {_short(_repr(case.expected), 2000)}, got {_short(_repr(got))}")
        elif status == "raised":
            statuses[i] = "error"
            lines.append(f"{where}, raised {ev.get('error')}")
        elif status == "timeout":
            statuses[i] = "timeout"
            lines.append(f"{where}, timed out after {limits.timeout_s:g} s")
            stopped_at = stopped_at or i + 1
        elif status == "not_plain":
            statuses[i] = "failed"
            lines.append(f"{where}, expected {_short(_repr(case.expected), 2000)}, got {_short(str(ev.get('repr')))} (a "
                         f"{_short(str(ev.get('type')), 60)}, not plain data: return None, bool, int, float, str, "
                         "bytes, or lists, tuples, dicts and sets of them)")
        else:
            statuses[i] = "error"
            lines.append(f"{where}, {_short(str(ev.get('message')), 300)}")
            stopped_at = stopped_at or i + 1
    skipped = [i + 1 for i, s in enumerate(statuses) if s == "not run"]
    loaded = load is not None and load["status"] == "ok"
    if skipped and loaded and stopped_at is not None:
        why = "the time-out" if statuses[stopped_at - 1] == "timeout" else f"test {stopped_at} stopped the process"
        lines.append(f"test{'s' if len(skipped) > 1 else ''} {', '.join(map(str, skipped))} not run after {why}")
    elif skipped and (load is None or loaded):
        if ex.killed:
            lines.append(f"timed out after {hard_limit:g} s (the whole run)")
        else:
            tail = ex.raw_output.strip().splitlines()[-1:] or [f"exit status {ex.returncode}"]
            lines.append(f"the sandbox stopped before test {skipped[0]} finished: {_short(tail[0], 300)}")
    if problems:
        lines.append("the results channel carried malformed data, so no test counts as passed: "
                     + "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else ""))
        statuses = [s if s != "passed" else "void" for s in statuses]
    passed = statuses.count("passed")
    shown = lines[: limits.max_failures_reported]
    if problems and lines[-1] not in shown:
        shown.append(lines[-1])
    if len(lines) > len(shown):
        shown.append(f"... and {len(lines) - len(shown)} more failing tests")
    if passed == total:
        feedback = f"All {total} tests passed."
    else:
        feedback = f"{passed} of {total} tests passed.\n" + "\n".join(shown)
    return SandboxResult(passed, total, feedback, statuses, output, list(ex.isolation), seconds)


def run_python_tests(
    code: str,
    entry_point: str,
    tests: Sequence[TestCase | dict],
    limits: SandboxLimits | None = None,
    *,
    sandbox: Any = None,
) -> SandboxResult:
    """Execute ``code`` in the sandbox and call ``entry_point(*args)`` for every test.

    ``sandbox``: "bwrap" (default, or ``$SDPO_SANDBOX``), "process-unsafe",
    "remote:<url>", or a backend object (e.g. :class:`RemoteSandbox`).
    """
    limits = limits or SandboxLimits()
    cases = [TestCase.from_obj(t, where=f"test {i}") for i, t in enumerate(tests, start=1)]
    if not cases:
        raise ValueError("run_python_tests needs at least one test case")
    args = [c.args for c in cases]
    try:
        json.dumps(args)  # only the arguments enter the sandbox
    except (TypeError, ValueError) as exc:
        raise ValueError(f"test cases must be JSON-serialisable: {exc}") from exc
    backend = resolve_sandbox(sandbox)
    start = time.perf_counter()
    hard_limit = _hard_limit(limits, len(cases))
    ex = backend.execute(_spec(code, entry_point, args, limits), limits, hard_limit)
    return _summarise(cases, entry_point, ex, limits, hard_limit, time.perf_counter() - start)


def run_python_tests_batch(
    jobs: Sequence[tuple[str, str, Sequence[TestCase | dict]]],
    limits: SandboxLimits | None = None,
    *,
    sandbox: Any = None,
    max_workers: int = 4,
) -> list[SandboxResult]:
    """:func:`run_python_tests` for each ``(code, entry_point, tests)``, up to ``max_workers`` at a time."""
    if max_workers < 1:
        raise ValueError(f"max_workers must be at least 1, got {max_workers}")
    jobs = list(jobs)
    if not jobs:
        return []
    backend = resolve_sandbox(sandbox)
    with ThreadPoolExecutor(max_workers=min(max_workers, len(jobs))) as pool:
        return list(pool.map(lambda job: run_python_tests(job[0], job[1], job[2], limits, sandbox=backend), jobs))
