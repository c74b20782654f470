"""``accelerate launch`` with failures a person can read.

``python -m sdpo.launch [accelerate launch options] -m sdpo.cli <command> [options]`` takes the
same arguments as ``accelerate launch`` and starts the same processes (it calls accelerate's own
launch code). What differs is the end of a failed run: instead of every rank printing its error and
the launcher adding ~35 lines of ``ChildFailedError`` traceback, each rank hands its one-line error
to the launcher (a file in a private temporary folder named by ``SDPO_LAUNCH_ERRORS``), the
launcher's own log lines and traceback are suppressed, and the failing rank's error is the last
thing printed (once when every rank failed the same way). A rank that died of a bug still prints
its traceback as it happens; the launcher then ends with one line naming that rank and its exit
code. The exit status is the failing rank's (2 for errors the user can fix).

The scripts in ``scripts/`` launch through this module when ``WORLD_SIZE`` > 1.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Sequence

ERRORS_ENV = "SDPO_LAUNCH_ERRORS"


def report_rank_error(message: str) -> bool:
    """Under ``sdpo.launch``: hand ``message`` (one line) to the launcher instead of printing it.

    Returns False (the caller prints as usual) when not launched by ``sdpo.launch``.
    """
    folder = os.environ.get(ERRORS_ENV)
    rank = os.environ.get("RANK")
    if not folder or rank is None or not Path(folder).is_dir():
        return False
    try:
        path = Path(folder) / f"rank{int(rank)}.txt"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(message.rstrip("\n") + "\n", encoding="utf-8")
        tmp.replace(path)
    except (OSError, ValueError):
        return False
    return True


def _rank_errors(folder: Path) -> dict[int, str]:
    errors = {}
    for path in sorted(folder.glob("rank*.txt")):
        try:
            errors[int(path.stem[4:])] = path.read_text(encoding="utf-8").strip()
        except (OSError, ValueError):
            continue
    return errors


def _failed_ranks(err: BaseException) -> dict[int, int]:
    """rank -> exit code of the processes torch's launcher saw fail (empty when unknown)."""
    failures = getattr(err, "failures", None) or {}
    return {int(rank): int(getattr(f, "exitcode", 1) or 1) for rank, f in failures.items()}


def summarize_failure(errors: dict[int, str], failed: dict[int, int]) -> tuple[list[str], int]:
    """The lines to print last and the exit status, from the ranks' one-line errors and exit codes."""
    if errors:
        messages = list(dict.fromkeys(errors.values()))
        if len(messages) == 1:
            ranks = sorted(errors)
            lines = messages if len(ranks) > 1 or ranks == [0] else [f"rank {ranks[0]}: {messages[0]}"]
        else:
            lines = [f"rank {rank}: {msg}" for rank, msg in sorted(errors.items())]
        code = next((failed[r] for r in sorted(errors) if failed.get(r, 0) > 0), 2)
        return lines, code
    # no rank explained itself: a crash (its traceback printed above) or a kill
    crashed = {r: c for r, c in failed.items() if c > 0} or failed
    if not crashed:
        return ["sdpo.launch: error: the launched processes failed (no exit code reported)"], 1
    lines = []
    for rank, code in sorted(crashed.items()):
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        lines.append(f"sdpo.launch: error: rank {rank} {how} (its traceback, if any, is above)")
    first = sorted(crashed.items())[0][1]
    return lines, first if first > 0 else 1


def _quiet_launcher_logs() -> None:
    """torch's elastic agent logs every failure and SIGTERM it sends; the summary says what matters."""
    import torch.distributed.elastic  # noqa: F401  (creates its loggers)

    for name in list(logging.root.manager.loggerDict):
        if name.startswith("torch.distributed.elastic") or name.startswith("torch.distributed.run"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)


def main(argv: Sequence[str] | None = None) -> int:
    from accelerate.commands.launch import launch_command, launch_command_parser

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = launch_command_parser()
    parser.prog = "python -m sdpo.launch"
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="sdpo-launch-"))
    os.environ[ERRORS_ENV] = str(folder)
    _quiet_launcher_logs()
    try:
        launch_command(args)
        return 0
    except KeyboardInterrupt:
        print("sdpo.launch: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # ChildFailedError (multi-process) or CalledProcessError (one process)
        from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

        if not isinstance(err, (ChildFailedError, subprocess.CalledProcessError)):
            raise
        failed = _failed_ranks(err)
        if isinstance(err, subprocess.CalledProcessError):
            failed = {0: err.returncode}
        lines, code = summarize_failure(_rank_errors(folder), failed)
        sys.stdout.flush()
        for line in lines:
            print(line, file=sys.stderr)
        return code
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
