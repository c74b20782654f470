"""``sdpo prepare wildfeedback|wildchat``: mine (x, y, o) interaction records from chat logs.

    sdpo prepare wildfeedback                          # hub dataset microsoft/WildFeedback
    sdpo prepare wildchat --input_file export.parquet  # a local export in WildChat's layout
    sdpo prepare wildchat --input_file sample          # the sample shipped with sdpo

Writes JSONL records and a ``.stats.json`` beside them with what was kept and
dropped, by reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from sdpo.cli import UsageError

DEFAULT_OUTPUTS = {
    "wildfeedback": "data/wildfeedback/wildfeedback_interactions.jsonl",
    "wildchat": "data/wildchat/wildchat_interactions_v1.jsonl",
}


@dataclass
class PrepareArguments:
    dataset: str = field(default="", metadata={"help": "wildfeedback or wildchat (also the first positional word)"})
    input_file: str | None = field(
        default=None, metadata={"help": "local parquet/JSON/JSONL export in the dataset's layout, or 'sample'"}
    )
    output: str | None = field(default=None, metadata={"help": "output JSONL (default data/<dataset>/...)"})
    split: str = field(default="train", metadata={"help": "hub split"})
    max_conversations: int | None = field(
        default=None, metadata={"help": "cap on conversations kept (WildChat default 15000)"}
    )
    max_pairs: int | None = field(default=None, metadata={"help": "cap on records (WildChat default 50000)"})
    seed: int = field(default=0, metadata={"help": "shuffle seed (WildChat)"})
    dedupe: bool = field(default=False, metadata={"help": "remove exact duplicate (x, y, o) records"})
    english_only: bool | None = field(default=None, metadata={"help": "keep English only (WildChat default true)"})


ARGUMENTS = PrepareArguments
POSITIONAL = "dataset"


def run(args: PrepareArguments) -> int:
    from sdpo.data.interactions import write_interactions
    from sdpo.data.logs import SOURCES, extract, load_rows

    if args.dataset not in SOURCES:
        raise UsageError(f"dataset must be one of {', '.join(SOURCES)} (got {args.dataset!r})")
    wildchat = args.dataset == "wildchat"
    rows = load_rows(args.dataset, args.input_file, split=args.split)
    records, stats = extract(
        rows,
        args.dataset,
        english_only=args.english_only,
        max_conversations=args.max_conversations if args.max_conversations is not None else (15_000 if wildchat else None),
        max_pairs=args.max_pairs if args.max_pairs is not None else (50_000 if wildchat else None),
        shuffle_seed=args.seed if wildchat else None,
        dedupe=args.dedupe,
    )
    if not records:
        raise UsageError(f"no records extracted\n{stats.summary()}")
    out = Path(args.output or DEFAULT_OUTPUTS[args.dataset])
    write_interactions(records, out)
    stats_path = out.with_suffix(".stats.json")
    stats_path.write_text(json.dumps({"dataset": args.dataset, "input": args.input_file, **stats.to_dict()}, indent=1))
    print(stats.summary())
    print(f"wrote {out} ({len(records)} records) and {stats_path}")
    return 0
