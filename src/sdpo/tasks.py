"""Small tasks with environment feedback, and the shared driver of the rich-feedback examples.

- ``addition``: "What is 37 + 85?"; reward 1 for the right number, feedback says
  what was answered and what the answer is.
- ``code``: write a small Python function; the tests run in the sandbox and the
  feedback names the failing test, the exception or the time-out.

:func:`run_example` is what ``examples/basic_sdpo.py`` and
``examples/sdpo_rich_feedback.py`` run: held-out accuracy with greedy decoding,
SDPO training with :class:`sdpo.SDPOTrainer`, held-out accuracy again, and a
short report of what changed.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

# ----------------------------------------------------------------------------- addition


def addition_rows(n: int, *, seed: int, low: int = 10, high: int = 99, exclude: set | None = None) -> list[dict]:
    rng = random.Random(seed)
    rows, seen = [], set(exclude or ())
    while len(rows) < n:
        a, b = rng.randint(low, high), rng.randint(low, high)
        if (a, b) in seen:
            continue
        seen.add((a, b))
        rows.append({
            "prompt": [{"role": "user", "content": f"What is {a} + {b}? Reply with just the number."}],
            "answer": a + b, "pair": [a, b],
        })
    return rows


def addition_task(train_size: int, eval_size: int, seed: int):
    held_out = addition_rows(eval_size, seed=seed + 1)
    train = addition_rows(train_size, seed=seed, exclude={tuple(r["pair"]) for r in held_out})
    return train, held_out


# ----------------------------------------------------------------------------- code

CODE_PROBLEMS = [
    ("total", "returns the sum of a list of numbers `xs`", [[[1, 2, 3]], [[]], [[-4, 10]]], [6, 0, 6]),
    ("largest", "returns the largest number in a non-empty list `xs`", [[[3, 9, 2]], [[-5, -2]], [[7]]], [9, -2, 7]),
    ("count_vowels", "returns how many vowels (a, e, i, o, u; lower or upper case) the string `s` has",
     [["hello"], ["SKY"], ["Aeiou"]], [2, 0, 5]),
    ("reverse_words", "returns the string `s` with the order of its space-separated words reversed",
     [["one two three"], ["hi"], ["a b"]], ["three two one", "hi", "b a"]),
    ("is_even", "returns True when the integer `n` is even and False otherwise", [[4], [7], [0]], [True, False, True]),
    ("square", "returns `n` multiplied by itself", [[3], [-2], [0]], [9, 4, 0]),
    ("factorial", "returns n! for a non-negative integer `n`", [[0], [5], [3]], [1, 120, 6]),
    ("count_positive", "returns how many numbers in the list `xs` are greater than zero",
     [[[1, -2, 3]], [[]], [[-1, 0]]], [2, 0, 0]),
    ("first_char", "returns the first character of the non-empty string `s`", [["abc"], ["Z"], ["hello"]],
     ["a", "Z", "h"]),
    ("average", "returns the mean of a non-empty list of numbers `xs`", [[[1, 2, 3]], [[5]], [[2, 4]]], [2.0, 5.0, 3.0]),
    ("double_all", "returns a new list with every number in `xs` doubled", [[[1, 2]], [[]], [[-3]]], [[2, 4], [], [-6]]),
    ("is_palindrome", "returns True when the string `s` reads the same backwards", [["level"], ["abc"], [""]],
     [True, False, True]),
    ("count_words", "returns the number of space-separated words in the string `s`", [["a b c"], ["word"], [""]],
     [3, 1, 0]),
    ("minimum", "returns the smallest number in a non-empty list `xs`", [[[3, 9, 2]], [[-5, -2]], [[7]]], [2, -5, 7]),
    ("absolute", "returns the absolute value of the number `x`", [[-3], [4], [0]], [3, 4, 0]),
    ("join_dash", "returns the strings in the list `words` joined with '-'", [[["a", "b"]], [["x"]], [[]]],
     ["a-b", "x", ""]),
]


def code_rows() -> list[dict]:
    rows = []
    for name, spec, args, expected in CODE_PROBLEMS:
        rows.append({
            "prompt": [{"role": "user", "content":
                        f"Write a Python function `{name}` that {spec}. Reply with the code in a ```python block."}],
            "entry_point": name,
            # JSON text: Arrow columns cannot mix the types that test values have
            "tests": json.dumps([{"args": a, "expected": e} for a, e in zip(args, expected)]),
        })
    return rows


def code_task(train_size: int, eval_size: int, seed: int):
    rows = code_rows()
    random.Random(seed).shuffle(rows)
    eval_size = min(eval_size, len(rows) // 2)
    held_out, train = rows[:eval_size], rows[eval_size:]
    return (train * (1 + train_size // max(1, len(train))))[:train_size], held_out


# ----------------------------------------------------------------------------- driver


@dataclass
class ExampleTask:
    name: str
    build: Callable[[int, int, int], tuple[list[dict], list[dict]]]
    reward: Callable
    description: str


def _tasks():
    from .feedback.checkers import CodeTestsReward, NumericAnswerReward
    from .feedback.sandbox import SandboxLimits

    return {
        "addition": ExampleTask("addition", addition_task, NumericAnswerReward(),
                                "two-digit additions; reward 1 for the right number"),
        "code": ExampleTask("code", code_task, CodeTestsReward(SandboxLimits(timeout_s=2.0), max_workers=4),
                            "small Python functions checked by tests in the sandbox"),
    }


METHOD_HELP = "grpo, sdpo, mix:LAMBDA, routing, pass_rate, entropy:BETA"


def method_config(name: str, **overrides):
    """The ``SDPOConfig`` of a method name, with ``overrides`` applied (ValueError naming it if unknown).

    ``grpo``: ``SDPOConfig(enabled=False)`` (plain GRPO on the rewards); ``sdpo``: the reference's
    defaults; ``mix:LAMBDA``: per-token LAMBDA GRPO + (1 - LAMBDA) SDPO; ``routing``: SRPO sample
    routing with entropy weights; ``pass_rate``: SC-SDPO; ``entropy:BETA``: SDPO with
    entropy-weighted targets."""
    from .trainers.rich import SDPOConfig

    base, _, arg = name.partition(":")
    if arg:
        try:
            float(arg)
        except ValueError:
            raise ValueError(f"{name!r}: expected a number after ':'") from None
    if base == "grpo" and not arg:
        settings = dict(enabled=False)
    elif base == "sdpo" and not arg:
        settings = {}
    elif base == "mix":
        settings = dict(grpo_mix=float(arg or 0.5))
    elif base == "routing" and not arg:
        settings = dict(sample_routing=True)
    elif base == "pass_rate" and not arg:
        settings = dict(pass_rate_weighting=True)
    elif base == "entropy":
        settings = dict(entropy_weight_beta=float(arg or 1.0))
    else:
        raise ValueError(f"{name!r} is unknown; use {METHOD_HELP}")
    return SDPOConfig(**settings, **overrides)


class _ExampleParser(argparse.ArgumentParser):
    """``--config FILE.yaml``: its keys (``max_steps`` or ``max-steps``) are defaults, flags given too win."""

    def parse_known_args(self, args=None, namespace=None):
        import sys

        argv = list(sys.argv[1:] if args is None else args)
        path = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--config"), None)
        path = path or next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
        if path:
            import yaml

            try:
                data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
            except (OSError, yaml.YAMLError) as err:
                self.error(f"--config {path}: {err}")
            if not isinstance(data, dict):
                self.error(f"--config {path}: expected a mapping of option names to values")
            dests = {a.dest for a in self._actions}
            data = {str(k).replace("-", "_"): v for k, v in data.items()}
            unknown = sorted(set(data) - dests)
            if unknown:
                self.error(f"--config {path}: unknown option(s) {', '.join(unknown)}")
            self.set_defaults(**data)
        return super().parse_known_args(argv, namespace)


def example_parser(task: str, description: str, **defaults) -> argparse.ArgumentParser:
    p = _ExampleParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", default=None, help="YAML file of these options (e.g. configs/rich.yaml; flags win)")
    p.add_argument("--model", default="smollm2-135m", help="model id/path, 'smollm2-135m' (embedded) or 'tiny-random'")
    p.add_argument("--max-steps", type=int, default=defaults.get("max_steps", 20), help="optimizer steps")
    p.add_argument("--num-generations", type=int, default=4, help="rollouts per prompt")
    p.add_argument("--prompts-per-step", type=int, default=2, help="prompts per optimizer step")
    p.add_argument("--learning-rate", type=float, default=defaults.get("learning_rate", 1e-5), help="learning rate")
    p.add_argument("--max-completion-length", type=int, default=defaults.get("max_completion_length", 16),
                   help="new tokens per rollout")
    p.add_argument("--train-size", type=int, default=defaults.get("train_size", 64), help="training problems")
    p.add_argument("--eval-size", type=int, default=defaults.get("eval_size", 50), help="held-out problems")
    p.add_argument("--method", default="sdpo", help=f"{METHOD_HELP} (sdpo: the reference's SDPO; routing: "
                                                    "GRPO on successful rollouts, SDPO on failed ones)")
    p.add_argument("--alpha", type=float, default=0.5, help="generalized JSD weight (0: forward KL, 1: reverse KL)")
    p.add_argument("--distillation-topk", type=int, default=100, help="top-k tokens of the distillation (with a tail)")
    p.add_argument("--teacher-mode", default="ema", choices=["ema", "live", "frozen", "copy", "fixed"],
                   help="ema (default), live / copy (the current student), frozen / fixed (the initial model)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature of the rollouts")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--output-dir", default=f"runs/example-{task}", help="where the run is written")
    p.add_argument("--no-eval", action="store_true", help="skip the before/after held-out evaluation")
    return p


def greedy_answers(model, tokenizer, rows, *, max_new_tokens: int, batch_size: int = 16, desc: str = "eval"):
    import torch

    from .progress import progress_bar
    from .trainers.online import generate

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    texts = []
    try:
        with torch.no_grad():
            for start in progress_bar(range(0, len(rows), batch_size), desc=desc, leave=False, unit="batch"):
                batch = rows[start : start + batch_size]
                contexts = [
                    list(tokenizer.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=True,
                                                       return_dict=True)["input_ids"])
                    for r in batch
                ]
                _, out = generate(model, tokenizer, contexts, max_new_tokens=max_new_tokens, temperature=0.0,
                                  device=device)
                texts.extend(out)
    finally:
        model.train(was_training)
    return texts


def score_answers(task: ExampleTask, rows, answers) -> list[dict]:
    columns = {k: [r[k] for r in rows] for k in rows[0] if k != "prompt"}
    return task.reward(prompts=[r["prompt"] for r in rows], completions=answers, **columns)


def run_example(task_name: str, args: argparse.Namespace) -> dict:
    """Evaluate, train with SDPO, evaluate again; returns (and writes) a summary."""
    import sys

    from . import threads
    from .progress import filter_library_warnings, quiet_library_output

    choice = threads.configure()  # before torch loads, as the sdpo command does (see sdpo.threads)
    if choice.source != "the calling program":
        print(choice.line(), file=sys.stderr, flush=True)
    quiet_library_output()
    filter_library_warnings()
    from datasets import Dataset
    from trl import GRPOConfig

    from .models import load_model
    from .trainers.rich import SDPOConfig, SDPOTrainer

    task = _tasks()[task_name]
    try:
        sdpo_config = method_config(getattr(args, "method", "sdpo"), alpha=args.alpha,
                                    distillation_topk=args.distillation_topk, teacher_mode=args.teacher_mode)
    except ValueError as err:
        raise SystemExit(f"error: --method {err}") from None
    train_rows, held_out = task.build(args.train_size, args.eval_size, args.seed)
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    print(f"== task: {task.description}; {len(train_rows)} training prompts, {len(held_out)} held out")
    print(f"== loading {args.model}")
    model, tokenizer = load_model(args.model, dtype="float32", device="cuda" if _cuda() else "cpu", seed=args.seed)

    def evaluate(tag):
        answers = greedy_answers(model, tokenizer, held_out, max_new_tokens=args.max_completion_length, desc=tag)
        scores = score_answers(task, held_out, answers)
        acc = sum(s["score"] for s in scores) / len(scores)
        return acc, answers, scores

    before = evaluate("held-out before") if not args.no_eval else None
    if before:
        print(f"== held-out score before training: {before[0]:.3f}")

    grpo = GRPOConfig(
        output_dir=str(out_dir), max_steps=args.max_steps, learning_rate=args.learning_rate,
        per_device_train_batch_size=args.num_generations * args.prompts_per_step,
        num_generations=args.num_generations, max_completion_length=args.max_completion_length,
        temperature=args.temperature, logging_steps=1, save_strategy="no", report_to=[], seed=args.seed,
        lr_scheduler_type="constant",  # bf16 left unset: bf16 on a GPU that supports it, fp32 on CPU
    )
    trainer = SDPOTrainer(model=model, args=grpo, sdpo_config=sdpo_config, processing_class=tokenizer,
                          reward_funcs=[task.reward], train_dataset=Dataset.from_list(train_rows))
    start = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - start
    logs = [h for h in trainer.state.log_history if "loss" in h]
    after = evaluate("held-out after") if not args.no_eval else None
    summary = {
        "task": task_name, "model": args.model, "method": getattr(args, "method", "sdpo"), "max_steps": args.max_steps,
        "num_generations": args.num_generations, "prompts_per_step": args.prompts_per_step,
        "learning_rate": args.learning_rate, "train_seconds": round(train_seconds, 1),
        "train_reward_first": logs[0].get("self_distillation/reward_mean") if logs else None,
        "train_reward_last": logs[-1].get("self_distillation/reward_mean") if logs else None,
        "reprompt_fraction_mean": (sum(h.get("self_distillation/reprompt_sample_fraction", 0) for h in logs)
                                   / max(1, len(logs))),
        "held_out_before": before[0] if before else None,
        "held_out_after": after[0] if after else None,
        "eval_size": len(held_out),
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    if before and after:
        changed = [(r, a0, a1, s1) for r, a0, a1, s1 in zip(held_out, before[1], after[1], after[2]) if a0 != a1]
        with open(out_dir / "answers.jsonl", "w") as f:
            for r, a0, a1, s0, s1 in zip(held_out, before[1], after[1], before[2], after[2]):
                f.write(json.dumps({"prompt": r["prompt"][-1]["content"], "before": a0, "after": a1,
                                    "score_before": s0["score"], "score_after": s1["score"]}) + "\n")
        print(f"\n== held-out score: {before[0]:.3f} -> {after[0]:.3f} "
              f"({len(held_out)} prompts, {args.max_steps} steps, {train_seconds:.0f} s)")
        print(f"== {len(changed)} of {len(held_out)} greedy answers changed" + ("; a few:" if changed else ""))
        for r, a0, a1, s1 in changed[:3]:
            print(f"   {r['prompt'][-1]['content'][:70]!r}\n     before: {a0.strip()[:80]!r}\n     after:  {a1.strip()[:80]!r}")
        print(f"== all answers: {out_dir / 'answers.jsonl'}")
        from .judges.stats import format_verdict, verdict

        ok0, ok1 = [x["score"] >= 1.0 for x in before[2]], [x["score"] >= 1.0 for x in after[2]]
        gained = sum(1 for a, b in zip(ok0, ok1) if not a and b)
        lost = sum(1 for a, b in zip(ok0, ok1) if a and not b)
        v = verdict(gained, lost, len(ok0) - gained - lost)
        summary["verdict"] = {k: v[k] for k in ("verdict", "n", "wins", "losses", "ties", "p_sign")}
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        print("== " + format_verdict(v, what="trained vs initial, held-out problems solved (W: newly solved, "
                                         "L: newly failed; exact McNemar)"))
    print(f"== summary: {out_dir / 'summary.json'}")
    return summary


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
