"""``sdpo spo <step>``: semiparametric preference optimization.

    sdpo spo synthetic                       # exact-answer benchmark (CPU, ~30 s)
    sdpo spo generate --num_samples 200 --model_id Qwen/Qwen3-0.6B --output data/preferences/prefs.jsonl
    sdpo spo train --pref_path data/preferences/prefs.jsonl --method pspo --output_dir outputs/pspo
    sdpo spo evaluate --model_id outputs/pspo/pspo_final --output outputs/eval/pspo.csv
    sdpo spo grid --seeds 123,456 --link_shifts 0,1,2 --methods dpo,pspo,ospo,rspo --gpus 0,1
    sdpo spo analyze --results_dir outputs/grid/eval
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sdpo.cli import UsageError
from sdpo.spo import pipeline as P


@dataclass
class SyntheticArguments:
    output_dir: str = field(default="runs/spo-synthetic")
    seeds: int = field(default=5, metadata={"help": "independent problems per shift"})
    shifts: str = field(default="0,1,2,3", metadata={"help": "link shifts s"})
    methods: str = field(default="dpo,pspo,ospo,rspo")
    contexts: int = field(default=20)
    actions: int = field(default=6)
    n_pairs: int = field(default=2000, metadata={"help": "preference pairs per problem"})
    steps: int = field(default=400, metadata={"help": "Adam steps per method"})
    batch_size: int = field(default=128)
    learning_rate: float = field(default=0.05)
    temperature: float = field(default=1.0, metadata={"help": "link temperature tau"})
    kl_budget: float = field(default=0.25, metadata={"help": "KL at which rewards are compared"})
    refit_every: int = field(default=20, metadata={"help": "PSPO isotonic refit interval"})
    memory_size: int = field(default=1024, metadata={"help": "PSPO/OSPO (t, z) memory"})
    blend: float = field(default=0.95)
    smoothing: float = field(default=0.0)
    bandwidth: float | None = field(default=None)


def run_synthetic(a: SyntheticArguments) -> int:
    from sdpo.spo import synthetic as syn

    cfg = syn.SyntheticConfig(
        contexts=a.contexts, actions=a.actions, n_pairs=a.n_pairs, steps=a.steps, batch_size=a.batch_size,
        learning_rate=a.learning_rate, shifts=tuple(P._floats(a.shifts, "shifts")), temperature=a.temperature,
        seeds=a.seeds, methods=tuple(m.strip() for m in a.methods.split(",") if m.strip()), kl_budget=a.kl_budget,
        refit_every=a.refit_every, memory_size=a.memory_size, blend=a.blend, smoothing=a.smoothing,
        bandwidth=a.bandwidth,
    )
    result = syn.run(cfg)
    out = Path(a.output_dir)
    syn.write_outputs(result, out)
    print(syn.format_table(result["summary"], cfg.kl_budget))
    print(f"== {out}/summary.csv, curves.csv, pareto.png")
    return 0


def _wrap(func):
    def run(args):
        try:
            result = func(args)
        except ValueError as exc:  # bad input: one clear line, exit status 2
            raise UsageError(str(exc)) from None
        return result if isinstance(result, int) else 0

    return run


SUBCOMMANDS = {
    "synthetic": (SyntheticArguments, _wrap(run_synthetic), "exact-answer benchmark: reward at a KL budget per method and link shift"),
    "generate": (P.GenerateArguments, _wrap(P.generate_preferences), "sample pairs from the reference, score them, draw preferences through the link"),
    "train": (P.TrainArguments, _wrap(P.train_policy), "train a policy on preference pairs with dpo, pspo, ospo or rspo"),
    "evaluate": (P.EvaluateArguments, _wrap(P.evaluate_policy), "β scan: reward and KL of per-token mixtures of policy and reference"),
    "grid": (P.GridArguments, _wrap(P.run_grid), "every (seed, shift, n, method) cell as worker processes; resumable"),
    "analyze": (P.AnalyzeArguments, _wrap(P.analyze_results), "Pareto plots and reward at a KL budget vs shift, paired vs DPO"),
}
