"""``sdpo eval checkpoints``: win rate of each checkpoint against a baseline, judged pairwise.

    sdpo eval checkpoints --run_dir runs/demo --data_path data/demo/tldr/validation.jsonl \\
        --baseline smollm2-135m --judge rule --style concise_casual_beginner
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
    baseline: str = field(default="Qwen/Qwen3-8B", metadata={"help": "model every checkpoint is compared with"})
    judge: str = field(default="local", metadata={"help": "rule, local, claude or openai"})
    judge_model: str | None = field(default=None, metadata={"help": "local: model; API: model name"})
    judge_base_url: str | None = field(default=None, metadata={"help": "API base URL (openai)"})
    judge_concurrency: int = field(default=8, metadata={"help": "concurrent API requests"})
    judge_max_retries: int = field(
        default=6, metadata={"help": "API: retries of a request (429, 5xx, timeout, connection error, malformed "
                                     "body) before its verdict counts as failed"})
    judge_timeout: float = field(default=60.0, metadata={"help": "API: seconds per try"})
    judge_retry_backoff: float = field(
        default=0.5, metadata={"help": "API: first wait before a retry, in seconds (doubles per retry, at most 8)"})
    style: str = field(default="concise_casual_beginner", metadata={"help": "the user persona to judge for"})
    eval_n: int = field(default=256, metadata={"help": "held-out prompts"})
    seed: int = field(default=0, metadata={"help": "prompt selection seed"})
    max_new_tokens: int = field(default=256, metadata={"help": "answer length limit"})
    max_prompt_tokens: int = field(default=1024, metadata={"help": "context limit (oldest turns, then the start of "
                                                                   "the request are cut)"})
    system_prompt: str | None = field(
        default="general", metadata={"help": "system prompt of every answer: a preset (tldr: the TL;DR task's, with the "
                                        "prompts' 'TL;DR:' cue stripped, as in training; general: empty) or text; "
                                        "must match training"})
    oracle: bool = field(default=False, metadata={"help": "add the baseline with the persona in its system prompt"})
    output_dir: str | None = field(default=None, metadata={"help": "default <run_dir>/eval"})


EvalArguments.NUMBER_RULES = {'judge_concurrency': '>=1', 'judge_max_retries': '>=0', 'judge_timeout': '>0', 'judge_retry_backoff': '>=0', 'eval_n': '>=1', 'max_new_tokens': '>=1', 'max_prompt_tokens': '>=1'}  # checked by sdpo.cli.check_number_rules
EvalArguments.OUTPUT_DIRS = ('output_dir',)


ARGUMENTS = EvalArguments
POSITIONAL = "what"


def _judge(args: EvalArguments):
    from sdpo.judges import pairwise

    if args.judge == "rule":
        return pairwise.RuleJudge(args.style)
    if args.judge == "local":
        from sdpo.models import ModelLoadError

        try:
            return pairwise.LocalJudge(args.style, model=args.judge_model or "Qwen/Qwen3-8B")
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
        return pairwise.APIJudge(args.style, client=cls(args.style, **kwargs))
    raise UsageError(f"--judge must be rule, local, claude or openai, not {args.judge!r}")


def run(args: EvalArguments) -> int:
    from sdpo.eval.checkpoints import GenerationCache, evaluate, find_checkpoints, select_prompts, write_results
    from sdpo.feedback.personas import persona_description

    if args.what != "checkpoints":
        raise UsageError(f"unknown evaluation {args.what!r}; available: checkpoints")
    if not args.run_dir or not args.data_path:
        raise UsageError("--run_dir and --data_path are required")
    persona_description(args.style)
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
        if args.judge == "local":
            print(f"loading the judge model {args.judge_model or 'Qwen/Qwen3-8B'} (--judge_model)", flush=True)
    judge = _judge(args) if state.is_main_process else None  # API keys are checked here, before generation
    rows = evaluate(checkpoints, args.baseline, prompts, judge, GenerationCache(out / "generations"),
                    max_new_tokens=args.max_new_tokens, max_prompt_tokens=args.max_prompt_tokens,
                    oracle_style=args.style if args.oracle else None, state=state,
                    judgments_dir=out / "judgments", system_prompt=args.system_prompt)
    if rows is None:  # a helper process: its share of the generations is done
        return 0
    meta = {"baseline": args.baseline, "judge": args.judge, "judge_model": args.judge_model, "style": args.style,
            "eval_n": len(prompts), "seed": args.seed, "judge_stats": judge.stats.as_dict()}
    if hasattr(judge, "client"):
        meta["judge_endpoint"] = judge.client.endpoint
    write_results(rows, out, meta)

    def pct(x: float) -> str:
        return "-" if x != x else f"{100 * x:.1f}"  # NaN: no decisive pair

    print(f"win rate vs {args.baseline}, {args.judge} judge, style {args.style}, {len(prompts)} prompts, both orders")
    print(f"{'model':34s} {'win%':>6s} {'95% Wilson':>11s} {'±binom':>7s} {'±boot':>7s} {'n':>4s} {'W':>4s} "
          f"{'L':>4s} {'T':>4s} {'unp':>4s} {'fail':>4s} {'cov':>5s}")
    for r in rows:
        ci = "-" if r["decisive"] == 0 else f"{pct(r['wilson95_low'])}-{pct(r['wilson95_high'])}"
        print(f"{r['name'][:34]:34s} {pct(r['win_rate']):>6s} {ci:>11s} {pct(r['se_binomial']):>7s} "
              f"{pct(r['se_bootstrap']):>7s} {r['decisive']:4d} {r['wins']:4d} {r['losses']:4d} {r['ties']:4d} "
              f"{r['unparsed']:4d} {r['failed']:4d} {r['coverage']:5.2f}")
    print("n: decisive pairs (wins + losses); the rate and its interval come from them alone")
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
