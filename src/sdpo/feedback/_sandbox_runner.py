# The in-sandbox harness. Standalone on purpose: only the standard library, no sdpo
# import; it is run as `python -I -S -c <this file's text>` (inside bubblewrap, in a
# plain process, or on a remote code-execution server).
#
# Two processes, so that the model's code never shares an interpreter with the code
# that reports results:
#
# - the harness (this process) reads the spec from stdin (code, entry point and the
#   tests' arguments; never the expected outputs), forks a worker, makes itself
#   non-dumpable (the worker cannot ptrace it or open its /proc files), and then only
#   talks to the worker through a request pipe and a reply pipe. For each step
#   (load, test 1, test 2, ...) it sends one request, waits for exactly one reply line
#   with a deadline, and SIGKILLs the worker when the deadline passes. It attributes
#   each reply to the request it made, parses it with its own (unpatched) json module
#   and writes one event line to the results channel, a file descriptor the worker
#   has closed before any model code runs.
# - the worker sets its rlimits, installs the audit hook (a second layer under the
#   OS sandbox), runs the model's code and the calls, and encodes return values as
#   tagged plain data (the parent compares on the decoded plain values).
#
# Nothing the worker sends is trusted: the harness re-parses it, and the parent
# re-parses and validates the harness's events again.
import json
import os
import select
import signal
import sys
from time import monotonic as os_time

PR_SET_DUMPABLE = 4
WORKER_PID = 0
MAX_DEPTH = 100


def _read_spec():
    chunks = []
    while True:
        block = os.read(0, 1 << 16)
        if not block:
            break
        chunks.append(block)
    os.close(0)
    return json.loads(b"".join(chunks).decode("utf-8"))


SPEC = _read_spec()
WORKDIR = os.path.realpath(os.getcwd())


# ---------------------------------------------------------------- worker side

class NotPlain(Exception):
    pass


def plain(value, depth=0):
    """Tagged JSON-able form of a builtin value (subclasses reduced to their base type)."""
    if depth > MAX_DEPTH:
        raise NotPlain("nested too deeply")
    if value is None or isinstance(value, bool):
        return bool(value) if value is not None else None
    if isinstance(value, int):
        value = int.__int__(value)
        return {"bigint": hex(value)} if value.bit_length() > 10000 else value
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, complex):
        return {"complex": [value.real, value.imag]}
    if isinstance(value, (bytes, bytearray)):
        return {"bytes": bytes(value).hex()}
    if isinstance(value, list):
        return [plain(v, depth + 1) for v in list.__iter__(value)]
    if isinstance(value, tuple):
        return {"tuple": [plain(v, depth + 1) for v in tuple.__iter__(value)]}
    if isinstance(value, dict):
        return {"dict": [[plain(k, depth + 1), plain(v, depth + 1)] for k, v in dict.items(value)]}
    if isinstance(value, frozenset):
        return {"frozenset": [plain(v, depth + 1) for v in frozenset.__iter__(value)]}
    if isinstance(value, set):
        return {"set": [plain(v, depth + 1) for v in set.__iter__(value)]}
    raise NotPlain(type(value).__name__)


class CappedText:
    def __init__(self, cap):
        self.cap, self.parts, self.size = cap, [], 0

    def write(self, s):
        s = str(s)
        room = self.cap - self.size
        if room > 0:
            self.parts.append(s[:room])
            self.size += min(len(s), room)
        return len(s)

    def flush(self):
        pass

    def writable(self):
        return True

    def isatty(self):
        return False

    def text(self):
        return "".join(self.parts)


def describe(exc):
    try:
        message = str(exc)
    except BaseException:  # noqa: BLE001 - a hostile __str__
        message = "<unprintable>"
    name = type(exc).__name__
    return f"{name}: {message}" if message else name


def safe_repr(value, cap):
    try:
        text = repr(value)
    except BaseException:  # noqa: BLE001
        text = f"<{type(value).__name__} object>"
    return text if len(text) <= cap else text[: cap - 3] + "..."


