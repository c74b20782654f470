"""Prompt records for online training and evaluation.

One JSON object per line with ``prompt`` (a string) or ``messages`` (chat messages
ending with a user turn), and optionally ``id`` and ``source``:

    {"id": "tldr-17", "source": "tldr", "prompt": "Summarize this post ...\\n\\nPOST: ..."}
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sdpo.data.interactions import RecordError
from sdpo.data.io import BadLines, JSONLineError, iter_jsonl
from sdpo.templates import TemplateError, as_messages


@dataclass
class PromptRecord:
    messages: list[dict[str, str]]
    id: str = ""
    source: str = ""

    @property
    def text(self) -> str:
        return self.messages[-1]["content"]

    def to_json(self) -> dict:
        d: dict = {"id": self.id} if self.id else {}
        if self.source:
            d["source"] = self.source
        if len(self.messages) == 1:
            d["prompt"] = self.messages[0]["content"]
        else:
            d["messages"] = self.messages
        return d


def parse_prompt(obj) -> PromptRecord:
    if not isinstance(obj, dict):
        raise RecordError(f"expected a JSON object, got {type(obj).__name__}")
    if ("prompt" in obj) == ("messages" in obj):
        raise RecordError("give exactly one of the fields 'prompt' or 'messages'")
    if "prompt" in obj and not isinstance(obj["prompt"], str):
        raise RecordError(f"field 'prompt' must be a string, got {type(obj['prompt']).__name__}")
    try:
        messages = as_messages(obj.get("prompt", obj.get("messages")), where="messages")
    except TemplateError as err:
        raise RecordError(f"field {err}") from None
    return PromptRecord(messages, id=str(obj.get("id", "")), source=str(obj.get("source", "")))


def load_prompts(path: str | Path) -> list[PromptRecord]:
    """Read and validate a prompts JSONL file; errors name the file, line and field."""
    path = Path(path)
    if not path.is_file():
        raise RecordError(f"{path}: no such file")
    records, bad = [], BadLines(path)  # every bad line (up to a cap) is named in one error
    for lineno, obj in iter_jsonl(path):
        try:
            if isinstance(obj, JSONLineError):
                raise RecordError(str(obj))
            records.append(parse_prompt(obj))
        except RecordError as err:
            bad.add(lineno, str(err))
    if bad:
        raise RecordError(bad.message())
    if not records:
        raise RecordError(f"{path}: no prompts")
    return records


def write_prompts(records, path: str | Path) -> Path:
    from sdpo.data.io import write_jsonl

    return write_jsonl((r.to_json() for r in records), path)
