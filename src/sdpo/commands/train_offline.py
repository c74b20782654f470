"""``sdpo train-offline``: offline SDPO on interaction records.

    sdpo train-offline --train_jsonl data/wildfeedback/wildfeedback_interactions.jsonl \\
        --model_name_or_path Qwen/Qwen3-8B --output_dir runs/offline
    accelerate launch --config_file configs/accelerate/multi_gpu.yaml -m sdpo.cli train-offline ...

Every ``transformers.TrainingArguments`` option is accepted (``--max_steps``,
``--save_steps``, ``--bf16``, ``--gradient_checkpointing``, ``--deepspeed``, ...).
``--resume_from_checkpoint last`` continues from the newest checkpoint in ``--output_dir``.
"""

from __future__ import annotations

from sdpo.trainers.offline import OfflineSDPOConfig

ARGUMENTS = OfflineSDPOConfig


def run(args: OfflineSDPOConfig) -> int:
    from sdpo.cli import UsageError
    from sdpo.trainers.offline import train_offline

    if not args.train_jsonl:
        raise UsageError("--train_jsonl is required (make one with `sdpo prepare wildfeedback|wildchat`)")
    normalise_report_to(args)
    trainer = train_offline(args)
    if trainer.is_world_process_zero():  # beside sdpo_config.json: `--config` runs it again
        from sdpo.run_config import save_resolved_config

        save_resolved_config(args, args.output_dir, "sdpo_config.yaml")
        print(f"done: {trainer.state.global_step} steps; model and checkpoints in {args.output_dir}")
        print("verdict: not measured - offline training has no held-out judge of its own; for one (a paired test "
              f"against the starting model, with n and the non-answer rate): sdpo eval checkpoints --run_dir "
              f"{args.output_dir} --ckpts all --data_path PROMPTS.jsonl --style PERSONA")
    return 0


def normalise_report_to(args) -> None:
    """``report_to`` as TRL takes it: ``none``, ``all``, a list or ``"trackio,tensorboard"`` (TrainingArguments
    splits no commas); a missing tracker package is one error line before the model loads."""
    from sdpo.cli import UsageError
    from sdpo.trackers import TrackerError, parse_report_to

    try:
        args.report_to = parse_report_to(args.report_to)
    except TrackerError as err:
        raise UsageError(str(err)) from None
