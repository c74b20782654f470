"""Progress that suits where the output goes, and quiet third-party chatter.

In a terminal our long loops show a tqdm bar. When stderr is a file or a pipe (a
batch job's log, ``... 2>&1 | tee run.log``) a redrawn bar leaves hundreds of
``\\r`` frames in the file, so :func:`progress_bar` prints a plain line instead, each
time another 25 % is done (20 % for training loops, whose lines carry the step's metrics)
or a minute has passed, and one at the end.

``SDPO_PROGRESS=bar|lines|off`` overrides the choice.

:func:`quiet_library_output` is called once by the ``sdpo`` command: transformers'
"Writing model shards" bars (one per save, nested inside ours) are silenced, its other
bars are kept in a terminal and, in a log file, print only when they take over a minute
(loading a large model), and DeepSpeed's "Setting accelerator to CPU" (printed in
the middle of the bar on a machine without a GPU) is dropped.
:func:`quiet_trackio` replaces trackio's six-line banner by one line of ours.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shlex
import sys
import time

MODES = ("bar", "lines", "off")


def mode(stream=None) -> str:
    """``bar`` in a terminal, ``lines`` otherwise (``SDPO_PROGRESS`` overrides)."""
    forced = os.environ.get("SDPO_PROGRESS", "").strip().lower()
    if forced in MODES:
        return forced
    stream = sys.stderr if stream is None else stream
    try:
        return "bar" if stream.isatty() else "lines"
    except (AttributeError, ValueError):  # closed or file-like without isatty
        return "lines"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


class LineProgress:
    """The part of tqdm's interface our loops use, printing whole lines.

    A line is printed when the count crosses the next ``every_percent`` of ``total``, when
    ``every_seconds`` have passed since the last line, and once at :meth:`close` if the
    last count was not printed yet. Without a total, only the time rule applies.
    """

    def __init__(self, iterable=None, desc: str | None = None, total: int | None = None, *, unit: str = "it",
                 initial: int = 0, file=None, disable: bool = False, every_percent: float = 25.0,
                 every_seconds: float = 60.0, only_if_slow: bool = False, **_tqdm_only):
        if total is None and iterable is not None:
            try:
                total = len(iterable)
            except TypeError:
                total = None
        self.iterable = iterable
        self.desc = desc or ""
        self.total = total
        self.unit = unit
        self.n = self.initial = int(initial)
        self.file = file
        self.disable = disable
        self.every_percent = every_percent
        self.every_seconds = every_seconds
        self.only_if_slow = only_if_slow  # no lines at all unless it runs past every_seconds
        self._emitted = False
        self.postfix = ""
        self.start = self._last_time = time.monotonic()
        self._printed_n = self.n
        self._next_mark = self._mark_after(self.n)
        self.closed = False

    # tqdm interface -------------------------------------------------------------------------
    def __iter__(self):
        if self.iterable is None:
            raise TypeError("LineProgress without an iterable is not iterable")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __len__(self):
        return self.total or 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def update(self, n: int = 1) -> None:
        if self.disable or self.closed:
            return
        self.n += n
        now = time.monotonic()
        if now - self._last_time >= self.every_seconds or (
                not self.only_if_slow and self._next_mark is not None and self.n >= self._next_mark):
            self._emit(now)

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
        items = dict(ordered_dict or {}, **kwargs)
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = str(s)

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    def refresh(self, *args, **kwargs) -> None:
        pass

    def write(self, s: str, file=None, end: str = "\n") -> None:
        print(s, end=end, file=file or self._stream(), flush=True)

    def close(self) -> None:
        if self.closed:
            return
        if not self.disable and self.n != self._printed_n and (self._emitted or not self.only_if_slow):
            self._emit(time.monotonic())
        self.closed = True

    # ----------------------------------------------------------------------------------------
    def _stream(self):
        return self.file if self.file is not None else sys.stderr

    def _mark_after(self, n: int):
        if not self.total or self.every_percent <= 0:
            return None
        step = self.total * self.every_percent / 100.0
        k = int(n // step) + 1
        return min(self.total, k * step)

    def _units(self, count: int) -> str:
        plural = count != 1 and self.unit.isalpha() and not self.unit.endswith("s") and self.unit != "it"
        return self.unit + "s" if plural else self.unit

    def _emit(self, now: float) -> None:
        elapsed = now - self.start
        done = self.n - self.initial
        parts = [f"{self.desc}: " if self.desc else ""]
        if self.total:
            parts.append(f"{self.n}/{self.total} {self._units(self.total)} ({100.0 * self.n / self.total:.0f}%)")
        else:
            parts.append(f"{self.n} {self._units(self.n)}")
        parts.append(f", {_duration(elapsed)} elapsed")
        if done > 0 and elapsed > 0:
            rate = done / elapsed
            parts.append(f", {rate:.2f} {self.unit}/s" if rate >= 1 else f", {1 / rate:.1f} s/{self.unit}")
            if self.total and self.n < self.total:
                parts.append(f", ~{_duration((self.total - self.n) / rate)} left")
        if self.postfix:
            parts.append(f" [{self.postfix}]")
        print("".join(parts), file=self._stream(), flush=True)
        self._last_time = now
        self._printed_n = self.n
        self._next_mark = self._mark_after(self.n)
        self._emitted = True


def progress_bar(iterable=None, desc: str | None = None, total: int | None = None, **kwargs):
    """A tqdm bar in a terminal, :class:`LineProgress` otherwise (see the module doc)."""
    chosen = mode(kwargs.get("file"))
    if chosen == "off":
        kwargs["disable"] = True
    if chosen == "bar":
        from tqdm.auto import tqdm

        kwargs.pop("every_percent", None)
        kwargs.pop("every_seconds", None)
        return tqdm(iterable, desc=desc, total=total, **kwargs)
    return LineProgress(iterable, desc=desc, total=total, **kwargs)


# -------------------------------------------------------------------------------- third parties
_QUIET_DESCRIPTIONS = ("Writing model shards",)


def _transformers_bar(factory, args, kwargs):
    desc = str(kwargs.get("desc") or "")
    if desc.startswith(_QUIET_DESCRIPTIONS):  # one per save, drawn inside our own bar
        from transformers.utils.logging import EmptyTqdm

        return EmptyTqdm(*args, **kwargs)
    if mode(kwargs.get("file")) != "bar" and getattr(factory, "__name__", "") != "EmptyTqdm":
        # in a log file a library's bar (loading weights, ...) says nothing unless it takes over a minute
        return LineProgress(*args, only_if_slow=True, **kwargs)
    return factory(*args, **kwargs)


def _hook_transformers(logging_module) -> None:
    if hasattr(logging_module, "set_tqdm_hook"):
        logging_module.set_tqdm_hook(_transformers_bar)


class _AfterImport:
    """Runs a callback on a module right after its first import (so the ``sdpo`` command does not import
    transformers itself just to configure it: ``sdpo personas`` stays fast)."""

    def __init__(self, name: str, callback):
        self.name, self.callback = name, callback

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        import importlib.util

        spec = importlib.util.find_spec(fullname)
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        run, callback = loader.exec_module, self.callback

        def exec_module(module):
            run(module)
            callback(module)

        loader.exec_module = exec_module
        return spec


class _DropCpuGuess(logging.Filter):
    def filter(self, record):  # DeepSpeed's "Setting accelerator to CPU. If you have GPU ..." (it found none)
        return not str(record.getMessage()).startswith("Setting accelerator to CPU")


def quiet_library_output() -> None:
    """See the module doc; safe to call more than once; imports neither torch nor transformers."""
    deepspeed_logger = logging.getLogger("DeepSpeed")  # the logger DeepSpeed configures when imported
    if not any(isinstance(f, _DropCpuGuess) for f in deepspeed_logger.filters):
        deepspeed_logger.addFilter(_DropCpuGuess())
    name = "transformers.utils.logging"
    if name in sys.modules:
        _hook_transformers(sys.modules[name])
    elif not any(isinstance(f, _AfterImport) and f.name == name for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport(name, _hook_transformers))


@contextlib.contextmanager
def _stdout_captured():
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        yield buffer


def quiet_trackio(trackio_module=None):
    """Make ``trackio.init`` / ``trackio.finish`` print one line of ours instead of their banner.

    Patches the module's functions (the Hugging Face ``Trainer``'s trackio callback calls
    them too); idempotent. Returns the module.
    """
    if trackio_module is None:
        import trackio as trackio_module
    if getattr(trackio_module, "_sdpo_quiet", False):
        return trackio_module
    loud_init, loud_finish = trackio_module.init, trackio_module.finish

    def init(*args, **kwargs):
        with _stdout_captured():
            run = loud_init(*args, **kwargs)
        project = kwargs.get("project", args[0] if args else "?")
        name = getattr(run, "name", None) or kwargs.get("name") or "?"
        print(f"trackio: project {project}, run {name} (view it: trackio show --project {shlex.quote(str(project))})",
              flush=True)
        return run

    def finish(*args, **kwargs):
        with _stdout_captured():
            return loud_finish(*args, **kwargs)

    init.__doc__, finish.__doc__ = loud_init.__doc__, loud_finish.__doc__
    trackio_module.init, trackio_module.finish = init, finish
    trackio_module._sdpo_quiet = True
    return trackio_module


def main_process() -> bool:
    """Whether this process is rank 0 of a launch (or not launched at all); read from the environment, so it
    works before any process group exists."""
    return os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")).strip() in ("", "0")


def quiet_logs() -> None:
    """Called once by the ``sdpo`` command before any work.

    * Under a launcher (``WORLD_SIZE>1``) only rank 0 prints Python warnings and library
      warnings/info (otherwise each appears once per rank); errors still show everywhere.
    * Third-party progress/banners are tamed (:func:`sdpo.progress.quiet_library_output`).
    """
    import warnings

    quiet_library_output()
    filter_library_warnings()
    ours = os.path.dirname(os.path.abspath(__file__)) + os.sep  # the sdpo package
    library_format = warnings.formatwarning

    def one_line(message, category, filename, lineno, line=None):
        # a warning our own code raises for the user (a cut context, skipped checkpoints) is one plain line,
        # without our source file and line
        if os.path.abspath(filename).startswith(ours) and category is UserWarning:
            return f"warning: {message}\n"
        return library_format(message, category, filename, lineno, line)

    if not getattr(warnings.formatwarning, "_sdpo", False):
        one_line._sdpo = True
        warnings.formatwarning = one_line
    if main_process():
        return
    warnings.simplefilter("ignore")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DATASETS_VERBOSITY", "error")
    for name in ("transformers", "datasets", "accelerate", "DeepSpeed", "torch.distributed", "trackio"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if "transformers.utils.logging" in sys.modules:  # otherwise TRANSFORMERS_VERBOSITY applies at its import
        sys.modules["transformers.utils.logging"].set_verbosity_error()


# ---------------------------------------------------------------------------------- sign of life
_COMMAND_LINE = {"on": False}


def set_command_line(on: bool = True) -> None:
    """The ``sdpo`` command turns on :func:`note` (a library user's program gets no such lines)."""
    _COMMAND_LINE["on"] = bool(on)


def note(message: str) -> None:
    """One line on stderr for the person at the terminal of an ``sdpo`` command (rank 0 only): what is
    happening during a silent stretch, such as loading a model. Nothing when sdpo is used as a library."""
    if _COMMAND_LINE["on"] and main_process() and mode() != "off":
        print(message, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------- warnings that repeat
class WarningTally:
    """A warning that can come at every step is printed the first time, then counted; :meth:`summary`
    gives one line per warning that came again, with its count (printed once at the end of a run)."""

    def __init__(self, stream=None):
        self.stream = stream
        self.counts: dict[str, int] = {}
        self.messages: dict[str, str] = {}

    def warn(self, key: str, message: str, *, show_first: bool = True) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1
        self.messages.setdefault(key, message)
        if self.counts[key] == 1 and show_first and main_process():
            print(f"warning: {message}", file=self.stream or sys.stderr, flush=True)

    def summary(self, steps: int | None = None) -> list[str]:
        out = []
        for key, n in self.counts.items():
            of = f" of {steps}" if steps else ""
            out.append(f"warning ({n}{of} step{'s' if (steps or n) != 1 else ''}): {self.messages[key]}")
        return out

    def print_summary(self, steps: int | None = None) -> None:
        if main_process():
            for line in self.summary(steps):
                print(line, file=self.stream or sys.stderr, flush=True)


# ------------------------------------------------------------------------ library warnings
# (message regex, category name): warnings about library internals that a user of sdpo cannot act on
LIBRARY_WARNINGS = (
    # TRL 1.16 calls transformers' deprecated gradient-checkpointing names (its code, not the user's)
    (r"`(is_)?gradient_checkpointing", "FutureWarning"),
    # the Trainer's DataLoader asks for pinned memory on a machine without a GPU (nothing to pin to)
    (r"'pin_memory' argument is set as true but no accelerator is found", "UserWarning"),
    # TRL's experimental namespace announces itself once per import
    (r".*trl\.experimental.*(may change|experimental)", "UserWarning"),
)


def filter_library_warnings() -> None:
    """Hide :data:`LIBRARY_WARNINGS` (idempotent; imports nothing heavy)."""
    import builtins
    import warnings

    for pattern, category in LIBRARY_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern, category=getattr(builtins, category))


# ------------------------------------------------------------------- Hugging Face Trainer output
# metrics shown on the progress line (the first present of each group), in this order
PROGRESS_KEYS = (
    ("loss", ("loss",)),
    ("reward", ("self_distillation/reward_mean", "reward", "rewards/mean")),
    ("grad", ("grad_norm",)),
    ("reprompt", ("self_distillation/reprompt_sample_fraction",)),
)


def _short(value) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    return f"{v:.3g}" if v == 0 or 1e-3 <= abs(v) < 1e4 else f"{v:.2e}"


def progress_postfix(logs: dict) -> str:
    """The few metrics of a log line worth a glance: ``loss=0.0152 reward=0.125 grad=0.422``."""
    parts = []
    for label, keys in PROGRESS_KEYS:
        for key in keys:
            if key in logs:
                parts.append(f"{label}={_short(logs[key])}")
                break
    return " ".join(parts)


def trainer_progress_callback(metrics_file: str | os.PathLike | None = None):
    """A ``transformers.TrainerCallback``: one progress line (a tqdm bar in a terminal, a line every 10 % or
    minute in a log file) with a few metrics, instead of the Trainer's dict of every metric at every
    logging step; every log row goes to ``metrics_file`` (JSON lines) when given. Main process only."""
    import json
    from pathlib import Path

    from transformers import TrainerCallback

    class StepProgress(TrainerCallback):
        def __init__(self):
            self.bar = None
            self.metrics_file = Path(metrics_file) if metrics_file else None

        def on_train_begin(self, args, state, control, **kwargs):
            if not state.is_world_process_zero:
                return
            if self.metrics_file is not None:
                self.metrics_file.parent.mkdir(parents=True, exist_ok=True)
                if state.global_step == 0:
                    self.metrics_file.write_text("")
                elif self.metrics_file.is_file():  # resumed: the rows after the checkpoint are logged again
                    from sdpo.rundir import truncate_metrics

                    truncate_metrics(self.metrics_file, state.global_step)
            self.bar = progress_bar(total=state.max_steps or None, initial=state.global_step, desc="training",
                                    unit="step", dynamic_ncols=True, every_percent=20.0)

        # a step's line is drawn when its metrics are logged (the Trainer logs after on_step_end), or when the
        # next step begins for a step that logged nothing
        def _catch_up(self, state):
            if self.bar is not None and state.global_step > self.bar.n:
                self.bar.update(state.global_step - self.bar.n)

        def on_step_begin(self, args, state, control, **kwargs):
            self._catch_up(state)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs:
                return
            if self.metrics_file is not None:
                row = {"step": state.global_step, **{k: v for k, v in logs.items()}}
                with open(self.metrics_file, "a", encoding="utf-8") as f:
                    f.write(json.dumps(row, default=float) + "\n")
            postfix = progress_postfix(logs)
            if self.bar is not None and postfix:
                self.bar.set_postfix_str(postfix)
            self._catch_up(state)

        def on_train_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self._catch_up(state)
                self.bar.close()
                self.bar = None

    return StepProgress()


def quiet_trainer(trainer, metrics_file: str | os.PathLike | None = None) -> None:
    """Replace a Hugging Face ``Trainer``'s printed metric dicts (its ``ProgressCallback`` in a terminal,
    ``PrinterCallback`` in a log file) by :func:`trainer_progress_callback` (metrics to ``metrics_file``;
    trackers and ``trainer.state.log_history`` are unchanged)."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(trainer_progress_callback(metrics_file))
