"""``sdpo train-online``: online SDPO with a simulated user.

    sdpo train-online --train_jsonl data/tldr_prompts_unique/train.jsonl --style concise_casual_beginner
    sdpo train-online --train_jsonl ... --simulator claude --style no_emojis     # needs ANTHROPIC_API_KEY
    accelerate launch --config_file configs/accelerate/multi_gpu.yaml -m sdpo.cli train-online ...
"""

from __future__ import annotations

import sys

from sdpo.trainers.online import OnlineSDPOConfig

ARGUMENTS = OnlineSDPOConfig


def run(args: OnlineSDPOConfig) -> int:
    from sdpo.cli import UsageError
    from sdpo.trainers.online import OnlineSDPOTrainer, format_summary

    if not args.train_jsonl:
        raise UsageError("--train_jsonl is required (make one with `sdpo prepare tldr|helpsteer2`)")
    trainer = OnlineSDPOTrainer(args)
    summary = trainer.train()
    acc = trainer.accelerator
    if acc.num_processes > 1:
        line = f"rank {acc.process_index}/{acc.num_processes}: parameter checksum {trainer.parameter_checksum():.10e}\n"
        sys.stdout.write(line)  # one write: ranks share the terminal and must not interleave mid-line
        sys.stdout.flush()
    if acc.is_main_process:
        print(format_summary(summary))
        print(f"checkpoints, metrics.jsonl and summary.json in {args.output_dir}")
    return 0
