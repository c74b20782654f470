"""Signal cases: hand-written ``(prompt, response, follow-up)`` examples.

A cases file is JSON (a list of objects, or ``{"cases": [...]}``) or JSONL (one
object per line). Each case has

* ``prompt`` (string) **or** ``messages`` (chat messages ending with a user turn);
* ``response`` (string) - the assistant answer to score;
* ``followup`` (string) - the user's next message (relevant hindsight);
* optionally ``unrelated_followup`` (string) - a next message on another topic, the
  control a working teacher should barely react to;
* optionally ``name`` (string).

:func:`load_cases` validates every case before anything is computed and raises
:class:`CasesError` naming the file, the case (and line, for JSONL) and the field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from sdpo.templates import Messages, TemplateError, as_messages

BUNDLED = {
    "bundled": "signal_examples.json",  # three demo cases
    "analysis": "signal_analysis_cases.json",  # the signal-analysis set (also auxiliary/)
}
_KNOWN_FIELDS = {"name", "prompt", "messages", "response", "followup", "unrelated_followup"}


class CasesError(ValueError):
    """A cases file is unreadable or a case is malformed."""


@dataclass
class SignalCase:
    name: str
    messages: Messages
    response: str
    followup: str
    unrelated_followup: str | None = None

    @property
    def prompt(self) -> str:
        return self.messages[-1]["content"]


def bundled_cases_path(name: str = "bundled") -> Path:
    if name not in BUNDLED:
        raise CasesError(f"unknown bundled case set {name!r}; known: {', '.join(BUNDLED)}")
    return Path(str(resources.files("sdpo") / "resources" / BUNDLED[name]))


def load_cases(path: str | Path) -> list[SignalCase]:
    """Read and validate a cases file (``bundled`` names the example shipped with sdpo)."""
    if str(path) in BUNDLED:
        path = bundled_cases_path(str(path))
    path = Path(path)
    if not path.is_file():
        raise CasesError(f"{path}: no such file")
    text = path.read_text(encoding="utf-8")
    raw: list[tuple[str, Any]] = []  # (location, object)
    if path.suffix == ".jsonl":
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                raw.append((f"line {lineno}", json.loads(line)))
            except json.JSONDecodeError as err:
                raise CasesError(f"{path}:{lineno}: invalid JSON: {err.msg} (column {err.colno})") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise CasesError(f"{path}:{err.lineno}: invalid JSON: {err.msg} (column {err.colno})") from None
        if isinstance(data, dict) and "cases" in data:
            data = data["cases"]
        if not isinstance(data, list):
            raise CasesError(f"{path}: expected a list of cases or an object with a 'cases' list")
        raw = [(f"case {i}", obj) for i, obj in enumerate(data)]
    if not raw:
        raise CasesError(f"{path}: no cases")
    return [_parse_case(obj, f"{path}: {where}", index) for index, (where, obj) in enumerate(raw)]


def _parse_case(obj: Any, where: str, index: int) -> SignalCase:
    if not isinstance(obj, dict):
        raise CasesError(f"{where}: expected an object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - _KNOWN_FIELDS)
    if unknown:
        raise CasesError(f"{where}: unknown field(s) {', '.join(unknown)}; expected {', '.join(sorted(_KNOWN_FIELDS))}")
    if ("prompt" in obj) == ("messages" in obj):
        raise CasesError(f"{where}: give exactly one of 'prompt' or 'messages'")
    for key in ("response", "followup"):
        if key not in obj:
            raise CasesError(f"{where}: missing field '{key}'")
    for key in ("prompt", "response", "followup", "unrelated_followup", "name"):
        if key in obj and not isinstance(obj[key], str):
            raise CasesError(f"{where}: field '{key}' must be a string, got {type(obj[key]).__name__}")
    for key in ("prompt", "response", "followup", "unrelated_followup"):
        if key in obj and not obj[key].strip():
            raise CasesError(f"{where}: field '{key}' is empty")
    try:
        messages = as_messages(obj["prompt"] if "prompt" in obj else obj["messages"], where="messages")
    except TemplateError as err:
        raise CasesError(f"{where}: field {err}") from None
    return SignalCase(
        name=obj.get("name") or f"case{index}",
        messages=messages,
        response=obj["response"],
        followup=obj["followup"],
        unrelated_followup=obj.get("unrelated_followup"),
    )
