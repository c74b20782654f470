"""Mining ``(x, y, o)`` interaction records from logged conversations.

Sources: ``microsoft/WildFeedback`` (config ``wildfeedback``; ``conversations`` with
``from``/``value``) and ``allenai/WildChat`` (``conversation`` with ``role``/``content``
and a conversation-level ``language``), through ``datasets.load_dataset``, or a local
export of either (``--input_file``: parquet, JSON or JSONL in the same layout).

Rules, applied in this order to each conversation:

1. messages are normalised to ``user``/``assistant``/``system`` roles; empty
   (whitespace-only) messages are removed; consecutive messages of the same role are
   merged (joined by a blank line);
2. the conversation is dropped if it then has fewer than 3 messages, more than
   100,000 characters in total, or an assistant message over 4,096 characters;
   WildChat also drops conversations with a user message over 4,096 characters and
   those whose language is not "english"/"en" (a missing language is dropped), as the
   reference preprocessors do;
3. every assistant message directly followed by a user message gives one record:
   ``y`` = the assistant message, ``o`` = the user's next message, ``x`` = the
   preceding messages cut to the last 5, then trimmed at the front until it starts
   with a user turn (a pair with no user turn before it is dropped).

WildChat is shuffled with a seed and capped (conversations, then pairs). Every drop
is counted by reason; ``dedupe`` removes exact duplicate ``(x, y, o)`` records.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from sdpo.data.interactions import Interaction

MAX_MESSAGE_CHARS = 4096
MAX_CONVERSATION_CHARS = 100_000
MIN_MESSAGES = 3
CONTEXT_MESSAGES = 5

_ROLE_MAP = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "bot": "assistant",
    "chatgpt": "assistant",
    "system": "system",
}

SOURCES = {
    "wildfeedback": dict(hub_id="microsoft/WildFeedback", config="wildfeedback", sample="wildfeedback_sample.jsonl"),
    "wildchat": dict(hub_id="allenai/WildChat", config=None, sample="wildchat_sample.jsonl"),
}


class ConversationError(ValueError):
    """A conversation row does not have the dataset's layout."""


@dataclass
class ExtractionStats:
    conversations_seen: int = 0
    conversations_kept: int = 0
    records: int = 0
    dropped: Counter = field(default_factory=Counter)  # reason -> count (conversations or pairs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "conversations_seen": self.conversations_seen,
            "conversations_kept": self.conversations_kept,
            "records": self.records,
            "dropped": dict(self.dropped),
        }

    def summary(self) -> str:
        lines = [
            f"conversations: {self.conversations_seen} seen, {self.conversations_kept} kept",
            f"records written: {self.records}",
        ]
        lines += [f"  dropped: {n} {why}" for why, n in sorted(self.dropped.items())]
        return "\n".join(lines)


def normalize_messages(raw: list[dict], *, role_key: str, content_key: str, where: str) -> list[dict[str, str]]:
    """Map roles, drop empty messages, merge consecutive messages of one role."""
    if not isinstance(raw, list):
        raise ConversationError(f"{where}: expected a list of messages, got {type(raw).__name__}")
    out: list[dict[str, str]] = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict) or role_key not in m or content_key not in m:
            raise ConversationError(f"{where}: message {i} needs '{role_key}' and '{content_key}'")
        role = _ROLE_MAP.get(str(m[role_key]).lower())
        if role is None:
            raise ConversationError(f"{where}: message {i} has unknown role {m[role_key]!r}")
        content = m[content_key] if isinstance(m[content_key], str) else ""
        if not content.strip():
            continue
        if out and out[-1]["role"] == role:
            out[-1]["content"] += "\n\n" + content
        else:
            out.append({"role": role, "content": content})
    return out


def conversation_drop_reason(messages: list[dict[str, str]], source: str = "wildchat") -> str | None:
    """As the reference preprocessors: both drop long assistant messages; only WildChat's also drops
    conversations with a long user message (preprocess_wildchat.py vs preprocess_wildfeedback.py)."""
    if len(messages) < MIN_MESSAGES:
        return f"fewer than {MIN_MESSAGES} messages"
    if sum(len(m["content"]) for m in messages) > MAX_CONVERSATION_CHARS:
        return f"over {MAX_CONVERSATION_CHARS} characters"
    if any(m["role"] == "assistant" and len(m["content"]) > MAX_MESSAGE_CHARS for m in messages):
        return f"an assistant message over {MAX_MESSAGE_CHARS} characters"
    if source == "wildchat" and any(m["role"] == "user" and len(m["content"]) > MAX_MESSAGE_CHARS for m in messages):
        return f"a user message over {MAX_MESSAGE_CHARS} characters"
    return None


ENGLISH_VALUES = {"english", "en"}


def is_english(language) -> bool:
    """WildChat's conversation-level language, as the reference reads it: "english" or "en" (any case);
    a missing language is not English."""
    return isinstance(language, str) and language.strip().lower() in ENGLISH_VALUES


def extract_pairs(messages: list[dict[str, str]], *, conv_id: str, source: str, stats: ExtractionStats):
    """One record per assistant message followed directly by a user message."""
    for i in range(1, len(messages) - 1):
        if messages[i]["role"] != "assistant" or messages[i + 1]["role"] != "user":
            continue
        x = messages[max(0, i - CONTEXT_MESSAGES) : i]
        while x and x[0]["role"] != "user":
            x = x[1:]
        if not x or x[-1]["role"] != "user":
            stats.dropped["pairs without a user turn before the response"] += 1
            continue
        yield Interaction(
            x=[dict(m) for m in x],
            y=messages[i]["content"],
            o=messages[i + 1]["content"],
            id=f"{conv_id}:{i}",
            source=source,
        )


