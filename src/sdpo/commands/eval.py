"""``sdpo eval checkpoints``: win rate of each checkpoint against a baseline, judged pairwise.

    sdpo eval checkpoints --run_dir runs/demo --data_path data/demo/tldr/validation.jsonl

The run's own settings (its starting model as the baseline, persona, system prompt, answer
length) are read from the config it saved (``sdpo_online_config.json`` / ``sdpo_config.json``)
unless given here; the command says which it used and warns where a flag differs from
training. Defaults are safe on a CPU: the rule judge, and the embedded model where the run
names no model. The table shows n and the ties first; every rate comes with the number of
decisive pairs, a warning under 20, and one verdict line per checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sdpo.cli import UsageError


@dataclass
class EvalArguments:
    what: str = field(default="checkpoints", metadata={"help": "checkpoints (the first positional word)"})
    run_dir: str = field(default="", metadata={"help": "training run directory with checkpoint-<step>/"})
    data_path: str = field(default="", metadata={"help": "held-out prompts JSONL"})
    ckpts: str = field(default="3 6 9 12 15", metadata={"help": "steps to evaluate ('all' = every checkpoint)"})
    baseline: str | None = field(
        default=None, metadata={"help": "model every checkpoint is compared with; default the run's starting model "
                                        "(its saved config), else the embedded smollm2-135m"})
    judge: str = field(default="rule", metadata={"help": "rule (no model; a non-answer loses, then the persona's "
                                                         "rules), local, claude or openai"})
    judge_answer_check: bool = field(
        default=True, metadata={"help": "ours: a non-answer (apology/filler, loop, empty, off topic) loses before style "
                                        "is compared (rule judge: sdpo.degeneracy; model judges: told so); false = "
                                        "the reference's style-only judge"})
    judge_model: str | None = field(default=None, metadata={"help": "local: model (default smollm2-135m); API: "
                                                                    "model name"})
    judge_base_url: str | None = field(default=None, metadata={"help": "API base URL (openai)"})
    judge_concurrency: int = field(default=8, metadata={"help": "concurrent API requests"})
    judge_max_retries: int = field(
        default=6, metadata={"help": "API: retries of a request (429, 5xx, timeout, connection error, malformed "
                                     "body) before its verdict counts as failed"})
    judge_timeout: float = field(default=60.0, metadata={"help": "API: seconds per try"})
    judge_retry_backoff: float = field(
        default=0.5, metadata={"help": "API: first wait before a retry, in seconds (doubles per retry, at most 8)"})
    generation_backend: str = field(
        default="transformers", metadata={"help": "engine of the answers and the local judge: transformers, "
                                                  "ctranslate2 (CPU/CUDA, float32: the same greedy answers, faster), "
                                                  "ctranslate2-int8 (faster, answers drift), vllm (GPU); "
                                                  "sdpo.engines"})
    style: str | None = field(default=None, metadata={"help": "the user persona to judge for; default the run's "
                                                                 "(else concise_casual_beginner)"})
    eval_n: int = field(default=256, metadata={"help": "held-out prompts"})
    seed: int = field(default=0, metadata={"help": "prompt selection seed"})
    max_new_tokens: int | None = field(default=None, metadata={"help": "answer length limit; default the run's "
                                                                       "max_new_tokens (else 256)"})
    max_prompt_tokens: int = field(default=1024, metadata={"help": "context limit (oldest turns, then the start of "
                                                                   "the request are cut)"})
    system_prompt: str | None = field(
        default=None, metadata={"help": "system prompt of every answer: a preset (tldr: the TL;DR task's, with the "
                                        "prompts' 'TL;DR:' cue stripped, as in training; general: empty) or text; "
                                        "default the run's (else general)"})
    oracle: bool = field(default=False, metadata={"help": "add the baseline with the persona in its system prompt"})
    output_dir: str | None = field(default=None, metadata={"help": "default <run_dir>/eval"})


EvalArguments.NUMBER_RULES = {'judge_concurrency': '>=1', 'judge_max_retries': '>=0', 'judge_timeout': '>0', 'judge_retry_backoff': '>=0', 'eval_n': '>=1', 'seed': '>=0', 'max_new_tokens': '>=1|None', 'max_prompt_tokens': '>=1'}  # checked by sdpo.cli.check_number_rules
EvalArguments.OUTPUT_DIRS = ('output_dir',)


ARGUMENTS = EvalArguments
POSITIONAL = "what"


RUN_CONFIGS = ("sdpo_online_config.json", "sdpo_config.json")
# option of eval -> (key in the run's saved config, fallback when the run says nothing)
RUN_SETTINGS = {"baseline": ("model_name_or_path", "smollm2-135m"), "style": ("style", "concise_casual_beginner"),
                "system_prompt": ("system_prompt", "general"), "max_new_tokens": ("max_new_tokens", 256)}


def resolve_run_settings(args: EvalArguments, explicit: set[str] | None = None) -> list[str]:
    """Fill unset options from the run's saved config (then the fallbacks); returns the lines that say
    what was used, with a warning for every option given that differs from the run's."""
    import json

    saved, source = {}, None
    for name in RUN_CONFIGS:
        path = Path(args.run_dir) / name
        if path.is_file():
            try:
                saved, source = json.loads(path.read_text(encoding="utf-8")), path
            except ValueError as err:
                raise UsageError(f"{path}: not valid JSON ({err}); pass the settings as flags") from None
            break
    lines, used = [], []
    for option, (key, fallback) in RUN_SETTINGS.items():
        value, run_value = getattr(args, option), saved.get(key)
        if value is None:
            value = run_value if run_value is not None else fallback
            setattr(args, option, value)
            used.append(f"{option}={value}" + (" (run)" if run_value is not None else " (default)"))
        elif run_value is not None and value != run_value:
            lines.append(f"warning: --{option} {value} differs from the run's {key}={run_value} ({source})")
    lines.insert(0, "eval settings: " + ", ".join(used) + (f" - from {source}" if source else
                                                          " - no saved run config found"))
    return lines


