"""``sdpo spo <step>``: semiparametric preference optimization.

    sdpo spo synthetic                       # the paper's synthetic design (CPU, minutes)
    sdpo spo synthetic --design ours         # our tabular exact-answer design (CPU, ~30 s)
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

DESIGNS = ("reference", "ours")


@dataclass
class SyntheticArguments:
    design: str = field(default="reference", metadata={
        "help": "'reference': the paper's design (causalml/spo synthetic/: 20-dim Gaussian contexts, 10 actions, "
                "uniform reference, reward nu*log(pi*/pi_ref) of a teacher MLP, its training procedures); "
                "'ours': our tabular design trained with sdpo's SPO objectives"})
    output_dir: str = field(default="", metadata={"help": "default runs/spo-synthetic-<design>"})
    seeds: str = field(default="", metadata={"help": "comma-separated seeds (default: reference 0,1,2; ours 0-4)"})
    shifts: str = field(default="", metadata={"help": "link shifts s (default: reference 0,1,1.5; ours 0,1,2,3)"})
    n: str = field(default="", metadata={"help": "preference pairs per run; reference: a grid (default "
                                                 "500,1000,2000), ours: one value (default 2000)"})
    temperature: str = field(default="", metadata={"help": "link temperature tau (default: reference grid 0.25; ours 1)"})
    methods: str = field(default="dpo,pspo,ospo,rspo")
    kl_budget: float = field(default=0.0, metadata={"help": "KL at which rewards are compared "
                                                            "(0: the design's default, reference 0.2, ours 0.25)"})
    batch_size: int = field(default=128)
    learning_rate: float = field(default=0.0, metadata={"help": "0: the design's default (reference Adam 2e-3, ours 0.05)"})
    # the reference design
    d: int = field(default=20, metadata={"help": "reference: context dimension"})
    k: int = field(default=10, metadata={"help": "reference: actions"})
    nu: float = field(default=10.0, metadata={"help": "reference: reward scale nu"})
    m: int = field(default=2000, metadata={"help": "reference: evaluation contexts"})
    hidden: str = field(default="32,32", metadata={"help": "reference: MLP hidden sizes (teacher and policy)"})
    epochs: int = field(default=100, metadata={"help": "reference: epochs (DPO, RSPO, OSPO)"})
    pspo_outer: int = field(default=4, metadata={"help": "reference: PSPO isotonic refits"})
    pspo_inner: int = field(default=2, metadata={"help": "reference: PSPO epochs per refit"})
    pspo_warm: int = field(default=3, metadata={"help": "reference: PSPO DPO warm-start epochs"})
    iso_expand: str = field(default="points", metadata={"help": "reference: PSPO write-back, points (as the reference) or knots"})
    ospo_mem: int = field(default=0, metadata={"help": "reference: OSPO memory (0: the whole data set)"})
    ospo_bandwidth: float = field(default=1.0, metadata={"help": "reference: OSPO bandwidth (times std n^-1/5)"})
    ospo_warm: int = field(default=2, metadata={"help": "reference: OSPO DPO warm-start epochs"})
    ci_z: float = field(default=1.64, metadata={"help": "reference: interval half-width in standard errors"})
    # our design
    contexts: int = field(default=20, metadata={"help": "ours: contexts"})
    actions: int = field(default=6, metadata={"help": "ours: actions per context"})
    steps: int = field(default=400, metadata={"help": "ours: Adam steps per method"})
    refit_every: int = field(default=20, metadata={"help": "ours: PSPO isotonic refit interval"})
    memory_size: int = field(default=1024, metadata={"help": "ours: OSPO (t, z) memory"})
    blend: float = field(default=0.95)
    smoothing: float = field(default=0.0)
    bandwidth: float = field(default=0.5, metadata={"help": "ours: OSPO bandwidth (times the memory's std)"})
    bandwidth_rule: str = field(default="std")
    pspo_fit: str = field(default="dataset")
    pspo_link: str = field(default="soft")
    rspo_pairs: str = field(default="all")


SyntheticArguments.NUMBER_RULES = {'kl_budget': '>=0', 'batch_size': '>=1', 'learning_rate': '>=0', 'd': '>=1', 'k': '>=2', 'nu': '>0', 'm': '>=1', 'epochs': '>=1', 'pspo_outer': '>=1', 'pspo_inner': '>=1', 'pspo_warm': '>=0', 'ospo_mem': '>=0', 'ospo_bandwidth': '>0', 'ospo_warm': '>=0', 'ci_z': '>0', 'contexts': '>=1', 'actions': '>=2', 'steps': '>=1', 'refit_every': '>=1', 'memory_size': '>=1', 'blend': '[0,1]', 'smoothing': '>=0', 'bandwidth': '>0'}  # checked by sdpo.cli.check_number_rules
SyntheticArguments.OUTPUT_DIRS = ('output_dir',)


def _ints(text: str, name: str, minimum: int | None = None) -> list[int]:
    values = P._floats(text, name)
    if any(v != int(v) for v in values):
        raise ValueError(f"--{name}: expected integers, got {text!r}")
    if minimum is not None and any(v < minimum for v in values):
        raise ValueError(f"--{name}: every value must be >= {minimum}, got {text!r}")
    return [int(v) for v in values]


def run_synthetic(a: SyntheticArguments) -> int:
    from sdpo.spo import synthetic as syn

    if a.design not in DESIGNS:
        raise ValueError(f"--design must be one of {', '.join(DESIGNS)}, got {a.design!r}")
    methods = tuple(m.strip() for m in a.methods.split(",") if m.strip())
    out = Path(a.output_dir or f"runs/spo-synthetic-{a.design}")
    if a.design == "reference":
        if a.iso_expand not in ("points", "knots"):
            raise ValueError(f"--iso_expand must be points or knots, got {a.iso_expand!r}")
        d = syn.ReferenceDesignConfig()
        cfg = syn.ReferenceDesignConfig(
            seeds=tuple(_ints(a.seeds, "seeds", 0)) if a.seeds else d.seeds,
            n_grid=tuple(_ints(a.n, "n", 1)) if a.n else d.n_grid,
            s_grid=tuple(P._floats(a.shifts, "shifts")) if a.shifts else d.s_grid,
            tau_grid=tuple(P._floats(a.temperature, "temperature")) if a.temperature else d.tau_grid,
            methods=methods, d=a.d, k=a.k, nu=a.nu, m=a.m, hidden=tuple(_ints(a.hidden, "hidden", 1)), epochs=a.epochs,
            batch_size=a.batch_size, lr=a.learning_rate or d.lr, kappa=a.kl_budget or d.kappa,
            pspo_outer=a.pspo_outer, pspo_inner=a.pspo_inner, pspo_warm=a.pspo_warm, iso_expand=a.iso_expand,
            ospo_mem=a.ospo_mem, ospo_bandwidth=a.ospo_bandwidth, ospo_warm=a.ospo_warm, ci_z=a.ci_z)
        result = syn.run_reference(cfg)
        syn.write_reference_outputs(result, out)
        print(syn.format_reference_table(result["summary"], cfg))
        print(f"== {out}/summary.csv, results.csv, reward_vs_s.png")
        return 0
    n = _ints(a.n, "n", 1) if a.n else [2000]
    tau = P._floats(a.temperature, "temperature") if a.temperature else [1.0]
    if len(n) != 1 or len(tau) != 1:
        raise ValueError("--design ours takes one value of --n and of --temperature")
    cfg = syn.SyntheticConfig(
        contexts=a.contexts, actions=a.actions, n_pairs=n[0], steps=a.steps, batch_size=a.batch_size,
        learning_rate=a.learning_rate or 0.05, shifts=tuple(P._floats(a.shifts or "0,1,2,3", "shifts")),
        temperature=tau[0], seeds=tuple(_ints(a.seeds, "seeds", 0)) if a.seeds else 5, methods=methods,
        kl_budget=a.kl_budget or 0.25, refit_every=a.refit_every, memory_size=a.memory_size, blend=a.blend,
        smoothing=a.smoothing, bandwidth=a.bandwidth, bandwidth_rule=a.bandwidth_rule, pspo_fit=a.pspo_fit,
        pspo_link=a.pspo_link, rspo_pairs=a.rspo_pairs,
    )
    result = syn.run(cfg)
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
