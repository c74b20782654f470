"""Pairwise judges: which of two answers would this user prefer, judged on style only.

Every judge maps a batch of ``(prompt, answer_a, answer_b)`` to verdicts ``"A"``,
``"B"``, ``"tie"`` or ``None`` (an answer that could not be parsed; counted, never
dropped). :func:`judge_both_orders` asks twice with the answers swapped and keeps a
verdict only when both orders agree, which cancels position bias.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Sequence

from sdpo.feedback.personas import persona_description
from sdpo.feedback.simulators import rule_violations

JUDGE_INSTRUCTIONS = """You compare two answers an AI assistant could give to the same request, from the point of view \
of one particular user.
What this user wants from answers: {persona}

Judge style only: tone, format, length and level of complexity. Do not judge factual accuracy.

<request>
{prompt}
</request>

<answer_A>
{a}
</answer_A>

<answer_B>
{b}
</answer_B>

Which answer would this user prefer? Reply with exactly one word: A, B, or tie."""

_VERDICT = re.compile(r"\b(A|B|tie|TIE|Tie)\b")


def parse_verdict(text: str | None) -> str | None:
    """'A', 'B', 'tie', or None when the reply names no verdict (or names both A and B)."""
    if not text:
        return None
    t = text.strip().strip("*.`\"' ").lower()
    if t in ("a", "b"):
        return t.upper()
    if t == "tie":
        return "tie"
    m = re.search(r"(?:answer|verdict|prefer(?:s|red)?)\s*(?:is|:)?\s*\**\s*(?:answer\s*)?(A|B|tie)\b", text, re.I)
    if m:
        v = m.group(1)
        return "tie" if v.lower() == "tie" else v.upper()
    found = {("tie" if v.lower() == "tie" else v.upper()) for v in _VERDICT.findall(text)}
    return found.pop() if len(found) == 1 else None


@dataclass
class Judge:
    style: str
    unparsed: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.persona = persona_description(self.style)

    def prompt_for(self, prompt: str, a: str, b: str) -> str:
        return JUDGE_INSTRUCTIONS.format(persona=self.persona, prompt=prompt, a=a, b=b)

    def judge(self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> list[str | None]:
        verdicts = [parse_verdict(t) for t in self._replies(list(prompts), list(a), list(b))]
        self.unparsed += sum(v is None for v in verdicts)
        return verdicts

    def _replies(self, prompts, a, b) -> list[str]:  # pragma: no cover
        raise NotImplementedError


@dataclass
class RuleJudge(Judge):
    """Prefers the answer with fewer persona rule violations; equal counts tie."""

    def _replies(self, prompts, a, b):
        out = []
        for x, y in zip(a, b):
            vx, vy = len(rule_violations(self.style, x)), len(rule_violations(self.style, y))
            out.append("A" if vx < vy else "B" if vy < vx else "tie")
        return out


@dataclass
class CallableJudge(Judge):
    """Any function ``texts -> replies`` (tests, or a custom client)."""

    fn: object = None

    def _replies(self, prompts, a, b):
        return list(self.fn([self.prompt_for(p, x, y) for p, x, y in zip(prompts, a, b)]))


@dataclass
class LocalJudge(Judge):
    """A local model answers the judging prompt greedily (a few tokens)."""

    model: object = None
    tokenizer: object = None
    batch_size: int = 8

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.model is None or isinstance(self.model, str):
            from sdpo.models import load_model

            self.model, self.tokenizer = load_model(self.model or "smollm2-135m")

    def _replies(self, prompts, a, b):
        import torch

        from sdpo.templates import render_context
        from sdpo.trainers.online import generate

        texts = [self.prompt_for(p, x, y) for p, x, y in zip(prompts, a, b)]
        out = []
        device = next(self.model.parameters()).device
        for start in range(0, len(texts), self.batch_size):
            ctx = [render_context(self.tokenizer, [{"role": "user", "content": t}])
                   for t in texts[start : start + self.batch_size]]
            _, replies = generate(self.model, self.tokenizer, ctx, max_new_tokens=8, temperature=0.0,
                                  device=device if isinstance(device, torch.device) else torch.device(device))
            out += replies
        return out


@dataclass
class APIJudge(Judge):
    """Claude or an OpenAI-compatible endpoint, through the simulators' API client."""

    client: object = None

    def _replies(self, prompts, a, b):
        return self.client.complete([self.prompt_for(p, x, y) for p, x, y in zip(prompts, a, b)])


def judge_both_orders(judge: Judge, prompts, candidate, baseline) -> list[str]:
    """Per prompt 'win' / 'loss' / 'tie' / 'unparsed' for ``candidate`` against ``baseline``.

    Asked once with the candidate as A and once as B; only agreeing verdicts count,
    disagreement is a tie. A reply that cannot be parsed in either order is 'unparsed'.
    """
    first = judge.judge(prompts, candidate, baseline)
    second = judge.judge(prompts, baseline, candidate)
    flip = {"A": "B", "B": "A", "tie": "tie", None: None}
    outcomes = []
    for v1, v2 in zip(first, second):
        v2 = flip[v2]
        if v1 is None or v2 is None:
            outcomes.append("unparsed")
        elif v1 == v2 == "A":
            outcomes.append("win")
        elif v1 == v2 == "B":
            outcomes.append("loss")
        else:
            outcomes.append("tie")
    return outcomes