def _judge(args: EvalArguments):
    from sdpo.judges import pairwise

    if args.judge == "rule":
        return pairwise.RuleJudge(args.style, answer_check=args.judge_answer_check)
    if args.judge == "local":
        from sdpo.models import ModelLoadError

        try:
            return pairwise.LocalJudge(args.style, model=args.judge_model or "smollm2-135m",
                                       answer_check=args.judge_answer_check, backend=args.generation_backend)
        except ModelLoadError as err:  # --baseline may name the same model: say which option failed
            raise ModelLoadError(f"--judge_model: {err}") from None
    if args.judge in ("claude", "openai"):
        from sdpo.feedback import simulators as sims

        cls = sims.ClaudeStyleUserSimulator if args.judge == "claude" else sims.OpenAICompatibleUserSimulator
        kwargs = dict(base_url=args.judge_base_url, max_concurrency=args.judge_concurrency, max_tokens=16,
                      max_retries=args.judge_max_retries, timeout=args.judge_timeout,
                      retry_backoff=args.judge_retry_backoff)
        if args.judge_model:
            kwargs["model"] = args.judge_model
        client = cls(args.style, **kwargs)
        client.outage_hint = "when it answers again, run the same command (the answered pairs are cached)"
        return pairwise.APIJudge(args.style, client=client, answer_check=args.judge_answer_check)
    raise UsageError(f"--judge must be rule, local, claude or openai, not {args.judge!r}")


