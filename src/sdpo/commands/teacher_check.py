"""``sdpo teacher-check``: can this model teach itself? Answered before any training.

Rich feedback (a task with checkable answers): greedy accuracy under the teacher context
(a successful peer and/or the feedback, as SDPOTrainer builds it) vs the plain prompt;
the teacher - student log-prob gap on right vs wrong sampled rollouts; how often the
teacher copies phrases of its context. User interactions: selectivity (relevant vs
unrelated follow-ups, as ``signal-analysis``) and whether the teacher shown a follow-up
prefers a response that satisfies it (pairs from the persona rules). Prints a verdict
with the numbers and a recommendation (SDPO / hybrid / GRPO) and writes the JSON to
``--out`` (default ``runs/teacher-check/<model>.json``).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from sdpo.cli import UsageError

TASKS = ("addition", "code")


@dataclass
class TeacherCheckArguments:
    model: str = field(default="smollm2-135m", metadata={"help": "alias, .gguf file, local directory or hub id"})
    task: str = field(default="addition", metadata={"help": f"rich-feedback task: {', '.join(TASKS)}, or none"})
    n_problems: int = field(default=48, metadata={"help": "problems of the task (code: at most what it has)"})
    num_generations: int = field(default=4, metadata={"help": "sampled rollouts per problem (peers and gaps)"})
    max_new_tokens: int = field(default=12, metadata={"help": "new tokens per answer"})
    cases: str = field(default="analysis", metadata={
        "help": "signal-analysis cases (JSON/JSONL with unrelated_followup; 'analysis' = shipped set), or none"})
    n_cases: int = field(default=12, metadata={"help": "use the first N cases (0 = all)"})
    persona_pairs: bool = field(default=True, metadata={"help": "score the built-in persona-rule response pairs"})
    out: str | None = field(default=None, metadata={"help": "JSON output path"})
    seed: int = field(default=0, metadata={"help": "seed of the problems and the sampled rollouts"})
    batch_size: int = field(default=16, metadata={"help": "sequences per generation / scoring batch"})
    dtype: str = field(default="auto", metadata={"help": "auto, float32, bfloat16, float16"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, ..."})


TeacherCheckArguments.NUMBER_RULES = {'n_problems': '>=1', 'num_generations': '>=1', 'max_new_tokens': '>=1', 'n_cases': '>=1', 'batch_size': '>=1', 'seed': '>=0'}  # checked by sdpo.cli.check_number_rules
TeacherCheckArguments.OUTPUT_FILES = ('out',)


ARGUMENTS = TeacherCheckArguments


def _validate(args: TeacherCheckArguments):
    if args.task not in (*TASKS, "none"):
        raise UsageError(f"--task {args.task!r} is unknown; choose one of {', '.join(TASKS)} or none")
    for name in ("n_problems", "num_generations", "max_new_tokens", "batch_size"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name} must be >= 1")
    if args.num_generations < 2 and args.task != "none":
        raise UsageError("--num_generations must be >= 2 (a rollout's demonstration is a peer)")
    if args.n_cases < 0:
        raise UsageError("--n_cases must be >= 0")
    cases = []
    if args.cases != "none":
        from sdpo.analysis.signal_report import require_controls
        from sdpo.data.cases import CasesError, load_cases

        try:
            cases = load_cases(args.cases)
            if args.n_cases:
                cases = cases[: args.n_cases]
            require_controls(cases, args.cases)
        except CasesError as exc:
            raise UsageError(f"--cases: {exc}") from None
    if args.task == "none" and not cases and not args.persona_pairs:
        raise UsageError("nothing to check: --task none, --cases none and --persona_pairs false")
    return cases


def run(args: TeacherCheckArguments) -> int:
    cases = _validate(args)  # before any model is loaded
    from rich.console import Console

    from sdpo.analysis.teacher_check import PERSONA_PAIRS, rich_feedback_check, user_interaction_check, verdict
    from sdpo.models import load_model

    console = Console(highlight=False)
    started = time.perf_counter()
    console.print(f"teacher check: model {args.model}, task {args.task}, {len(cases)} follow-up cases")
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device, seed=args.seed)
    rich = user = None
    if args.task != "none":
        from sdpo.tasks import _tasks

        task = _tasks()[args.task]
        _, held_out = task.build(1, args.n_problems, args.seed)
        rich = rich_feedback_check(model, tokenizer, task, held_out, num_generations=args.num_generations,
                                   max_new_tokens=args.max_new_tokens, seed=args.seed, batch_size=args.batch_size)
    if cases or args.persona_pairs:
        user = user_interaction_check(model, tokenizer, cases, PERSONA_PAIRS if args.persona_pairs else [],
                                      batch_size=args.batch_size)
    result = verdict(rich, user)
    for line in result["lines"]:
        console.print(line)
    if "recommendation" in result:
        console.print(f"[bold]recommendation: {result['recommendation']}[/bold]")
    out = Path(args.out or Path("runs") / "teacher-check" / (re.sub(r"[^\w.-]+", "_", args.model) + ".json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "model": args.model, "task": args.task, "seed": args.seed, "rich_feedback": rich,
        "user_interactions": user, "verdict": result, "recommendation": result.get("recommendation"),
        "seconds": round(time.perf_counter() - started, 1),
    }
    out.write_text(json.dumps(payload, indent=1, default=str), encoding="utf-8")
    console.print(f"JSON: {out}")
    return 0
