"""``sdpo prepare tldr|helpsteer2|wildfeedback|wildchat``: prompt sets for ``train-online`` and
(x, y, o) interaction records mined from chat logs for ``train-offline``.

    sdpo prepare tldr --input_file sample --output data/demo/tldr   # train.jsonl + validation.jsonl prompts
    sdpo prepare helpsteer2 --output data/helpsteer2                 # HelpSteer2's prompts (hub or local file)
    sdpo prepare wildfeedback                          # hub dataset microsoft/WildFeedback
    sdpo prepare wildchat --input_file export.parquet  # a local export in WildChat's layout
    sdpo prepare wildchat --input_file sample          # the sample shipped with sdpo

Writes JSONL records and a ``.stats.json`` beside them with what was kept and
dropped, by reason. A hub dataset out of reach, or an empty, unreadable or malformed
``--input_file``, is one error line with the fix.
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
    dataset: str = field(
        default="", metadata={"help": "wildfeedback, wildchat, tldr or helpsteer2 (also the first positional word)"}
    )
    input_file: str | None = field(
        default=None, metadata={"help": "local parquet/JSON/JSONL export in the dataset's layout, or 'sample'"}
    )
    output: str | None = field(
        default=None, metadata={"help": "output JSONL (logs) or directory (tldr/helpsteer2: train.jsonl, validation.jsonl)"}
    )
    split: str = field(default="train", metadata={"help": "hub split"})
    max_conversations: int | None = field(
        default=None, metadata={"help": "cap on conversations kept (WildChat default 15000)"}
    )
    max_pairs: int | None = field(default=None, metadata={"help": "cap on records (WildChat default 50000)"})
    seed: int = field(default=0, metadata={"help": "shuffle seed (WildChat)"})
    dedupe: bool = field(default=False, metadata={"help": "remove exact duplicate (x, y, o) records"})
    english_only: bool | None = field(default=None, metadata={"help": "keep English only (WildChat default true)"})


PrepareArguments.NUMBER_RULES = {'max_conversations': '>=1|None', 'max_pairs': '>=1|None', 'seed': '>=0'}  # checked by sdpo.cli.check_number_rules


ARGUMENTS = PrepareArguments
POSITIONAL = "dataset"


def run(args: PrepareArguments) -> int:
    from sdpo.data.interactions import write_interactions
    from sdpo.data.logs import SOURCES, extract, load_rows, row_labels

    from sdpo.data.prompt_sources import PROMPT_SOURCES

    if args.dataset in PROMPT_SOURCES:
        return _prepare_prompts(args)
    if args.dataset not in SOURCES:
        raise UsageError(
            f"dataset must be one of {', '.join([*SOURCES, *PROMPT_SOURCES])} (got {args.dataset!r})"
        )
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
        labels=row_labels(args.input_file, len(rows), args.dataset),  # bad rows: FILE:LINE, 1-based
    )
    if not records:
        dropped = ", ".join(f"{n} {why}" for why, n in sorted(stats.dropped.items())) or "none"
        raise UsageError(f"no (x, y, o) records extracted from {args.input_file or args.dataset} "
                         f"({stats.conversations_seen} conversations seen; dropped: {dropped})")
    out = Path(args.output or DEFAULT_OUTPUTS[args.dataset])
    write_interactions(records, out)
    stats_path = out.with_suffix(".stats.json")
    stats_path.write_text(json.dumps({"dataset": args.dataset, "input": args.input_file, **stats.to_dict()}, indent=1))
    print(stats.summary())
    print(f"wrote {out} ({len(records)} records) and {stats_path}")
    return 0


def _prepare_prompts(args: PrepareArguments) -> int:
    from sdpo.data.prompt_sources import PROMPT_SOURCES, load_prompt_rows, prepare_helpsteer2, prepare_tldr
    from sdpo.data.prompts import write_prompts

    rows = load_prompt_rows(args.dataset, args.input_file)
    prepare = prepare_tldr if args.dataset == "tldr" else prepare_helpsteer2
    train, val, stats = prepare(rows)
    if not train:
        raise UsageError(f"no training prompts extracted from {args.input_file or args.dataset}: "
                         + ", ".join(f"{k} {v}" for k, v in stats.items()))
    out = Path(args.output or PROMPT_SOURCES[args.dataset]["out"])
    write_prompts(train, out / "train.jsonl")
    write_prompts(val, out / "validation.jsonl")
    report = {"dataset": args.dataset, "input": args.input_file, "train": len(train), "validation": len(val),
              **dict(stats)}
    (out / "stats.json").write_text(json.dumps(report, indent=1))
    for key, value in report.items():
        if key not in ("dataset", "input"):
            print(f"{key}: {value}")
    print(f"wrote {out}/train.jsonl ({len(train)}) and {out}/validation.jsonl ({len(val)})")
    return 0