BLOCKED_EVENTS = {
    "os.fork": "creating processes", "os.forkpty": "creating processes", "os.system": "running shell commands",
    "os.exec": "running programs", "os.posix_spawn": "running programs", "os.spawn": "running programs",
    "subprocess.Popen": "running programs", "pty.spawn": "running programs",
    "os.kill": "signalling processes", "os.killpg": "signalling processes",
    "socket.connect": "network access", "socket.bind": "network access", "socket.getaddrinfo": "network access",
    "socket.gethostbyname": "network access", "socket.sendto": "network access",
    "ctypes.dlopen": "loading native code", "ctypes.dlsym": "loading native code",
}
BLOCKED_IMPORTS = {"_posixsubprocess", "ctypes", "_ctypes", "multiprocessing", "_multiprocessing"}
WRITE_EVENTS = {"os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.truncate",
                "os.link", "os.symlink", "os.utime", "shutil.rmtree", "shutil.move", "shutil.copyfile"}
# (path argument, its dir_fd argument) positions of the write events that take a dir_fd (-1/None: none given)
DIR_FD_ARGS = {"os.remove": [(0, 1)], "os.rmdir": [(0, 1)], "os.mkdir": [(0, 2)], "os.chmod": [(0, 2)],
               "os.chown": [(0, 3)], "os.utime": [(0, 3)], "os.symlink": [(0, None), (1, 2)],
               "os.rename": [(0, 2), (1, 3)], "os.link": [(0, 2), (1, 3)]}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def inside(path, dir_fd=None):
    """Whether ``path`` (relative to ``dir_fd`` when one is given, else to the working directory, which the
    model's code cannot change) resolves inside the working directory."""
    try:
        path = os.fspath(path)
    except TypeError:
        return True  # file descriptors: only ones already held
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if isinstance(dir_fd, int) and dir_fd >= 0 and not os.path.isabs(path):
        try:
            base = os.readlink(f"/proc/self/fd/{dir_fd}")
        except OSError:
            return False  # a directory we cannot name: refused
        path = os.path.join(base, path)
    real = os.path.realpath(path)
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
        flags = args[2] if len(args) >= 3 and isinstance(args[2], int) else 0
        writing = isinstance(mode, str) and any(c in mode for c in "wax+")
        if isinstance(mode, int):
            writing = bool(mode & WRITE_FLAGS)
        if mode is None:  # os.open: the flags say it
            writing = bool(flags & WRITE_FLAGS)
        if path is not None and not isinstance(path, int) and not inside(path):
            if writing:
                raise SandboxViolation(f"sandbox: writing outside the working directory is not allowed ({path})")
            # a descriptor of a directory outside would let dir_fd= calls (whose dir_fd this event does not
            # show) create files there: only directories inside can be opened
            if mode is None and (flags & getattr(os, "O_DIRECTORY", 0) or os.path.isdir(path)):
                raise SandboxViolation(f"sandbox: opening a directory outside the working directory is not "
                                       f"allowed ({path})")
    if event == "sqlite3.connect" and args:  # sqlite creates its database file itself, without an 'open' event
        db = args[0]
        db = os.fsdecode(db) if isinstance(db, bytes) else str(db)
        if db not in (":memory:", "") and (db.startswith("file:") or not inside(db)):
            raise SandboxViolation(f"sandbox: a database outside the working directory is not allowed ({db})")
    if event == "os.chdir":  # paths are checked against the working directory: it stays where it is
        raise SandboxViolation("sandbox: changing the working directory is not allowed (os.chdir)")
    if event in WRITE_EVENTS and args:
        pairs = DIR_FD_ARGS.get(event) or [(0, None), (1, None)]
        for at, fd_at in pairs:
            if at < len(args) and isinstance(args[at], (str, bytes, os.PathLike)):
                dir_fd = args[fd_at] if fd_at is not None and fd_at < len(args) else None
                if not inside(args[at], dir_fd):
                    raise SandboxViolation(
                        f"sandbox: changing files outside the working directory is not allowed ({event})")


