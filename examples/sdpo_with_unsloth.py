"""Rich-feedback SDPO with Unsloth (4-bit base, LoRA adapters, EMA teacher as a second adapter).

Needs a CUDA GPU and `pip install unsloth`. Elsewhere it says so and exits with
status 2. Unsloth must patch TRL before the trainer is imported, so the order of
imports below matters.

    python examples/sdpo_with_unsloth.py --model unsloth/Qwen2.5-0.5B-Instruct --max-steps 50
"""

import importlib.util
import sys


def main():
    from sdpo.tasks import example_parser

    parser = example_parser("addition", __doc__.splitlines()[0], max_steps=50, learning_rate=5e-6,
                            max_completion_length=16)
    parser.set_defaults(model="unsloth/Qwen2.5-0.5B-Instruct", output_dir="runs/example-unsloth")
    parser.add_argument("--lora-rank", type=int, default=16, help="LoRA rank")
    parser.add_argument("--load-in-4bit", action="store_true", default=True, help="load the base model in 4 bits")
    args = parser.parse_args()

    import torch

    problems = []
    if importlib.util.find_spec("unsloth") is None:
        problems.append("unsloth is not installed (pip install unsloth)")
    if not torch.cuda.is_available():
        problems.append("no CUDA GPU is visible (unsloth needs one)")
    if problems:
        print("sdpo_with_unsloth.py cannot run here: " + "; ".join(problems) + ".\n"
              "On a CPU, run examples/basic_sdpo.py instead (same task, plain transformers).", file=sys.stderr)
        sys.exit(2)

    from unsloth import FastLanguageModel  # noqa: E402  (must come before TRL/sdpo trainer imports)

    try:
        from unsloth import PatchFastRL

        PatchFastRL("GRPO", FastLanguageModel)
    except ImportError:  # newer unsloth versions patch on import
        pass

    import json
    from pathlib import Path

    from datasets import Dataset
    from trl import GRPOConfig

    from sdpo.tasks import _tasks, greedy_answers, score_answers
    from sdpo_trainer import SDPOConfig, SDPOTrainer  # the seed's import path (same classes as sdpo.SDPOTrainer)

    task = _tasks()["addition"]
    train_rows, held_out = task.build(args.train_size, args.eval_size, args.seed)
    model, tokenizer = FastLanguageModel.from_pretrained(args.model, load_in_4bit=args.load_in_4bit,
                                                         max_seq_length=1024)
    model = FastLanguageModel.get_peft_model(model, r=args.lora_rank, lora_alpha=args.lora_rank,
                                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])

    def accuracy(tag):
        answers = greedy_answers(model, tokenizer, held_out, max_new_tokens=args.max_completion_length, desc=tag)
        scores = score_answers(task, held_out, answers)
        return sum(s["score"] for s in scores) / len(scores)

    before = accuracy("held-out before")
    grpo = GRPOConfig(output_dir=args.output_dir, max_steps=args.max_steps, learning_rate=args.learning_rate,
                      per_device_train_batch_size=args.num_generations * args.prompts_per_step,
                      num_generations=args.num_generations, max_completion_length=args.max_completion_length,
                      logging_steps=1, save_strategy="no", report_to=[], optim="adamw_8bit", bf16=True)
    trainer = SDPOTrainer(model=model, args=grpo, sdpo_config=SDPOConfig(teacher_mode=args.teacher_mode),
                          processing_class=tokenizer, reward_funcs=[task.reward],
                          train_dataset=Dataset.from_list(train_rows))
    trainer.train()
    after = accuracy("held-out after")
    print(f"== held-out score: {before:.3f} -> {after:.3f}")
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    Path(args.output_dir, "summary.json").write_text(json.dumps({"before": before, "after": after}, indent=2))


if __name__ == "__main__":
    main()