def _rows_wildfeedback(row: dict, index: int, where: str):
    if not isinstance(row, dict) or row.get("conversations") is None:  # a table fills a missing column with None
        raise ConversationError(f"{where}: missing column 'conversations' (WildFeedback layout)")
    conv_id = str(row.get("conversation_id") or row.get("id") or f"wf-{index}")
    messages = normalize_messages(row["conversations"], role_key="from", content_key="value", where=where)
    return conv_id, messages, None


def _rows_wildchat(row: dict, index: int, where: str):
    if not isinstance(row, dict) or row.get("conversation") is None:  # a table fills a missing column with None
        raise ConversationError(f"{where}: missing column 'conversation' (WildChat layout)")
    conv_id = str(row.get("conversation_hash") or row.get("conversation_id") or f"wc-{index}")
    messages = normalize_messages(row["conversation"], role_key="role", content_key="content", where=where)
    return conv_id, messages, row.get("language")


MAX_NAMED_ROWS = 5


def row_labels(input_file: str | None, n_rows: int, source: str | None = None) -> list[str]:
    """How each row of a conversation table is named in messages, in file order and 1-based: ``FILE:LINE``
    for a JSON-lines file (blank lines skipped as the loader skips them), ``FILE: row N`` for other files,
    ``row N`` for a hub dataset."""
    if input_file in ("sample", "bundled") and source is not None:
        input_file = str(sample_path(source))
    if not input_file:
        return [f"row {i + 1}" for i in range(n_rows)]
    path = Path(input_file)
    if path.suffix.lower() in (".jsonl", ".json"):
        try:
            with path.open("rb") as f:
                lines = [lineno for lineno, raw in enumerate(f, 1) if raw.strip()]
        except OSError:
            lines = []
        if len(lines) == n_rows:  # one row per non-blank line (not a JSON array)
            return [f"{input_file}:{lineno}" for lineno in lines]
    return [f"{input_file}: row {i + 1}" for i in range(n_rows)]


def _bad_rows_error(bad: list[str], count: int) -> ConversationError:
    if count == 1:
        return ConversationError(bad[0])
    more = f"; and {count - len(bad)} more" if count > len(bad) else ""
    return ConversationError(f"{count} bad rows: {'; '.join(bad)}{more}")


def extract(
    rows: Iterable[dict],
    source: str,
    *,
    english_only: bool | None = None,
    max_conversations: int | None = None,
    max_pairs: int | None = None,
    shuffle_seed: int | None = None,
    dedupe: bool = False,
    labels: Sequence[str] | None = None,
) -> tuple[list[Interaction], ExtractionStats]:
    """Records from conversation rows of ``source`` (``wildfeedback`` or ``wildchat``).

    Every row's layout is checked first, in file order: bad rows raise one :class:`ConversationError`
    naming them (``labels[i]`` for row ``i``, see :func:`row_labels`; default ``row <i+1>``), before the
    seeded shuffle and the caps."""
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; choose one of {', '.join(SOURCES)}")
    parse = _rows_wildfeedback if source == "wildfeedback" else _rows_wildchat
    if english_only is None:
        english_only = source == "wildchat"
    rows = list(rows)
    parsed, bad, n_bad = [], [], 0
    for index, row in enumerate(rows):  # in file order, so the first bad row named is the first in the file
        try:
            parsed.append(parse(row, index, labels[index] if labels is not None else f"row {index + 1}"))
        except ConversationError as err:
            n_bad += 1
            if len(bad) < MAX_NAMED_ROWS:
                bad.append(str(err))
            parsed.append(None)
    if n_bad:
        raise _bad_rows_error(bad, n_bad)
    del rows
    order = list(range(len(parsed)))
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(order)
    stats = ExtractionStats()
    records: list[Interaction] = []
    seen: set[str] = set()
    for index in order:
        if max_conversations is not None and stats.conversations_kept >= max_conversations:
            stats.dropped["conversations over the cap"] += 1
            continue
        stats.conversations_seen += 1
        conv_id, messages, language = parsed[index]
        if english_only and not is_english(language):
            stats.dropped["conversations not in English (or without a language)"] += 1
            continue
        reason = conversation_drop_reason(messages, source)
        if reason:
            stats.dropped[f"conversations with {reason}"] += 1
            continue
        stats.conversations_kept += 1
        for record in extract_pairs(messages, conv_id=conv_id, source=source, stats=stats):
            if dedupe:
                key = json.dumps([record.x, record.y, record.o], ensure_ascii=False)
                if key in seen:
                    stats.dropped["duplicate records"] += 1
                    continue
                seen.add(key)
            if max_pairs is not None and len(records) >= max_pairs:
                stats.dropped["pairs over the cap"] += 1
                continue
            records.append(record)
    stats.records = len(records)
    return records, stats


def sample_path(source: str) -> Path:
    from importlib import resources

    return Path(str(resources.files("sdpo") / "resources" / "samples" / SOURCES[source]["sample"]))


def load_rows(source: str, input_file: str | None = None, *, split: str = "train"):
    """Conversation rows from a local export (``input_file``) or the hub dataset."""
    from sdpo.data.hub import input_file_hint, load_hub_dataset

    if input_file in ("sample", "bundled"):
        input_file = str(sample_path(source))
    if input_file:
        from sdpo.data.io import load_local_table

        return load_local_table(input_file)
    spec = SOURCES[source]
    return load_hub_dataset(spec["hub_id"], spec["config"], split=split, hint=input_file_hint())
