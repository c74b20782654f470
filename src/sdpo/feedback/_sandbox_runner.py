# Runs inside the sandbox process (python -I -S, a private temporary directory).
# Standalone on purpose: only the standard library, no sdpo import.
#
# argv: nonce. Reads solution.py and tests.json from the working directory, appends
# one JSON line per event to results.jsonl (each prefixed with the nonce), and runs
# every test with a per-test timer. Before the model's code runs, an audit hook
# refuses process creation, network access, native-code loading and writes outside
# the working directory.
import io
import json
import math
import os
import signal
import sys

NONCE = sys.argv[1]
WORKDIR = os.path.realpath(os.getcwd())
SPEC = json.load(open("tests.json", encoding="utf-8"))
SOURCE = open("solution.py", encoding="utf-8").read()
_results = open("results.jsonl", "a", encoding="utf-8")


def emit(**event):
    _results.write(NONCE + json.dumps(event) + "\n")
    _results.flush()


class CappedText(io.TextIOBase):
    def __init__(self, cap):
        self.cap, self.parts, self.size = cap, [], 0

    def writable(self):
        return True

    def write(self, s):
        room = self.cap - self.size
        if room > 0:
            self.parts.append(s[:room])
            self.size += min(len(s), room)
        return len(s)

    def text(self):
        return "".join(self.parts)


def short(value, cap):
    text = repr(value)
    return text if len(text) <= cap else text[: cap - 3] + "..."


def same(got, expected, tol):
    if isinstance(expected, float) or isinstance(got, float):
        try:
            return math.isclose(float(got), float(expected), rel_tol=tol, abs_tol=tol)
        except (TypeError, ValueError):
            return False
    if isinstance(expected, (list, tuple)) and isinstance(got, (list, tuple)):
        return len(got) == len(expected) and all(same(g, e, tol) for g, e in zip(got, expected))
    return got == expected


BLOCKED_EVENTS = {
    "os.fork": "creating processes",
    "os.forkpty": "creating processes",
    "os.system": "running shell commands",
    "os.exec": "running programs",
    "os.posix_spawn": "running programs",
    "os.spawn": "running programs",
    "subprocess.Popen": "running programs",
    "pty.spawn": "running programs",
    "os.kill": "signalling processes",
    "os.killpg": "signalling processes",
    "socket.connect": "network access",
    "socket.bind": "network access",
    "socket.getaddrinfo": "network access",
    "socket.gethostbyname": "network access",
    "socket.sendto": "network access",
    "ctypes.dlopen": "loading native code",
    "ctypes.dlsym": "loading native code",
    "sys.setrecursionlimit": None,  # allowed, listed for clarity
}
BLOCKED_IMPORTS = {"_posixsubprocess", "ctypes", "_ctypes", "multiprocessing", "_multiprocessing"}
WRITE_EVENTS = {"os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.truncate",
                "os.link", "os.symlink", "os.utime", "shutil.rmtree", "shutil.move", "shutil.copyfile"}


def inside(path):
    try:
        real = os.path.realpath(os.fspath(path))
    except TypeError:
        return True  # file descriptors: only ones we already hold
    return real == WORKDIR or real.startswith(WORKDIR + os.sep)


class SandboxViolation(PermissionError):
    pass


def hook(event, args):
    reason = BLOCKED_EVENTS.get(event)
    if reason:
        raise SandboxViolation(f"sandbox: {reason} is not allowed ({event})")
    if event == "import" and args and args[0] in BLOCKED_IMPORTS:
        raise SandboxViolation(f"sandbox: importing {args[0]} is not allowed")
    if event == "open" and len(args) >= 2:
        path, mode = args[0], args[1]
        writing = isinstance(mode, str) and any(c in mode for c in "wax+")
        if isinstance(mode, int):  # os.open flags
            writing = bool(mode & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC))
        if writing and path is not None and not inside(path):
            raise SandboxViolation(f"sandbox: writing outside the working directory is not allowed ({path})")
    if event in WRITE_EVENTS and args and not all(inside(a) for a in args[:2] if isinstance(a, (str, bytes))):
        raise SandboxViolation(f"sandbox: changing files outside the working directory is not allowed ({event})")


class TestTimeout(BaseException):
    """BaseException so that `except Exception` in the model's code cannot swallow it."""


def on_alarm(signum, frame):
    raise TestTimeout()


def describe(exc):
    message = str(exc)
    name = type(exc).__name__
    return f"{name}: {message}" if message else name


PRELOAD = ("math", "cmath", "itertools", "functools", "collections", "heapq", "bisect", "re", "string",
           "random", "statistics", "fractions", "decimal", "operator", "typing", "dataclasses", "copy",
           "datetime", "enum", "array", "textwrap", "unicodedata", "socket")


def drop_privileges():
    ids = SPEC.get("drop_to")
    if not ids or os.geteuid() != 0:
        return
    import importlib
    import resource

    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    uid, gid = ids
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    n = int(SPEC.get("max_processes", 32))
    resource.setrlimit(resource.RLIMIT_NPROC, (n, n))


def main():
    drop_privileges()
    entry = SPEC["entry_point"]
    timeout = float(SPEC["timeout_s"])
    tol = float(SPEC.get("float_tolerance", 1e-6))
    cap = int(SPEC.get("max_repr_chars", 200))
    out = CappedText(int(SPEC.get("max_output_chars", 2000)))
    sys.stdout = sys.stderr = out
    signal.signal(signal.SIGALRM, on_alarm)
    sys.addaudithook(hook)
    namespace = {"__name__": "solution"}
    try:
        code = compile(SOURCE, "solution.py", "exec")
    except SyntaxError as exc:
        emit(event="error", stage="compile", message=f"SyntaxError: {exc.msg} (line {exc.lineno})")
        return
    try:
        signal.setitimer(signal.ITIMER_REAL, timeout)
        exec(code, namespace)
        signal.setitimer(signal.ITIMER_REAL, 0)
    except TestTimeout:
        emit(event="error", stage="load", message=f"timed out after {timeout:g} s while defining the code")
        return
    except BaseException as exc:  # noqa: BLE001 - everything becomes feedback
        signal.setitimer(signal.ITIMER_REAL, 0)
        emit(event="error", stage="load", message=describe(exc), output=out.text())
        return
    func = namespace.get(entry)
    if not callable(func):
        emit(event="error", stage="load", message=f"the code does not define a function named `{entry}`")
        return
    for index, case in enumerate(SPEC["tests"], start=1):
        args = case.get("args", [])
        try:
            signal.setitimer(signal.ITIMER_REAL, timeout)
            got = func(*args)
            signal.setitimer(signal.ITIMER_REAL, 0)
        except TestTimeout:
            emit(event="test", index=index, status="timeout", timeout=timeout)
            break  # a loop that hangs once usually hangs again: do not spend the time

        except RecursionError as exc:
            signal.setitimer(signal.ITIMER_REAL, 0)
            emit(event="test", index=index, status="error", error=describe(exc))
            continue
        except BaseException as exc:  # noqa: BLE001
            signal.setitimer(signal.ITIMER_REAL, 0)
            emit(event="test", index=index, status="error", error=describe(exc))
            continue
        if same(got, case["expected"], tol):
            emit(event="test", index=index, status="passed")
        else:
            emit(event="test", index=index, status="failed", got=short(got, cap))
    emit(event="done", output=out.text())


main()
