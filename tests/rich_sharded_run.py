"""Two steps of the rich-feedback SDPOTrainer, for the multi-process tests (run via accelerate launch).

    python tests/rich_sharded_run.py MODEL_DIR OUTPUT_DIR TEACHER_MODE
"""

import sys

import torch
from datasets import Dataset
from trl import GRPOConfig

from sdpo import SDPOConfig, SDPOTrainer
from sdpo.distributed import sharded_launch
from sdpo.models import load_tokenizer


def reward(prompts, completions, answer, **kwargs):
    texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
    return [{"score": float(str(a) in t), "feedback": f"The answer is {a}."} for t, a in zip(texts, answer)]


def main(model_dir: str, out: str, teacher: str) -> None:
    pairs = [(1, 2), (3, 4), (5, 6), (7, 8), (2, 2), (4, 4), (6, 6), (8, 8)]
    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": f"What is {a} + {b}?"}], "answer": a + b}
                            for a, b in pairs])
    args = GRPOConfig(output_dir=out, per_device_train_batch_size=4, num_generations=4, max_completion_length=6,
                      max_steps=2, learning_rate=1e-3, logging_steps=1, report_to=[], save_strategy="no", seed=0,
                      use_cpu=not torch.cuda.is_available() and not sharded_launch(), bf16=False)
    trainer = SDPOTrainer(model=model_dir, args=args, sdpo_config=SDPOConfig(teacher_mode=teacher),
                          processing_class=load_tokenizer(model_dir), reward_funcs=[reward], train_dataset=ds)
    trainer.train()
    trainer.save_model(out)
    print(f"rank {trainer.accelerator.process_index}/{trainer.accelerator.num_processes} finished", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:4])
