"""Interaction records: ``(x, y, o)`` triples mined from logged conversations.

One JSON object per line:

    {"id": "wf-003:5", "source": "wildfeedback", "x": [{"role": "user", "content": "..."}, ...],
     "y": "the assistant turn", "o": "the user's next turn"}

``x`` is the chat history before ``y`` (messages with ``role`` and ``content``, the
last one a user turn); ``id`` and ``source`` are optional. :func:`load_interactions`
validates every line and names the file, line and field of every bad record (up to
20, the rest counted) in one error, or, with ``skip_invalid=True``, counts and reports
the bad lines instead.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from sdpo.data.io import BadLines, JSONLineError, iter_jsonl
from typing import Any

_ROLES = {"system", "user", "assistant"}


class RecordError(ValueError):
    """A record file is unreadable or a record is malformed."""


@dataclass
class Interaction:
    x: list[dict[str, str]]
    y: str
    o: str
    id: str = ""
    source: str = ""

    def to_json(self) -> dict[str, Any]:
        d = {"x": self.x, "y": self.y, "o": self.o}
        if self.id:
            d["id"] = self.id
        if self.source:
            d["source"] = self.source
        return d


@dataclass
class LoadReport:
    path: str
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)
    first_errors: list[str] = field(default_factory=list)

    def summary(self) -> str:
        if not self.skipped:
            return f"{self.path}: {self.kept} records"
        reasons = ", ".join(f"{n} {why}" for why, n in self.skipped.most_common())
        return f"{self.path}: {self.kept} records kept, {sum(self.skipped.values())} invalid skipped ({reasons})"


def validate_record(obj: Any) -> Interaction:
    """Check one decoded record; raises RecordError('field ...: why')."""
    if not isinstance(obj, dict):
        raise RecordError(f"expected a JSON object, got {type(obj).__name__}")
    for key in ("x", "y", "o"):
        if key not in obj:
            raise RecordError(f"missing field '{key}'")
    for key in ("y", "o"):
        if not isinstance(obj[key], str):
            raise RecordError(f"field '{key}' must be a string, got {type(obj[key]).__name__}")
        if not obj[key].strip():
            raise RecordError(f"field '{key}' is empty")
    x = obj["x"]
    if not isinstance(x, list) or not x:
        raise RecordError("field 'x' must be a non-empty list of messages")
    for i, m in enumerate(x):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise RecordError(f"field 'x[{i}]' must be an object with string 'role' and 'content'")
        if m["role"] not in _ROLES:
            raise RecordError(f"field 'x[{i}].role' is {m['role']!r}; expected one of {sorted(_ROLES)}")
    if x[-1]["role"] != "user":
        raise RecordError(f"field 'x' must end with a user message, ends with {x[-1]['role']!r}")
    for key in ("id", "source"):
        if key in obj and not isinstance(obj[key], str):
            raise RecordError(f"field '{key}' must be a string")
    return Interaction(
        x=[{"role": m["role"], "content": m["content"]} for m in x],
        y=obj["y"],
        o=obj["o"],
        id=obj.get("id", ""),
        source=obj.get("source", ""),
    )


def load_interactions(path: str | Path, *, skip_invalid: bool = False) -> tuple[list[Interaction], LoadReport]:
    path = Path(path)
    if not path.is_file():
        raise RecordError(f"{path}: no such file")
    report = LoadReport(str(path))
    records = []
    bad = BadLines(path)
    for lineno, obj in iter_jsonl(path):
        try:
            if isinstance(obj, JSONLineError):
                raise RecordError(str(obj))
            records.append(validate_record(obj))
        except RecordError as err:
            if not skip_invalid:
                bad.add(lineno, str(err))
                continue
            reason = str(err).split(" (")[0]
            report.skipped[reason] += 1
            if len(report.first_errors) < 5:
                report.first_errors.append(f"{path}:{lineno}: {err}")
    if bad:
        raise RecordError(bad.message("use --skip_invalid to count and skip such lines"))
    report.kept = len(records)
    if not records:
        raise RecordError(f"{path}: no valid records")
    return records, report


def write_interactions(records, path: str | Path) -> Path:
    from sdpo.data.io import write_jsonl

    return write_jsonl((r.to_json() for r in records), path)