def run(args: EvalArguments) -> int:
    from sdpo.eval.checkpoints import GenerationCache, evaluate, find_checkpoints, select_prompts, write_results
    from sdpo.feedback.personas import persona_description

    if args.what != "checkpoints":
        raise UsageError(f"unknown evaluation {args.what!r}; available: checkpoints")
    if not args.run_dir or not args.data_path:
        raise UsageError("--run_dir and --data_path are required")
    settings = resolve_run_settings(args) if Path(args.run_dir).is_dir() else []
    persona_description(args.style or "concise_casual_beginner")
    from sdpo.engines import check_backend

    try:
        check_backend(args.generation_backend)
    except ValueError as err:
        raise UsageError(str(err)) from None
    if args.judge_concurrency < 1 or args.judge_max_retries < 0:
        raise UsageError("--judge_concurrency must be >= 1 and --judge_max_retries >= 0")
    if not args.judge_timeout > 0 or args.judge_retry_backoff < 0:
        raise UsageError("--judge_timeout must be > 0 and --judge_retry_backoff >= 0 (seconds)")
    steps = None if args.ckpts.strip() == "all" else [int(s) for s in args.ckpts.replace(",", " ").split()]
    checkpoints = find_checkpoints(args.run_dir, steps)  # all input checked before any model loads
    prompts = select_prompts(args.data_path, args.eval_n, args.seed)
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    out = Path(args.output_dir or Path(args.run_dir) / "eval")
    if state.is_main_process:
        print(f"eval: {len(checkpoints)} checkpoint(s) {', '.join(n for n, _ in checkpoints)}"
              + (" and the oracle" if args.oracle else "") + f" vs {args.baseline} on {len(prompts)} prompts; "
              f"{args.judge} judge" + (f" {args.judge_model}" if args.judge_model else "") + f"; output {out}",
              flush=True)
        for line in settings:
            print(line, flush=True)
        if args.judge == "local":
            print(f"loading the judge model {args.judge_model or 'smollm2-135m'} (--judge_model)", flush=True)
    judge = _judge(args) if state.is_main_process else None  # API keys are checked here, before generation
    rows = evaluate(checkpoints, args.baseline, prompts, judge, GenerationCache(out / "generations"),
                    max_new_tokens=args.max_new_tokens, max_prompt_tokens=args.max_prompt_tokens,
                    oracle_style=args.style if args.oracle else None, state=state,
                    judgments_dir=out / "judgments", system_prompt=args.system_prompt,
                    backend=args.generation_backend)
    if rows is None:  # a helper process: its share of the generations is done
        return 0
    meta = {"baseline": args.baseline, "judge": args.judge, "judge_model": args.judge_model, "style": args.style,
            "eval_n": len(prompts), "seed": args.seed, "judge_stats": judge.stats.as_dict(),
            "generation_backend": args.generation_backend}
    if hasattr(judge, "client"):
        meta["judge_endpoint"] = judge.client.endpoint
    write_results(rows, out, meta)

    def pct(x: float) -> str:
        return "-" if x != x else f"{100 * x:.1f}"  # NaN: no decisive pair

    print(f"win rate vs {args.baseline}, {args.judge} judge, style {args.style}, {len(prompts)} prompts, both orders")
    print(f"{'model':34s} {'n':>4s} {'T':>4s} {'W':>4s} {'L':>4s} {'dec':>4s} {'win% of dec':>12s} {'95% Wilson':>11s} "
          f"{'±boot':>6s} {'unp':>4s} {'fail':>4s} {'non-ans':>8s}")
    from sdpo.judges.stats import MIN_VERDICT_N, format_verdict, verdict

    few = []
    for r in rows:
        ci = "-" if r["decisive"] == 0 else f"{pct(r['wilson95_low'])}-{pct(r['wilson95_high'])}"
        rate = "-" if r["decisive"] == 0 else f"{pct(r['win_rate'])} (n={r['decisive']})"
        nonans = f"{pct(r.get('nonanswer_rate', float('nan')))}%"
        print(f"{r['name'][:34]:34s} {r['n']:4d} {r['ties']:4d} {r['wins']:4d} {r['losses']:4d} {r['decisive']:4d} "
              f"{rate:>12s} {ci:>11s} {pct(r['se_bootstrap']):>6s} {r['unparsed']:4d} {r['failed']:4d} {nonans:>8s}")
        if r["decisive"] < MIN_VERDICT_N:
            few.append(r["name"])
    print(f"n: prompts; T/W/L: ties, wins, losses; dec: decisive pairs (W + L), the only pairs the rate and its "
          f"interval come from; non-ans: answers that are no answers (baseline: "
          f"{pct(rows[0].get('baseline_nonanswer_rate', float('nan'))) if rows else '-'}%)")
    if few:
        print(f"warning: fewer than {MIN_VERDICT_N} decisive pairs for {', '.join(few)}: the rate means little; "
              "evaluate more prompts (--eval_n)")
    for r in rows:
        v = verdict(r["wins"], r["losses"], r["ties"], degenerate_before=r.get("baseline_nonanswer_rate"),
                    degenerate_after=r.get("nonanswer_rate"))
        print(format_verdict(v, what=f"{r['name']} vs {args.baseline}"))
    st = judge.stats
    print(f"judge: {st.requests} requests, {st.cached} from the cache, {st.retries} retries, {st.failed} failed, "
          f"{st.unparsed} unparsed")
    if st.failed and hasattr(judge, "client"):
        print(f"{st.failed} verdicts failed (no reply from {judge.client.endpoint} after up to {judge.client.tries} "
              f"tries); "
              f"they count as 'failed', not as ties. Run the same command again to ask only for those "
              f"(the other replies are cached in {out}/judgments)")
    print(f"wrote {out}/winrates.csv, winrates.json, winrates.png (generations cached in {out}/generations)")
    return 0
