"""``sdpo signal-analysis``: is the signal about the feedback?

Scores each case's response under a relevant follow-up and an unrelated one, prints
the selectivity table, and writes ``sdpo_signals.json``, heatmaps (``followup.png``,
``unrelated.png``, ``stacked.png``, ``side_by_side.png``), ``case{N}_tokens.png`` and
``report.html`` to ``--out_dir``. ``--template all`` runs every built-in template
(outputs in one sub-directory each) and prints a comparison.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from sdpo.cli import UsageError
from sdpo.templates import DEFAULT_TEMPLATE, TEMPLATE_NAMES

DEFAULT_CASES = "auxiliary/signal_analysis_cases.json"


@dataclass
class SignalAnalysisArguments:
    model: str = field(default="smollm2-135m", metadata={"help": "alias, .gguf file, local directory or hub id"})
    cases: str = field(
        default=DEFAULT_CASES,
        metadata={"help": "cases file (JSON/JSONL with unrelated_followup); 'analysis' = the set shipped with sdpo"},
    )
    n_cases: int = field(default=24, metadata={"help": "use the first N cases (0 = all)"})
    out_dir: str | None = field(default=None, metadata={"help": "output directory (default ./runs/signal-analysis/<run-id>)"})
    template: str = field(
        default=DEFAULT_TEMPLATE, metadata={"help": f"{', '.join(TEMPLATE_NAMES)}, or 'all' to compare them"}
    )
    system_prompt: str | None = field(default=None, metadata={"help": "system prompt for both contexts"})
    max_context_tokens: int = field(default=2048, metadata={"help": "contexts are cut from the left to this"})
    max_heatmap_tokens: int = field(default=96, metadata={"help": "heatmap columns (first N response tokens)"})
    token_images: bool = field(default=True, metadata={"help": "write case{N}_tokens.png for every case"})
    batch_size: int = field(default=16, metadata={"help": "examples per scoring batch"})
    dtype: str = field(default="auto", metadata={"help": "auto, float32, bfloat16, float16"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, ..."})


SignalAnalysisArguments.NUMBER_RULES = {'n_cases': '>=1', 'max_context_tokens': '>=1', 'max_heatmap_tokens': '>=1', 'batch_size': '>=1'}  # checked by sdpo.cli.check_number_rules
SignalAnalysisArguments.OUTPUT_DIRS = ('out_dir',)


ARGUMENTS = SignalAnalysisArguments


def _resolve_cases(args: SignalAnalysisArguments):
    from sdpo.analysis.signal_report import require_controls
    from sdpo.data.cases import load_cases

    source = args.cases
    if source == DEFAULT_CASES and not Path(source).is_file():
        source = "analysis"  # outside a checkout: the copy shipped in the package
    cases = load_cases(source)
    if args.n_cases < 0:
        raise UsageError("--n_cases must be >= 0")
    if args.n_cases:
        cases = cases[: args.n_cases]
    require_controls(cases, source)
    return cases


def run(args: SignalAnalysisArguments) -> int:
    templates = list(TEMPLATE_NAMES) if args.template == "all" else [args.template]
    for name in templates:
        if name not in TEMPLATE_NAMES:
            raise UsageError(f"--template {name!r} is unknown; choose one of {', '.join(TEMPLATE_NAMES)} or all")
    cases = _resolve_cases(args)  # validated before any model is loaded
    out_dir = Path(args.out_dir or Path("runs") / "signal-analysis" / time.strftime("%Y%m%d-%H%M%S"))

    from rich.console import Console

    from sdpo.analysis.signal_report import analyze, write_index, write_outputs
    from sdpo.models import load_model
    from sdpo.signal import SignalScorer
    from sdpo.templates import get_template

    console = Console(highlight=False)
    console.print(f"signal analysis: {len(cases)} cases, model {args.model}, template(s) {', '.join(templates)}")
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    summary = {}
    for name in templates:
        scorer = SignalScorer(
            model, tokenizer, get_template(name, system_prompt=args.system_prompt),
            max_context_tokens=args.max_context_tokens,
        )
        result = analyze(scorer, cases, batch_size=args.batch_size, progress=True)
        target = out_dir / name if len(templates) > 1 else out_dir
        write_outputs(result, target, model=args.model, max_tokens=args.max_heatmap_tokens,
                      token_images=args.token_images)
        _print_cases(console, result)
        summary[name] = {**result["overall"], "out_dir": str(target)}
    if len(templates) > 1:
        _print_comparison(console, summary)
        (out_dir / "selectivity_by_template.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
        write_index(summary, out_dir, model=args.model)  # links every template's report
    console.print(f"outputs in {out_dir}/; open {out_dir / 'report.html'} in a browser", soft_wrap=True)
    return 0


def _print_cases(console, result: dict) -> None:
    from rich.table import Table

    table = Table(title=f"selectivity, template {result['template']}", title_justify="left")
    for col in ("#", "case", "selectivity", "mean |A| relevant", "mean |A| unrelated"):
        table.add_column(col, justify="left" if col == "case" else "right")
    for i, c in enumerate(result["cases"]):
        table.add_row(str(i), c["name"], f"{c['selectivity']:.2f}", f"{c['mean_abs_followup']:.3f}",
                      f"{c['mean_abs_unrelated']:.3f}")
    ov = result["overall"]
    table.add_row("", "overall (pooled)", f"{ov['selectivity']:.3f}", f"{ov['mean_abs_followup']:.3f}",
                  f"{ov['mean_abs_unrelated']:.3f}", style="bold")
    console.print(table)


def _print_comparison(console, summary: dict) -> None:
    from rich.table import Table

    table = Table(title="templates compared", title_justify="left")
    for col in ("template", "overall selectivity", "median case", "cases > 1"):
        table.add_column(col, justify="left" if col == "template" else "right")
    best = max(summary, key=lambda k: summary[k]["selectivity"])
    for name, ov in summary.items():
        table.add_row(name + (" (best)" if name == best else ""), f"{ov['selectivity']:.3f}",
                      f"{ov['median_case_selectivity']:.3f}", str(ov["cases_above_1"]))
    console.print(table)
