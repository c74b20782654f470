"""Prompt sets for online training: TL;DR posts and HelpSteer2 prompts.

* TL;DR (``openai/summarize_from_feedback``, config ``comparisons``; rows carry
  ``info`` with ``post`` and a ``split``), as the reference's ``process_tldr_dataset.py``:
  the prompt is the post followed by a ``TL;DR:`` cue; prompts of 1,024 characters or
  more are dropped; duplicates (lower case, whitespace collapsed) are dropped within each
  split; a post found in both splits stays in train and leaves validation. Train with
  ``--system_prompt tldr`` (the task's system prompt; the cue is then stripped, as the
  reference does).
* HelpSteer2 (``nvidia/HelpSteer2``; rows with ``prompt`` and ``response``): multi-turn
  prompts (those with ``<extra_id_`` markers) are dropped, as are rows whose prompt or
  response exceeds 2,048 characters; exact duplicate prompts are removed.

Rows without a ``split`` column go to validation when a hash of the text puts them in
the last tenth. Every drop is counted by reason.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from sdpo.data.io import DataFileError
from sdpo.data.prompts import PromptRecord

TLDR_MAX_PROMPT_CHARS = 1024
TLDR_CUE = "\nTL;DR:\n"
HELPSTEER_MAX_CHARS = 2048

PROMPT_SOURCES = {
    "tldr": dict(hub_id="openai/summarize_from_feedback", config="comparisons", splits=("train", "validation"),
                 sample="tldr_comparisons_sample.jsonl", out="data/tldr_prompts_unique"),
    "helpsteer2": dict(hub_id="nvidia/HelpSteer2", config=None, splits=("train", "validation"),
                       sample="helpsteer2_sample.jsonl", out="data/helpsteer2_prompts"),
}


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def normalize_post(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower())


def _split_of(row: dict, key: str) -> str:
    split = str(row.get("split") or "")
    if split:
        return "validation" if split.startswith(("valid", "val", "test")) else "train"
    return "validation" if int(_digest(key), 16) % 10 == 9 else "train"


def prepare_tldr(rows) -> tuple[list[PromptRecord], list[PromptRecord], Counter]:
    """The reference's TL;DR prompts: each post followed by a "TL;DR:" cue; prompts of 1,024+
    characters (cue included) dropped; duplicates (normalised text) dropped within each split,
    first occurrence kept; a post found in both splits stays in train and leaves validation."""
    stats: Counter = Counter()
    splits: dict[str, dict[str, PromptRecord]] = {"train": {}, "validation": {}}  # split -> key -> record
    for index, row in enumerate(rows):
        stats["rows seen"] += 1
        info = row.get("info") if isinstance(row, dict) else None
        if not isinstance(info, dict) or not isinstance(info.get("post"), str):
            raise DataFileError(f"row {index}: expected an 'info' object with a 'post' string (TL;DR layout)")
        post = info["post"].strip()
        if not post:
            stats["dropped: empty post"] += 1
            continue
        prompt = post + TLDR_CUE
        if len(prompt) >= TLDR_MAX_PROMPT_CHARS:
            stats[f"dropped: prompt of {TLDR_MAX_PROMPT_CHARS}+ characters"] += 1
            continue
        key = _digest(normalize_post(prompt))
        chosen = splits[_split_of(row, key)]
        if key in chosen:
            stats["dropped: duplicate post within its split"] += 1
            continue
        chosen[key] = PromptRecord([{"role": "user", "content": prompt}], id=str(info.get("id") or key[:12]),
                                   source="tldr")
    in_both = [k for k in splits["validation"] if k in splits["train"]]
    for key in in_both:
        del splits["validation"][key]
    stats["dropped: validation post also in train (kept in train)"] = len(in_both)
    return list(splits["train"].values()), list(splits["validation"].values()), stats


def prepare_helpsteer2(rows) -> tuple[list[PromptRecord], list[PromptRecord], Counter]:
    stats: Counter = Counter()
    seen: set[str] = set()
    train, val = [], []
    for index, row in enumerate(rows):
        stats["rows seen"] += 1
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
            raise DataFileError(f"row {index}: expected a 'prompt' string (HelpSteer2 layout)")
        prompt, response = row["prompt"], row.get("response") or ""
        if "<extra_id_" in prompt:
            stats["dropped: multi-turn prompt"] += 1
            continue
        if len(prompt) > HELPSTEER_MAX_CHARS or len(response) > HELPSTEER_MAX_CHARS:
            stats[f"dropped: prompt or response over {HELPSTEER_MAX_CHARS} characters"] += 1
            continue
        if prompt in seen:
            stats["dropped: duplicate prompt"] += 1
            continue
        seen.add(prompt)
        record = PromptRecord([{"role": "user", "content": prompt}], id=f"hs2-{_digest(prompt)[:10]}",
                              source="helpsteer2")
        (val if _split_of(row, prompt) == "validation" else train).append(record)
    return train, val, stats


def load_prompt_rows(source: str, input_file: str | None):
    """Rows from a local export (with or without a ``split`` column) or both hub splits."""
    from sdpo.data.hub import input_file_hint, load_hub_dataset

    spec = PROMPT_SOURCES[source]
    if input_file in ("sample", "bundled"):
        from importlib import resources

        input_file = str(resources.files("sdpo") / "resources" / "samples" / spec["sample"])
    if input_file:
        from sdpo.data.io import load_local_table

        return list(load_local_table(input_file))
    rows = []
    for split in spec["splits"]:
        for row in load_hub_dataset(spec["hub_id"], spec["config"], split=split, hint=input_file_hint()):
            rows.append({**row, "split": "train" if split == "train" else "validation"})
    return rows