def set_limits():
    import resource

    mb = 1024 * 1024
    limits = [
        (resource.RLIMIT_AS, SPEC["memory_mb"] * mb),
        (resource.RLIMIT_CPU, SPEC["cpu_s"]),
        (resource.RLIMIT_FSIZE, SPEC["max_file_mb"] * mb),
        (resource.RLIMIT_NOFILE, SPEC["max_open_files"]),
        (resource.RLIMIT_CORE, 0),
    ]
    if SPEC.get("max_processes"):
        limits.append((resource.RLIMIT_NPROC, SPEC["max_processes"]))
    for which, value in limits:
        try:
            resource.setrlimit(which, (value, value))
        except (ValueError, OSError):
            pass
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def worker(req_fd, rep_fd):
    requests = os.fdopen(req_fd, "rb", buffering=0)
    replies = os.fdopen(rep_fd, "wb", buffering=0)

    def reply(**message):
        replies.write((json.dumps(message) + "\n").encode("utf-8"))

    def next_request():
        line = b""
        while not line.endswith(b"\n"):
            block = requests.read(1)
            if not block:
                os._exit(0)
            line += block
        return line.decode().strip()

    if next_request() != "load":
        os._exit(0)
    set_limits()
    cap = int(SPEC.get("max_repr_chars", 200))
    out = CappedText(int(SPEC["max_output_chars"]))
    sys.stdout = sys.stderr = out
    import posix

    for name in ("mkfifo", "mknod"):  # they raise no audit event, so the hook cannot check their paths
        for module in (os, posix):
            if hasattr(module, name):
                delattr(module, name)
    sys.addaudithook(hook)
    namespace = {"__name__": "solution"}
    try:
        code = compile(SPEC["code"], "solution.py", "exec")
    except SyntaxError as exc:
        reply(error=f"SyntaxError: {exc.msg} (line {exc.lineno})", stage="compile")
        code = None
    except BaseException as exc:  # noqa: BLE001 - e.g. ValueError for null bytes
        reply(error=describe(exc), stage="compile")
        code = None
    func = None
    if code is not None:
        try:
            exec(code, namespace)
            func = namespace.get(SPEC["entry_point"])
            if callable(func):
                reply(loaded=True)
            else:
                reply(missing=True)
        except BaseException as exc:  # noqa: BLE001 - everything becomes feedback
            reply(error=describe(exc), stage="load")
    while True:
        request = next_request()
        if request == "output":
            reply(output=out.text())
            continue
        if not request.startswith("test ") or not callable(func):
            os._exit(0)
        args = SPEC["args"][int(request[5:]) - 1]
        try:
            got = func(*args)
        except BaseException as exc:  # noqa: BLE001
            reply(raised=describe(exc))
            continue
        try:
            encoded = json.dumps({"ok": plain(got)})
        except NotPlain as exc:
            reply(not_plain=str(exc), repr=safe_repr(got, cap))
            continue
        except (ValueError, TypeError, RecursionError) as exc:
            reply(not_plain=describe(exc), repr=safe_repr(got, cap))
            continue
        replies.write((encoded + "\n").encode("utf-8"))


# ---------------------------------------------------------------- harness side

def drop_privileges():
    """Process-only mode started as root: become `nobody` once the stdlib is loaded."""
    ids = SPEC.get("drop_to")
    if not ids or os.geteuid() != 0:
        return
    import importlib

    for name in ("math", "cmath", "itertools", "functools", "collections", "heapq", "bisect", "re", "string",
                 "random", "statistics", "fractions", "decimal", "operator", "typing", "dataclasses", "copy",
                 "datetime", "enum", "array", "textwrap", "unicodedata", "socket", "resource"):
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    os.setgroups([])
    os.setgid(ids[1])
    os.setuid(ids[0])


def make_undumpable():
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
        return True
    except Exception:  # noqa: BLE001 - best effort; the OS sandbox is the boundary
        return False


def exit_reason(status):
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return "CPU time limit exceeded" if name == "SIGXCPU" else f"killed by {name}"
    return f"exit status {os.WEXITSTATUS(status)}"


