"""``sdpo signal``: the per-token hindsight signal of a response.

Examples::

    sdpo signal --prompt "Explain RAM" --response "RAM is ..." --followup "Simpler please"
    sdpo signal --cases bundled            # the examples shipped with sdpo
    sdpo signal --cases my_cases.json --json > signal.json

In a terminal each token is shaded by its signal (green: the teacher that saw the
follow-up likes the token more than the student did; red: less). Piped, it prints
one tab-separated row per token; ``--json`` prints everything as JSON.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field

from sdpo.cli import UsageError
from sdpo.templates import DEFAULT_TEMPLATE, TEMPLATE_NAMES


@dataclass
class SignalArguments:
    model: str = field(
        default="smollm2-135m",
        metadata={"help": "alias (smollm2-135m, tiny-random), .gguf file, local directory or hub id"},
    )
    prompt: str | None = field(default=None, metadata={"help": "the user's request x"})
    response: str | None = field(default=None, metadata={"help": "the assistant's answer y to score"})
    followup: str | None = field(default=None, metadata={"help": "the user's next message o (hindsight)"})
    cases: str | None = field(
        default=None, metadata={"help": "JSON/JSONL cases file, or 'bundled' for the shipped examples"}
    )
    template: str = field(
        default=DEFAULT_TEMPLATE, metadata={"help": f"teacher-context template: {', '.join(TEMPLATE_NAMES)}"}
    )
    system_prompt: str | None = field(default=None, metadata={"help": "system prompt for both contexts"})
    max_context_tokens: int = field(default=2048, metadata={"help": "contexts are cut from the left to this"})
    append_eos: bool = field(default=True, metadata={"help": "score an end-of-turn token after y"})
    batch_size: int = field(default=16, metadata={"help": "examples per scoring batch"})
    dtype: str = field(default="auto", metadata={"help": "auto, float32, bfloat16, float16"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:1, ..."})
    json: bool = field(default=False, metadata={"help": "print JSON instead of a table"})
    color: str = field(default="auto", metadata={"help": "auto (colour in a terminal), always, never"})
    output: str | None = field(default=None, metadata={"help": "also write the JSON result to this file"})


SignalArguments.NUMBER_RULES = {'max_context_tokens': '>=1', 'batch_size': '>=1'}  # checked by sdpo.cli.check_number_rules
SignalArguments.OUTPUT_FILES = ('output',)


ARGUMENTS = SignalArguments


def _collect_cases(args: SignalArguments):
    from sdpo.data.cases import SignalCase, load_cases
    from sdpo.templates import TEMPLATE_NAMES, as_messages

    if args.template not in TEMPLATE_NAMES:
        raise UsageError(f"--template {args.template!r} is unknown; choose one of {', '.join(TEMPLATE_NAMES)}")
    if args.color not in ("auto", "always", "never"):
        raise UsageError(f"--color must be auto, always or never, not {args.color!r}")
    inline = [args.prompt, args.response, args.followup]
    if args.cases and any(v is not None for v in inline):
        raise UsageError("give either --cases or --prompt/--response/--followup, not both")
    if args.cases:
        return load_cases(args.cases)
    missing = [f"--{n}" for n, v in zip(("prompt", "response", "followup"), inline) if v is None]
    if len(missing) == 3:
        raise UsageError("nothing to score: give --prompt, --response and --followup, or --cases FILE|bundled")
    if missing:
        raise UsageError(f"missing {', '.join(missing)}")
    for flag, value in zip(("--prompt", "--response", "--followup"), inline):
        if not value.strip():
            raise UsageError(f"{flag} is empty")
    return [SignalCase("cli", as_messages(args.prompt), args.response, args.followup)]


def run(args: SignalArguments) -> int:
    from sdpo.models import load_model
    from sdpo.signal import SignalScorer
    from sdpo.templates import get_template

    cases = _collect_cases(args)  # validate before loading any model
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    scorer = SignalScorer(
        model,
        tokenizer,
        get_template(args.template, system_prompt=args.system_prompt),
        max_context_tokens=args.max_context_tokens,
        append_eos=args.append_eos,
    )
    progress = len(cases) > args.batch_size
    # a case's unrelated follow-up (if any) is scored beside the relevant one: one student pass each
    scored = scorer.score_followups(
        [(c.messages, c.response, [c.followup] + ([c.unrelated_followup] if c.unrelated_followup else []))
         for c in cases],
        batch_size=args.batch_size,
        progress=progress,
    )
    relevant = [signals[0] for signals in scored]
    unrelated = {i: signals[1] for i, signals in enumerate(scored) if len(signals) > 1}

    result = {
        "model": args.model,
        "template": args.template,
        "cases": [
            {
                "name": case.name,
                "prompt": case.prompt,
                "response": case.response,
                "followup": case.followup,
                **relevant[i].to_dict(),
                **(
                    {"unrelated_followup": case.unrelated_followup, "unrelated": unrelated[i].to_dict()}
                    if i in unrelated
                    else {}
                ),
            }
            for i, case in enumerate(cases)
        ],
    }
    if args.output:
        from pathlib import Path

        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(result, ensure_ascii=False, indent=1), encoding="utf-8")
    if args.json:
        json.dump(result, sys.stdout, ensure_ascii=False)
        sys.stdout.write("\n")
        return 0
    colour = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
    if colour:
        _print_rich(result, force=args.color == "always")
    else:
        _print_plain(result)
    return 0


def _print_plain(result: dict) -> None:
    out = sys.stdout
    out.write("case\tindex\ttoken\tstudent_logprob\tteacher_logprob\tsignal\n")
    for case in result["cases"]:
        for k, (tok, s, t, a) in enumerate(
            zip(case["tokens"], case["student_logprobs"], case["teacher_logprobs"], case["signal"])
        ):
            out.write(f"{case['name']}\t{k}\t{json.dumps(tok, ensure_ascii=False)}\t{s:.4f}\t{t:.4f}\t{a:+.4f}\n")
    for case in result["cases"]:
        line = f"# {case['name']}: mean |signal| {case['mean_abs_signal']:.4f}"
        if "unrelated" in case:
            line += f" (unrelated follow-up: {case['unrelated']['mean_abs_signal']:.4f})"
        out.write(line + "\n")


from sdpo.analysis.signal_report import FULL_COLOUR_NATS as SCALE  # |signal| (nats) at full colour, as in the report


def _shade(value: float) -> str:
    v = max(-1.0, min(1.0, value / SCALE))
    if v >= 0:  # white -> green
        r, g, b = int(255 - 175 * v), int(255 - 55 * v), int(255 - 175 * v)
    else:  # white -> red
        v = -v
        r, g, b = int(255 - 25 * v), int(255 - 175 * v), int(255 - 175 * v)
    return f"black on rgb({r},{g},{b})"


def _print_rich(result: dict, force: bool = False) -> None:
    from rich.console import Console
    from rich.text import Text

    from sdpo.analysis.signal_report import display_units, extremes

    console = Console(highlight=False, force_terminal=force or None)
    console.print(f"[bold]model[/] {result['model']}   [bold]template[/] {result['template']}")
    console.print(
        Text.assemble("colour: ", ("teacher prefers less", _shade(-SCALE)), " ", ("neutral", _shade(0)), " ",
                      ("teacher prefers more", _shade(SCALE)), f"  (full colour at |signal| >= {SCALE} nats)")
    )
    for case in result["cases"]:
        console.rule(f"[bold]{case['name']}")
        console.print(Text("prompt:    ", style="bold") + Text(case["prompt"]))
        console.print(Text("follow-up: ", style="bold") + Text(case["followup"]))
        text = Text()
        # a character split over several byte tokens (emoji) is shown once, shaded by their summed signal
        for tok, value, _ in display_units(case["tokens"], case["signal"]):
            text.append(tok.replace("\n", "\u21b5\n"), style=_shade(value))
        console.print(Text("response:  ", style="bold"))
        console.print(text)
        lows, highs = extremes(case["tokens"], case["signal"])  # negative values only / positive only
        low = ", ".join(f"{t!r} {v:+.2f}" for t, v in lows) or "(no token below 0)"
        high = ", ".join(f"{t!r} {v:+.2f}" for t, v in highs) or "(no token above 0)"
        console.print(Text.assemble(("most discouraged", "red"), f": {low}"))  # not markup: a token may hold "["
        console.print(Text.assemble(("most encouraged", "green"), f":  {high}"))
        summary = f"mean |signal| {case['mean_abs_signal']:.3f} over {len(case['tokens'])} tokens"
        if "unrelated" in case:
            ratio = case["mean_abs_signal"] / max(case["unrelated"]["mean_abs_signal"], 1e-12)
            summary += (
                f"; with an unrelated follow-up {case['unrelated']['mean_abs_signal']:.3f}"
                f" (relevant / unrelated = {ratio:.2f})"
            )
        console.print(summary)
