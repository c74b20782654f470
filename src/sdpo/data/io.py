"""Small shared readers and writers for data files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

class DataFileError(ValueError):
    """A data file or one of its rows does not have the expected layout."""


_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}


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
    with Path(path).open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as err:
                yield lineno, JSONLineError(f"invalid JSON ({err.msg}, column {err.colno})")


class JSONLineError(ValueError):
    pass


def load_local_table(input_file: str | Path):
    """A local parquet / JSON / JSONL / CSV export through ``datasets.load_dataset``."""
    import datasets

    path = Path(input_file)
    if not path.is_file():
        raise FileNotFoundError(f"--input_file {input_file}: no such file")
    builder = _BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise DataFileError(f"--input_file {input_file}: unsupported format {path.suffix!r} (parquet, json, jsonl, csv)")
    return datasets.load_dataset(builder, data_files=str(path), split="train")