def main():
    channel = int(SPEC["channel_fd"])
    if channel in (1, 2):  # remote mode: stdout is the channel; keep a private copy
        channel = os.dup(channel)
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.dup2(null, 2)
        os.close(null)
    drop_privileges()
    req_r, req_w = os.pipe()
    rep_r, rep_w = os.pipe()
    global WORKER_PID
    pid = WORKER_PID = os.fork()
    if pid == 0:
        try:
            os.close(channel)
            os.close(req_w)
            os.close(rep_r)
            worker(req_r, rep_w)
        finally:
            os._exit(0)
    os.close(req_r)
    os.close(rep_w)
    undumpable = make_undumpable()
    timeout = float(SPEC["timeout_s"])
    cap = int(SPEC["max_result_chars"])

    def emit(**event):
        data = (json.dumps(event) + "\n").encode("utf-8")
        while data:
            data = data[os.write(channel, data):]

    state = {"status": None}

    def ask(request):
        """Send one request; return (reply dict | None, problem text | None)."""
        if select.select([rep_r], [], [], 0)[0] and os.read(rep_r, 1 << 16):
            os.kill(pid, signal.SIGKILL)
            return None, "a reply was sent before it was asked for"
        try:
            os.write(req_w, (request + "\n").encode())
        except OSError:
            pass
        deadline = os_time() + timeout
        buffer = b""
        while True:
            left = deadline - os_time()
            if left <= 0:
                os.kill(pid, signal.SIGKILL)
                return None, "timeout"
            ready, _, _ = select.select([rep_r], [], [], left)
            if not ready:
                continue
            block = os.read(rep_r, 1 << 16)
            if not block:
                _, status = os.waitpid(pid, 0)
                state["status"] = status
                return None, f"the process stopped ({exit_reason(status)})"
            buffer += block
            if len(buffer) > cap:
                os.kill(pid, signal.SIGKILL)
                return None, f"the result was larger than {cap} characters"
            if b"\n" in buffer:
                line, _, rest = buffer.partition(b"\n")
                if rest:
                    os.kill(pid, signal.SIGKILL)
                    return None, "more than one reply was sent for one call"
                try:
                    message = json.loads(line.decode("utf-8"))
                except (ValueError, RecursionError):
                    return None, "the reply was not valid JSON"
                if not isinstance(message, dict):
                    return None, "the reply was not a JSON object"
                return message, None

    emit(e="start", undumpable=undumpable)
    message, problem = ask("load")
    if problem == "timeout":
        emit(e="load", status="timeout", timeout=timeout)
        return
    if problem:
        emit(e="load", status="error", message=problem)
        return
    if message.get("loaded") is True:
        pass
    elif message.get("missing") is True:
        emit(e="load", status="missing")
        return
    elif isinstance(message.get("error"), str):
        reply, _ = ask("output")
        output = reply.get("output") if reply else ""
        emit(e="load", status="error", message=message["error"][:2000], stage=str(message.get("stage", "load")),
             output=output[: int(SPEC["max_output_chars"])] if isinstance(output, str) else "")
        return
    else:
        emit(e="load", status="error", message="malformed reply while loading the code")
        return
    emit(e="load", status="ok")
    for index in range(1, len(SPEC["args"]) + 1):
        message, problem = ask(f"test {index}")
        if problem == "timeout":
            emit(e="test", i=index, status="timeout", timeout=timeout)
            break
        if problem:
            emit(e="test", i=index, status="broken", message=problem)
            if state["status"] is not None or "larger" in problem or "more than one" in problem:
                break
            continue
        if "ok" in message and len(message) == 1:
            emit(e="test", i=index, status="returned", value=message["ok"])
        elif isinstance(message.get("raised"), str):
            emit(e="test", i=index, status="raised", error=message["raised"][:2000])
        elif isinstance(message.get("not_plain"), str):
            emit(e="test", i=index, status="not_plain", type=message["not_plain"][:200],
                 repr=str(message.get("repr", ""))[:2000])
        else:
            emit(e="test", i=index, status="broken", message="the reply had an unexpected shape")
    output = ""
    if state["status"] is None:
        message, problem = ask("output")
        if message and isinstance(message.get("output"), str):
            output = message["output"][: int(SPEC["max_output_chars"])]
    emit(e="done", output=output)


try:
    main()
finally:
    # Whatever the worker left running (threads, children) ends with the call. Inside
    # bubblewrap the whole PID namespace also goes when this process ends; in the
    # process-only mode the parent kills this process group.
    if WORKER_PID:
        try:
            os.kill(WORKER_PID, signal.SIGKILL)
        except OSError:
            pass
