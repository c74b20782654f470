"""``sdpo train-online``: online SDPO with a simulated user.

    sdpo train-online --train_jsonl data/tldr_prompts_unique/train.jsonl --style concise_casual_beginner
    sdpo train-online --train_jsonl ... --simulator claude --style no_emojis     # needs ANTHROPIC_API_KEY
    accelerate launch --config_file configs/accelerate/multi_gpu.yaml -m sdpo.cli train-online ...

The output directory belongs to one run: a second run into it refuses while the first
holds it, and a new run into a directory with another run's checkpoints or metrics
refuses unless given ``--resume_from_checkpoint last`` (continue) or
``--overwrite_output_dir true`` (start over). Ctrl-C stops after the current step and
prints the command that resumes.
"""

from __future__ import annotations

import sys

from sdpo.trainers.online import OnlineSDPOConfig

ARGUMENTS = OnlineSDPOConfig


def run(args: OnlineSDPOConfig) -> int:
    from sdpo import rundir
    from sdpo.cli import UsageError
    from sdpo.trainers.online import OnlineSDPOTrainer, format_summary

    if not args.train_jsonl:
        raise UsageError("--train_jsonl is required (make one with `sdpo prepare tldr|helpsteer2`)")
    # the directory is claimed before the model loads (the trainer claims it again, re-entrantly)
    with rundir.claim(args.output_dir, resume=args.resume_from_checkpoint, overwrite=args.overwrite_output_dir):
        trainer = OnlineSDPOTrainer(args)
        if trainer.accelerator.is_main_process:  # beside sdpo_online_config.json: `--config` runs it again
            from sdpo.run_config import save_resolved_config

            save_resolved_config(args, args.output_dir, "sdpo_online_config.yaml")
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
