"""Small shared readers and writers for data files."""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable

MAX_NAMED_LINES = 20  # bad lines named in one error; the rest are counted


class DataFileError(ValueError):
    """A data file or one of its rows does not have the expected layout."""


_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}
_INPUT_HINT = "give a local parquet, JSON, JSONL or CSV export in the dataset's layout, or --input_file sample"


class BadLines:
    """The bad lines of one file, collected so that a single error names them all (up to ``cap``)."""

    def __init__(self, path: str | Path, cap: int = MAX_NAMED_LINES):
        self.path, self.cap = str(path), cap
        self.named: list[tuple[int, str]] = []
        self.count = 0

    def add(self, lineno: int, why: str) -> None:
        self.count += 1
        if len(self.named) < self.cap:
            self.named.append((lineno, why))

    def __bool__(self) -> bool:
        return self.count > 0

    def message(self, hint: str = "") -> str:
        """One line: ``file:N: why`` for one bad line, else ``file: K bad lines: line N: why; ...``."""
        hint = f" ({hint})" if hint else ""
        if self.count == 1:
            lineno, why = self.named[0]
            return f"{self.path}:{lineno}: {why}{hint}"
        named = "; ".join(f"line {lineno}: {why}" for lineno, why in self.named)
        more = f"; and {self.count - len(self.named)} more" if self.count > len(self.named) else ""
        return f"{self.path}: {self.count} bad lines: {named}{more}{hint}"


def write_jsonl(objects: Iterable[dict], path: str | Path) -> Path:
    """One JSON object per line (UTF-8, non-ASCII kept), creating parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for obj in objects:
            f.write(json.dumps(obj, ensure_ascii=False) + "\n")
    return path


def iter_jsonl(path: Path):
    """``(line number, object)`` for each non-blank line; a line that is not JSON gives
    ``(line number, JSONLineError)`` so the caller decides whether to stop or count it."""
    try:
        f = Path(path).open("rb")
    except OSError as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise DataFileError(f"{path}: cannot be read ({err.strerror or err})") from None
    with f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                yield lineno, JSONLineError(f"not UTF-8 text (byte {err.start + 1})")
                continue
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as err:
                yield lineno, JSONLineError(f"invalid JSON ({err.msg}, column {err.colno})")


class JSONLineError(ValueError):
    pass


def _root_cause(err: BaseException) -> BaseException:
    seen = set()
    while (err.__cause__ or err.__context__) is not None and id(err) not in seen:
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return err


@contextmanager
def _quiet_datasets():
    """``datasets`` without progress bars and below-critical logs, for the duration."""
    import datasets

    bars_were_off = datasets.utils.are_progress_bars_disabled()
    verbosity = datasets.utils.logging.get_verbosity()
    datasets.disable_progress_bars()
    datasets.utils.logging.set_verbosity(datasets.utils.logging.CRITICAL)
    try:
        yield
    finally:
        datasets.utils.logging.set_verbosity(verbosity)
        if not bars_were_off:
            datasets.enable_progress_bars()


def load_local_table(input_file: str | Path, *, option: str = "--input_file"):
    """A local parquet / JSON / JSONL / CSV export through ``datasets.load_dataset``.

    A missing, empty, unreadable or unparsable file, or one with no rows, is one
    :class:`DataFileError` line naming the file and the fix.
    """
    path = Path(input_file)
    where = f"{option} {input_file}"
    if not path.exists():
        raise DataFileError(f"{where}: no such file ({_INPUT_HINT})")
    if not path.is_file():
        raise DataFileError(f"{where}: not a file ({_INPUT_HINT})")
    builder = _BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise DataFileError(f"{where}: unsupported format {path.suffix!r} (parquet, json, jsonl, csv)")
    try:
        with path.open("rb") as f:
            head = f.read(1 << 16)
    except OSError as err:
        raise DataFileError(f"{where}: cannot be read ({err.strerror or err}); check the path and its permissions") from None
    if not head.strip() and os.path.getsize(path) < (1 << 16):
        raise DataFileError(f"{where}: the file is empty ({_INPUT_HINT})")
    import datasets

    try:
        with _quiet_datasets():  # its own error log and an empty progress bar would precede our line
            table = datasets.load_dataset(builder, data_files=str(path), split="train")
    except Exception as err:  # noqa: BLE001 - a local file the library could not parse: say which and why
        if path.suffix.lower() == ".jsonl":  # name the bad lines, as for our own record files
            bad = BadLines(f"{where}")
            for lineno, obj in iter_jsonl(path):
                if isinstance(obj, JSONLineError):
                    bad.add(lineno, str(obj))
                elif not isinstance(obj, dict):
                    bad.add(lineno, f"expected a JSON object, got {type(obj).__name__}")
            if bad:
                raise DataFileError(bad.message(_INPUT_HINT)) from None
        cause = _root_cause(err)
        detail = (str(cause).strip().splitlines() or [type(cause).__name__])[0][:200]
        raise DataFileError(f"{where}: cannot be read as {path.suffix.lstrip('.').lower()} ({detail}); "
                            f"{_INPUT_HINT}") from None
    if len(table) == 0:
        raise DataFileError(f"{where}: no rows ({_INPUT_HINT})")
    return table
