"""Which method learns? GRPO, SDPO and their hybrids on the same task, rollouts and seeds.

For every seed the base model's greedy held-out accuracy is measured once; then each
method trains a fresh copy of the base model with :class:`sdpo.SDPOTrainer` (the same
prompts in the same order, the same rollouts per step, the same learning rate) and is
evaluated again, at intermediate steps too (``--curve-every``). Paired tests (exact
McNemar: a two-sided binomial test on the problems whose correctness changed) compare
each method with the base model and with GRPO, per seed and pooled over seeds.

Methods (``--methods``, comma-separated):
  grpo            SDPOConfig(enabled=False): plain GRPO on the rewards
  sdpo            SDPOConfig(): plain SDPO (the reference's defaults)
  mix:LAMBDA      SDPOConfig(grpo_mix=LAMBDA): per-token LAMBDA GRPO + (1 - LAMBDA) SDPO
  routing         SDPOConfig(sample_routing=True): SRPO routing with entropy weights
  pass_rate       SDPOConfig(pass_rate_weighting=True): SC-SDPO
  entropy:BETA    SDPOConfig(entropy_weight_beta=BETA): SDPO with entropy-weighted targets
  NAME@bf16       any of these trained under bf16 autocast (fp32 master weights); paired with NAME

Prints one JSON line (and writes it to ``--out-dir/learning.json``) plus a PNG of
held-out accuracy against the number of rollouts seen (``learning.png``).

    python benchmarks/learning.py                                  # the full grid (hours on CPU)
    python benchmarks/learning.py --methods grpo,routing --seeds 0 --steps 20 --eval-size 100
    python benchmarks/learning.py --model tiny-random --methods grpo,routing --seeds 0 \\
        --steps 2 --eval-size 4 --curve-every 1                   # smoke test
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import sys
import time
from pathlib import Path

def method_config(name: str):
    """The SDPOConfig of a method name (one clear line on a bad name); see sdpo.tasks.method_config.
    A ``@bf16`` suffix (``grpo@bf16``) trains the same method under bf16 autocast (``GRPOConfig(bf16=True)``)."""
    from sdpo.tasks import method_config as config_of

    try:
        return config_of(name.removesuffix("@bf16"))
    except ValueError as exc:
        raise SystemExit(f"learning.py: error: --methods {exc}") from None


def mcnemar_p(a: list[bool], b: list[bool]) -> float:
    """Exact two-sided McNemar p-value for paired correctness vectors (a sign test on the changes)."""
    from sdpo.judges.stats import sign_test_p

    if len(a) != len(b):
        raise ValueError("paired vectors differ in length")
    up = sum(1 for x, y in zip(a, b) if not x and y)
    down = sum(1 for x, y in zip(a, b) if x and not y)
    return sign_test_p(up, down)


def paired(a: list[bool], b: list[bool]) -> dict:
    """b relative to a: accuracy difference, problems gained and lost, exact McNemar p."""
    return {
        "delta": (sum(b) - sum(a)) / max(1, len(a)),
        "gained": sum(1 for x, y in zip(a, b) if not x and y),
        "lost": sum(1 for x, y in zip(a, b) if x and not y),
        "p": mcnemar_p(a, b),
    }


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", help="model alias / path ('tiny-random' for tests)")
    p.add_argument("--task", default="addition", choices=["addition", "code"], help="task of sdpo.tasks")
    p.add_argument("--methods", default="grpo,sdpo,mix:0.5,mix:0.9,routing,pass_rate", help="grpo, sdpo, mix:LAMBDA, routing, pass_rate, entropy:BETA")
    p.add_argument("--seeds", default="0,1", help="comma-separated seeds")
    p.add_argument("--steps", type=int, default=60, help="optimizer steps per method")
    p.add_argument("--num-generations", type=int, default=4, help="rollouts per prompt")
    p.add_argument("--prompts-per-step", type=int, default=2, help="prompts per optimizer step")
    p.add_argument("--learning-rate", type=float, default=1e-5)
    p.add_argument("--max-completion-length", type=int, default=12, help="new tokens per rollout and answer")
    p.add_argument("--temperature", type=float, default=1.0, help="rollout sampling temperature")
    p.add_argument("--train-size", type=int, default=256, help="training problems")
    p.add_argument("--eval-size", type=int, default=400, help="held-out problems (code: at most what the task has)")
    p.add_argument("--curve-every", type=int, default=0, help="also evaluate every N steps (0: only at the end)")
    p.add_argument("--curve-eval-size", type=int, default=0,
                   help="held-out problems for the intermediate points (0: all of --eval-size)")
    p.add_argument("--out-dir", default="runs/bench-learning", help="where learning.json / learning.png go")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    args = p.parse_args(argv)
    args.method_list = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not args.method_list:
        p.error("--methods is empty")
    for m in args.method_list:
        method_config(m)
    try:
        args.seed_list = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        p.error(f"--seeds {args.seeds!r}: expected comma-separated integers")
    for name in ("steps", "num_generations", "prompts_per_step", "eval_size", "train_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def run(args) -> dict:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig

    from sdpo.models import load_model
    from sdpo.tasks import _tasks, greedy_answers, score_answers
    from sdpo.trainers.rich import SDPOTrainer

    if args.threads:
        torch.set_num_threads(args.threads)
    task = _tasks()[args.task]
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    per_step = args.num_generations * args.prompts_per_step
    results: dict = {"seeds": {}}
    started = time.perf_counter()

    def correct(model, tokenizer, rows, tag):
        answers = greedy_answers(model, tokenizer, rows, max_new_tokens=args.max_completion_length, desc=tag)
        return [float(s["score"]) >= 1.0 for s in score_answers(task, rows, answers)], answers

    for seed in args.seed_list:
        train_rows, held_out = task.build(args.train_size, args.eval_size, seed)
        curve_rows = held_out[: args.curve_eval_size] if args.curve_eval_size else held_out
        base, tokenizer = load_model(args.model, dtype="float32", device="cpu", seed=seed)
        base_correct, _ = correct(base, tokenizer, held_out, f"seed {seed} base")
        seed_out = {"n_held_out": len(held_out), "base_accuracy": sum(base_correct) / len(held_out),
                    "methods": {}}
        base_curve = sum(base_correct[: len(curve_rows)]) / len(curve_rows)
        vectors = {}
        for method in args.method_list:
            model = copy.deepcopy(base)
            curve = [{"step": 0, "rollouts": 0, "accuracy": base_curve}]

            class Curve(TrainerCallback):
                def on_step_end(self, _args, state, control, **kw):
                    step = state.global_step
                    if args.curve_every and step % args.curve_every == 0 and step < args.steps:
                        ok, _ = correct(model, tokenizer, curve_rows, f"{method} step {step}")
                        curve.append({"step": step, "rollouts": step * per_step, "accuracy": sum(ok) / len(ok)})

            grpo = GRPOConfig(
                output_dir=str(out_dir / f"seed{seed}-{method.replace(':', '_')}"), max_steps=args.steps,
                learning_rate=args.learning_rate, per_device_train_batch_size=per_step,
                num_generations=args.num_generations, max_completion_length=args.max_completion_length,
                temperature=args.temperature, logging_steps=1, save_strategy="no", report_to=[], seed=seed,
                lr_scheduler_type="constant", use_cpu=True, bf16=method.endswith("@bf16"),
            )
            trainer = SDPOTrainer(model=model, args=grpo, sdpo_config=method_config(method),
                                  processing_class=tokenizer, reward_funcs=[task.reward],
                                  train_dataset=Dataset.from_list(train_rows), callbacks=[Curve()])
            t0 = time.perf_counter()
            trainer.train()
            seconds = time.perf_counter() - t0
            ok, answers = correct(model, tokenizer, held_out, f"{method} final")
            vectors[method] = ok
            curve.append({"step": args.steps, "rollouts": args.steps * per_step,
                          "accuracy": sum(ok[: len(curve_rows)]) / len(curve_rows)})
            logs = [h for h in trainer.state.log_history if "loss" in h]
            echo = [h["self_distillation/teacher_context_echo_rate"] for h in logs
                    if "self_distillation/teacher_context_echo_rate" in h]
            seed_out["methods"][method] = {
                "accuracy": sum(ok) / len(ok),
                "vs_base": paired(base_correct, ok),
                "curve": curve,
                "train_seconds": round(seconds, 1),
                "train_reward_mean": (sum(h.get("self_distillation/reward_mean", 0.0) for h in logs)
                                      / max(1, len(logs))),
                "echo_rate_first_half": sum(echo[: len(echo) // 2]) / max(1, len(echo) // 2) if echo else None,
                "echo_rate_second_half": (sum(echo[len(echo) // 2 :]) / max(1, len(echo) - len(echo) // 2)
                                          if echo else None),
                "sample_answers": answers[:5],
                "correct": [int(x) for x in ok],  # per held-out problem, for paired comparisons across runs
            }
            print(f"seed {seed} {method}: {seed_out['base_accuracy']:.3f} -> {sum(ok) / len(ok):.3f} "
                  f"({seconds:.0f} s)", file=sys.stderr, flush=True)
            del trainer, model
        if "grpo" in vectors:
            for method, ok in vectors.items():
                if method != "grpo":
                    seed_out["methods"][method]["vs_grpo"] = paired(vectors["grpo"], ok)
        for method, ok in vectors.items():
            if method.endswith("@bf16") and method.removesuffix("@bf16") in vectors:
                seed_out["methods"][method]["vs_fp32"] = paired(vectors[method.removesuffix("@bf16")], ok)
        seed_out["_vectors"] = {"base": base_correct, **vectors}
        results["seeds"][str(seed)] = seed_out

    # pooled over seeds (paired per problem and seed)
    pooled = {}
    for method in args.method_list:
        base_all, m_all, g_all = [], [], []
        for s in results["seeds"].values():
            base_all += s["_vectors"]["base"]
            m_all += s["_vectors"][method]
            g_all += s["_vectors"].get("grpo", [])
        entry = {"accuracy": sum(m_all) / len(m_all), "base_accuracy": sum(base_all) / len(base_all),
                 "vs_base": paired(base_all, m_all)}
        if g_all and method != "grpo":
            entry["vs_grpo"] = paired(g_all, m_all)
        fp32 = method.removesuffix("@bf16")
        if method.endswith("@bf16") and fp32 in args.method_list:
            entry["vs_fp32"] = paired([x for s in results["seeds"].values() for x in s["_vectors"][fp32]], m_all)
        pooled[method] = entry
    for s in results["seeds"].values():
        s.pop("_vectors")
    results.update({
        "benchmark": "learning", "task": args.task, "model": args.model, "methods": args.method_list,
        "seeds": results["seeds"], "pooled": pooled, "steps": args.steps, "rollouts_per_step": per_step,
        "num_generations": args.num_generations, "prompts_per_step": args.prompts_per_step,
        "learning_rate": args.learning_rate, "max_completion_length": args.max_completion_length,
        "eval_size": args.eval_size, "curve_every": args.curve_every,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "torch_threads": torch.get_num_threads()},
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "command": "python benchmarks/learning.py " + " ".join(sys.argv[1:]),
    })
    (out_dir / "learning.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    results["png"] = plot(results, out_dir / "learning.png")
    return results


def plot(results: dict, path: Path) -> str | None:
    """Held-out accuracy against rollouts seen, one line per method (mean over seeds)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in results["methods"]:
        points: dict[int, list[float]] = {}
        for s in results["seeds"].values():
            for pt in s["methods"][method]["curve"]:
                points.setdefault(pt["rollouts"], []).append(pt["accuracy"])
        xs = sorted(points)
        ax.plot(xs, [sum(points[x]) / len(points[x]) for x in xs], marker="o", label=method)
    ax.set_xlabel("rollouts seen")
    ax.set_ylabel("held-out accuracy (greedy)")
    ax.set_title(f"{results['task']}, {results['model']}, seeds {', '.join(results['seeds'])}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def main(argv=None) -> int:
    results = run(parse_args(argv))
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
