"""How many CPU threads torch and OpenMP use, chosen so that a busy machine does not make a run many times slower.

torch's default is one intra-op thread per core, each spinning while it waits for the others. On a
machine where other processes already use the cores, those threads fight them and each other: on a
loaded 2-core machine one online SDPO step took 331 s with the default and 27 s with one thread
(issue 27). So the ``sdpo`` command chooses, before torch is imported:

- ``OMP_NUM_THREADS``: the cores this process may use (``sched_getaffinity``, capped by a cgroup CPU
  quota) minus those busy with other work now, at least 1; divided among the processes of a launch on
  this machine (``LOCAL_WORLD_SIZE``). "Now" is the number of other runnable processes, read from
  ``/proc/stat`` ten times over 0.1 s (:func:`running_now`); the 1-minute load average, which still
  counts a process that ended seconds ago (the previous command of a pipeline such as ``make demo``,
  which made every next command single-threaded on a quiet 2-core machine), is the fallback where
  ``/proc/stat`` is not readable;
- ``OMP_WAIT_POLICY=PASSIVE``: an idle OpenMP thread sleeps instead of spinning, so waiting threads do
  not take the cores the working ones need.

Overrides, strongest first: ``--num_threads N`` (an option of every ``sdpo`` command), ``SDPO_NUM_THREADS``,
``OMP_NUM_THREADS`` (left as it is); ``OMP_WAIT_POLICY`` set by the user is kept too. One line says what
was chosen. This module imports nothing heavy: it must run before torch is loaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ENV = "SDPO_NUM_THREADS"


@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    source: str  # "flag", "SDPO_NUM_THREADS", "OMP_NUM_THREADS" or "auto"
    cores: int  # cores this process may use
    load: float | None  # other runnable processes now (or the 1-minute load average) when chosen automatically
    wait_policy: str
    per_process_of: int = 1  # processes of a launch sharing the cores

    def line(self) -> str:
        if self.source == "auto":
            busy = f"{self.load:.1f} busy" if self.load is not None else "load unknown"
            why = f"{self.cores} core{'s' if self.cores != 1 else ''}, {busy}"
            if self.per_process_of > 1:
                why += f", {self.per_process_of} processes"
            how = f"chosen: {why}; --num_threads N or OMP_NUM_THREADS=N to set it"
        elif self.source == "the calling program":
            how = "as set by the calling program"
        else:
            how = f"from {'--num_threads' if self.source == 'flag' else self.source}"
        return f"threads: {self.threads} ({how}; OMP_WAIT_POLICY={self.wait_policy})"


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup v2/v1 CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        cores = max(1, min(cores, int(quota + 0.5)))
    return max(1, cores)


def _cgroup_quota() -> float | None:
    try:
        text = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if text and text[0] != "max":
            return int(text[0]) / int(text[1])
    except (OSError, ValueError, IndexError):
        pass
    try:
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        if quota > 0 and period > 0:
            return quota / period
    except (OSError, ValueError):
        pass
    return None


def _positive_int(value) -> int | None:
    try:
        n = int(str(value).strip())
    except (TypeError, ValueError):
        return None
    return n if n >= 1 else None


def running_now(samples: int = 10, interval: float = 0.01, stat_path: str = "/proc/stat") -> float | None:
    """Mean number of runnable processes other than this one, over ``samples`` reads of ``procs_running``
    (None where the file cannot be read)."""
    import time

    counts = []
    for i in range(samples):
        try:
            with open(stat_path, encoding="ascii") as f:
                running = next((int(line.split()[1]) for line in f if line.startswith("procs_running ")), None)
        except (OSError, ValueError, IndexError):
            return None
        if running is None:
            return None
        counts.append(max(0, running - 1))  # this process is running while it reads
        if i + 1 < samples:
            time.sleep(interval)
    return sum(counts) / len(counts)


def choose(flag: int | None = None, environ=None, cores: int | None = None, load: float | None = None) -> ThreadChoice:
    """The thread count and wait policy for this process (see the module doc); changes nothing."""
    environ = os.environ if environ is None else environ
    policy = environ.get("OMP_WAIT_POLICY") or "PASSIVE"
    cores = usable_cores() if cores is None else cores
    if flag is not None:
        return ThreadChoice(max(1, int(flag)), "flag", cores, None, policy)
    for name in (ENV, "OMP_NUM_THREADS"):
        n = _positive_int(environ.get(name))
        if n is not None:
            return ThreadChoice(n, name, cores, None, policy)
    if load is None:
        load = running_now()
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):
            load = None
    free = cores if load is None else cores - int(load + 0.5)  # cores busy with other work: round the load
    processes = _positive_int(environ.get("LOCAL_WORLD_SIZE")) or 1
    threads = max(1, min(cores, free) // processes)
    return ThreadChoice(threads, "auto", cores, load, policy, processes)


def configure(flag: int | None = None, environ=None) -> ThreadChoice:
    """Choose (see :func:`choose`) and apply: set ``OMP_NUM_THREADS`` (and MKL's), ``OMP_WAIT_POLICY``
    in the environment before torch is imported (child processes inherit them), or call
    ``torch.set_num_threads`` where torch is already loaded. Returns the choice."""
    import sys

    environ = os.environ if environ is None else environ
    torch = sys.modules.get("torch")
    if torch is not None and flag is None:  # called inside a program that loaded torch already: its choice stands
        return ThreadChoice(torch.get_num_threads(), "the calling program", usable_cores(), None,
                            environ.get("OMP_WAIT_POLICY") or "default")
    choice = choose(flag, environ)
    environ.setdefault("OMP_WAIT_POLICY", choice.wait_policy)
    if choice.source != "OMP_NUM_THREADS":
        environ["OMP_NUM_THREADS"] = str(choice.threads)
        environ["MKL_NUM_THREADS"] = str(choice.threads)
    if torch is not None:
        torch.set_num_threads(choice.threads)
    return choice


def take_flag(argv: list[str]) -> tuple[int | None, list[str]]:
    """``--num_threads N`` / ``--num_threads=N`` out of ``argv`` (any position): (N or None, the rest).
    Raises ValueError for a value that is not a whole number >= 1."""
    rest, value = [], None
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("--num_threads", "--num-threads"):
            if i + 1 >= len(argv):
                raise ValueError("--num_threads needs a value (a whole number >= 1)")
            raw, i = argv[i + 1], i + 2
        elif arg.startswith(("--num_threads=", "--num-threads=")):
            raw, i = arg.split("=", 1)[1], i + 1
        else:
            rest.append(arg)
            i += 1
            continue
        value = _positive_int(raw)
        if value is None:
            raise ValueError(f"--num_threads: must be a whole number >= 1, got {raw}")
    return value, rest
