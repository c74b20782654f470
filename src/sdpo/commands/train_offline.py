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
    trainer = train_offline(args)
    if trainer.is_world_process_zero():
        print(f"done: {trainer.state.global_step} steps; model and checkpoints in {args.output_dir}")
    return 0
