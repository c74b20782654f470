"""One run, one directory: locking, used-directory checks, atomic checkpoints, resume helpers.

Shared by the online trainer (our own accelerate loop) and the offline trainer
(``transformers.Trainer``):

* :func:`check_output_path` - the output path is a directory (or can become one) and is
  writable; called from the config classes, before any model loads.
* :func:`claim` - a context manager held for the run's life: an exclusive ``fcntl.flock``
  on ``<output_dir>/.sdpo.lock`` (the operating system drops it when the process dies,
  even on ``kill -9``), then a refusal if the directory holds another run's checkpoints
  or metrics (unless resuming), or their removal with ``overwrite``. Under a
  multi-process launch only the main process takes the lock and clears the directory.
  A run stopped before its first complete checkpoint (and never finished) is never in
  the way: the same command again starts over in its directory, and
  ``--resume_from_checkpoint last`` there starts from the beginning; both say so in
  one line (:func:`resume_target` then gives None).
* :func:`complete_checkpoints` - the ``checkpoint-<step>`` directories whose write
  finished (``trainer_state.json`` present and readable), oldest first; incomplete ones
  are named in a warning. ``last`` means the newest of these.
* :func:`commit_checkpoint` / :func:`temporary_checkpoint` - checkpoints are written
  under ``checkpoint-<step>.tmp`` and renamed to ``checkpoint-<step>`` once complete.
* :func:`truncate_metrics` - on resume, ``metrics.jsonl`` rows after the checkpoint's
  step are dropped, so the resumed run appends without duplicates.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

from sdpo.cli import UsageError

LOCK_NAME = ".sdpo.lock"
TEMP_SUFFIX = ".tmp"
STATE_NAME = "trainer_state.json"
LAST = ("last", "auto", "true", "True")
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# what a run leaves behind; another run may not start on top of these
RUN_OUTPUTS = ("metrics.jsonl", "summary.json", "summary_before.json")

_held: dict[str, list] = {}  # absolute path -> [lock fd (main process) or None, claim depth]


class RunDirError(UsageError, ValueError):
    """A run directory problem the user can fix (printed as one line, exit 2, by ``sdpo``)."""


def is_main_process() -> bool:
    """Before an ``Accelerator`` exists: rank 0 of a launch, or a plain single process."""
    return int(os.environ.get("RANK", "0")) == 0


def check_output_path(path: str | os.PathLike, option: str = "output_dir") -> None:
    """``path`` is a directory or can be created as one, and is writable."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise RunDirError(f"--{option} {path} is a file, not a directory")
    existing = p
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise RunDirError(f"--{option} {path}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RunDirError(f"--{option} {path}: {existing} is not writable")


def _lock(path: Path) -> int:
    import fcntl

    try:
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise RunDirError(f"--output_dir {path}: cannot create the run directory or its lock file "
                          f"({err.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = ""
        try:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
        except OSError:
            pass
        os.close(fd)
        who = f" (pid {holder})" if holder.isdigit() else ""
        raise RunDirError(f"--output_dir {path} is in use by another run{who}; wait for it to end or choose "
                          "another --output_dir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _key(path: str | os.PathLike) -> str:
    return os.path.abspath(path)


def holds_lock(path: str | os.PathLike) -> bool:
    """Whether this process holds the lock of ``path`` (main process of a running claim)."""
    entry = _held.get(_key(path))
    return entry is not None and entry[0] is not None


def previous_run_outputs(path: str | os.PathLike) -> list[Path]:
    """Checkpoints (complete or not) and metrics/summary files of an earlier run in ``path``."""
    p = Path(path)
    if not p.is_dir():
        return []
    found = [c for c in p.glob("checkpoint-*") if c.is_dir()]
    found += [p / name for name in RUN_OUTPUTS if (p / name).exists()]
    return sorted(found)


def clear_run_outputs(path: str | os.PathLike) -> list[Path]:
    removed = previous_run_outputs(path)
    for item in removed:
        if item.is_dir():
            shutil.rmtree(item)
        else:
            item.unlink()
    return removed


@contextmanager
def claim(output_dir: str | os.PathLike, *, resume: str | None = None, overwrite: bool = False,
          main: bool | None = None):
    """Hold ``output_dir`` for a run: lock it (main process), refuse a used directory unless
    resuming, clear it with ``overwrite``. Re-entrant in one process: a nested claim (the command
    claims before the model loads, the trainer again when it trains) only counts."""
    path = Path(output_dir)
    key = _key(path)
    if key in _held:
        _held[key][1] += 1
        try:
            yield path
        finally:
            _release(key)
        return
    main = is_main_process() if main is None else main
    check_output_path(path)
    created = _missing_dirs(path) if main else []  # what this claim creates (removed again if left empty)
    _held[key] = [_lock(path) if main else None, 1]
    try:
        if resume in LAST and not complete_checkpoints(path, warn=False):
            if not unfinished_without_checkpoint(path):  # a finished run that kept no checkpoint
                raise RunDirError(f"--resume_from_checkpoint {resume}: no complete checkpoint in {path}, which "
                                  "holds a finished run; start over with --overwrite_output_dir true")
            # killed before its first save: nothing to continue from, so the run starts from the beginning
            used = previous_run_outputs(path)
            if main:
                clear_run_outputs(path)
                print(f"--resume_from_checkpoint {resume}: no complete checkpoint in {path} yet"
                      + (f" ({_names(used)} of a run stopped before its first save removed)" if used else "")
                      + "; starting from the beginning", file=sys.stderr, flush=True)
        if not resume:
            used = previous_run_outputs(path)
            if used and not overwrite and unfinished_without_checkpoint(path):
                if main:  # the same command again after a kill before the first save: start over
                    clear_run_outputs(path)
                    print(f"--output_dir {path} holds a run stopped before its first complete checkpoint "
                          f"({_names(used)}); starting over", file=sys.stderr, flush=True)
            elif used and overwrite:
                if main:
                    clear_run_outputs(path)
            elif used:
                raise RunDirError(f"--output_dir {path} holds another run ({_names(used)}); continue it with "
                                  "--resume_from_checkpoint last, or start over with --overwrite_output_dir true "
                                  "(deletes its checkpoints and metrics), or choose another --output_dir")
        yield path
    except BaseException:
        if created and _held[key][1] == 1:  # a failed run leaves no empty directory behind
            _remove_if_empty(created)
        raise
    finally:
        _release(key)


def _missing_dirs(path: Path) -> list[Path]:
    """``path`` and its parents that do not exist yet, deepest first."""
    out = []
    p = Path(os.path.abspath(path))
    while not p.exists() and p.parent != p:
        out.append(p)
        p = p.parent
    return out


def _remove_if_empty(created: list[Path]) -> None:
    """Remove the directories a claim created (deepest first) while they hold nothing but its lock file;
    called while the lock is still held."""
    lock = created[0] / LOCK_NAME
    try:
        if {c.name for c in created[0].iterdir()} <= {LOCK_NAME}:
            lock.unlink(missing_ok=True)
        for d in created:
            d.rmdir()  # fails (and stops) at the first that is not empty
    except OSError:
        pass


def _names(paths: list[Path]) -> str:
    return ", ".join(u.name for u in paths[:3]) + (", ..." if len(paths) > 3 else "")


def unfinished_without_checkpoint(path: str | os.PathLike) -> bool:
    """``path`` holds what a run leaves before its first complete checkpoint (metrics rows, a checkpoint
    write that never finished) and nothing of a finished run (a complete checkpoint, ``summary.json``,
    a final model): the run can only be started again, so a re-run may clear it."""
    p = Path(path)
    if complete_checkpoints(p, warn=False) or (p / "summary.json").exists():
        return False
    final = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "adapter_model.safetensors",
             "sdpo_config.json")
    return not any((p / name).exists() for name in final)


def resume_target(output_dir: str | os.PathLike, resume: str | None) -> str | None:
    """What a run held by :func:`claim` resumes from: ``resume`` itself, or None when there is nothing to
    resume (not asked, or ``last`` in a directory with no complete checkpoint: start from the beginning)."""
    if resume in (None, "", "false", "False"):
        return None
    if resume in LAST and not complete_checkpoints(output_dir, warn=False):
        return None
    return resume


def _release(key: str) -> None:
    entry = _held[key]
    entry[1] -= 1
    if entry[1] == 0:
        del _held[key]
        if entry[0] is not None:
            os.close(entry[0])  # closing the descriptor releases the flock


# ---------------------------------------------------------------------------- checkpoints
def checkpoint_step(path: str | os.PathLike) -> int | None:
    m = _CHECKPOINT.match(Path(path).name)
    return int(m.group(1)) if m else None


def is_complete(path: str | os.PathLike) -> bool:
    state = Path(path) / STATE_NAME
    try:
        json.loads(state.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return True


def complete_checkpoints(run_dir: str | os.PathLike, *, warn: bool = True) -> list[Path]:
    """Complete ``checkpoint-<step>`` directories of ``run_dir``, oldest first.

    A checkpoint is complete when its ``trainer_state.json`` (written last) reads as JSON;
    ``checkpoint-<step>.tmp`` directories (a write that never finished) and checkpoints
    without that file are skipped, with a warning when ``warn``."""
    run = Path(run_dir)
    if not run.is_dir():
        return []
    complete, skipped = [], []
    for child in run.iterdir():
        if not child.is_dir() or not child.name.startswith("checkpoint-"):
            continue
        step = checkpoint_step(child)
        if step is not None and is_complete(child):
            complete.append((step, child))
        else:
            skipped.append(child.name)
    if skipped and warn:
        warnings.warn(f"{run}: skipping incomplete checkpoint(s) {', '.join(sorted(skipped))} "
                      "(a write that did not finish)", stacklevel=2)
    return [p for _, p in sorted(complete)]


def last_checkpoint(run_dir: str | os.PathLike, option: str = "resume_from_checkpoint", *, warn: bool = True) -> Path:
    """The newest complete checkpoint (what ``--resume_from_checkpoint last`` means)."""
    found = complete_checkpoints(run_dir, warn=warn)
    if not found:
        raise FileNotFoundError(f"--{option} last: no complete checkpoint in {run_dir}")
    return found[-1]


def temporary_checkpoint(run_dir: str | os.PathLike, step: int) -> Path:
    return Path(run_dir) / f"checkpoint-{step}{TEMP_SUFFIX}"


def commit_checkpoint(tmp: Path, final: Path) -> Path:
    """Rename a finished ``checkpoint-<step>.tmp`` to ``checkpoint-<step>`` (replacing an older one)."""
    old = None
    if final.exists():
        old = final.with_name(final.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(final.parent)
    return final


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def rotate_checkpoints(run_dir: str | os.PathLike, limit: int | None) -> list[Path]:
    """Keep the newest ``limit`` complete checkpoints (None or 0: keep all); returns the removed ones."""
    if not limit:
        return []
    found = complete_checkpoints(run_dir, warn=False)
    removed = found[: max(0, len(found) - limit)]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


def is_disk_full(err: BaseException, path: str | os.PathLike) -> bool:
    """Did ``err`` (raised while writing under ``path``) come from a full disk or quota?

    ``OSError`` says so with its errno; safetensors puts the OS message in its text; torch's zip
    writer only reports a short write (``unexpected pos``), so for that one the free space is checked."""
    import errno

    for e in (err, err.__cause__, err.__context__):
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
    text = str(err)
    if "No space left" in text or "StorageFull" in text or "Disk quota exceeded" in text:
        return True
    if isinstance(err, RuntimeError) and ("unexpected pos" in text or "PytorchStreamWriter" in text
                                          or "file write failed" in text):
        probe = Path(path)
        while not probe.exists() and probe.parent != probe:
            probe = probe.parent
        try:
            return shutil.disk_usage(probe).free < 16 * 2**20
        except OSError:
            return False
    return False


def disk_full_error(run_dir: str | os.PathLike, what: str) -> RunDirError:
    """The one line for a save that ran out of space: what was lost, what is kept, how to go on."""
    kept = complete_checkpoints(run_dir, warn=False)
    where = f"the last complete checkpoint, {kept[-1]}, is kept" if kept else "no complete checkpoint was written yet"
    return RunDirError(f"no space left on the device while writing {what} (removed); {where}; free space in "
                       f"{run_dir} and run again: {resume_command() if kept else restart_command()}")


def remove_temporary(run_dir: str | os.PathLike) -> None:
    for child in Path(run_dir).glob(f"checkpoint-*{TEMP_SUFFIX}"):
        if child.is_dir():
            shutil.rmtree(child, ignore_errors=True)


# ---------------------------------------------------------------------------- metrics and commands
def read_metrics(path: str | os.PathLike, up_to_step: int | None = None) -> list[dict]:
    p = Path(path)
    if not p.is_file():
        return []
    rows = []
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:  # a line cut by a kill during the write
            continue
        if isinstance(row, dict) and (up_to_step is None or int(row.get("step", 0)) <= up_to_step):
            rows.append(row)
    return rows


def truncate_metrics(path: str | os.PathLike, step: int) -> int:
    """Keep the rows of ``metrics.jsonl`` with ``step <= step`` (rewritten atomically); returns how many
    were dropped."""
    p = Path(path)
    if not p.is_file():
        return 0
    lines = p.read_text(encoding="utf-8").splitlines()
    kept = [json.dumps(row) for row in read_metrics(p, step)]
    tmp = p.with_name(p.name + TEMP_SUFFIX)
    tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    os.replace(tmp, p)
    return len(lines) - len(kept)


_BOOLS = ("true", "false", "yes", "no", "1", "0", "t", "f", "y", "n")


def _command(argv: list[str] | None, extra: list[str]) -> str:
    argv = list(sys.argv if argv is None else argv)
    prog = Path(argv[0]) if argv else Path("sdpo")
    if prog.name == "sdpo":
        head = ["sdpo"]
    elif prog.name == "cli.py" and prog.parent.name == "sdpo":  # python -m sdpo.cli
        head = [sys.executable, "-m", "sdpo.cli"]
    else:
        head = [sys.executable, argv[0]]
    rest, out, i = argv[1:], [], 0
    while i < len(rest):
        arg = rest[i]
        name = arg.split("=", 1)[0]
        if name in ("--resume_from_checkpoint", "--overwrite_output_dir"):
            if "=" not in arg and i + 1 < len(rest) and not rest[i + 1].startswith("--") and (
                    name == "--resume_from_checkpoint" or rest[i + 1].lower() in _BOOLS):
                i += 1  # its value
            i += 1
            continue
        out.append(arg)
        i += 1
    return shlex.join([*head, *out, *extra])


def resume_command(argv: list[str] | None = None) -> str:
    """The command line that started this process (``sys.argv``) with ``--resume_from_checkpoint last``
    (replacing a given one) and without ``--overwrite_output_dir``."""
    return _command(argv, ["--resume_from_checkpoint", "last"])


def restart_command(argv: list[str] | None = None) -> str:
    """The command line that started this process, starting over: ``--overwrite_output_dir true``."""
    return _command(argv, ["--overwrite_output_dir", "true"])
