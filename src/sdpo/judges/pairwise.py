"""Pairwise judges: which of two answers would this user prefer, judged on style once both answer.

A non-answer never wins on style: the rule judge first checks that each answer addresses
the request (:func:`sdpo.degeneracy.non_answer_reason`: not empty, not a repetition loop,
not apology/filler, sharing content words with the request) and an answer beats a
non-answer whatever their styles (two non-answers tie); only two answers are compared on
the persona's rules. The model judges' instructions say the same.

Every judge maps a batch of ``(prompt, answer_a, answer_b)`` to verdicts ``"A"``,
``"B"``, ``"tie"``, ``None`` (a reply that could not be parsed) or ``"failed"`` (no
reply at all: an API request whose every try failed); both are counted, never
dropped. :func:`judge_both_orders` asks twice with the answers swapped and keeps a
verdict only when both orders agree, which cancels position bias.

A judge with a :class:`ReplyCache` (``judge.cache``) keeps every reply on disk as soon
as its chunk is answered, so a re-run (after a crash, or with failed verdicts) asks
only for what is missing. Failed requests are not cached: the next run asks again.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from sdpo.feedback.personas import persona_description
from sdpo.feedback.simulators import rule_violations

JUDGE_INSTRUCTIONS = """You compare two answers an AI assistant could give to the same request, from the point of view \
of one particular user.
What this user wants from answers: {persona}

{answer_check}Judge style only: tone, format, length and level of complexity. Do not judge factual accuracy.

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

ANSWER_CHECK = """First check that each answer actually addresses the request. An answer that does not (an apology or \
filler with no content, an empty reply, the same sentence repeated, or text unrelated to the request) loses to one \
that does, whatever its style; if neither addresses the request, reply tie. When both address it:
"""

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


FAILED = "failed"


class ReplyCache:
    """Judge replies on disk: ``<path>`` holds one ``{"key", "reply"}`` JSON line per judged pair.

    Lines are appended (and flushed) as replies arrive; a line cut short by a crash is ignored.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.replies: dict[str, str] = {}
        if self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                    self.replies[row["key"]] = row["reply"]
                except (ValueError, KeyError, TypeError):
                    continue

    def add(self, replies: dict[str, str]) -> None:
        if not replies:
            return
        self.replies.update(replies)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            for key, reply in replies.items():
                f.write(json.dumps({"key": key, "reply": reply}, ensure_ascii=False) + "\n")


@dataclass
class JudgeStats:
    """Judging prompts answered (``requests``: asked now, ``cached``: read from the cache),
    API ``retries``, ``failed`` requests (no reply after the last try) and ``unparsed`` replies."""

    requests: int = 0
    cached: int = 0
    retries: int = 0
    failed: int = 0
    unparsed: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class Judge:
    style: str
    # ours (docs/FIDELITY.md): a non-answer loses before style is compared; False = the reference's style-only judge
    answer_check: bool = field(default=True, kw_only=True)
    unparsed: int = field(default=0, init=False)
    failed: int = field(default=0, init=False)
    stats: JudgeStats = field(default_factory=JudgeStats, init=False, repr=False)
    cache: ReplyCache | None = field(default=None, init=False, repr=False)
    chunk_size: int = field(default=64, init=False, repr=False)  # replies reach the cache per chunk

    def __post_init__(self) -> None:
        self.persona = persona_description(self.style)

    def prompt_for(self, prompt: str, a: str, b: str) -> str:
        return JUDGE_INSTRUCTIONS.format(persona=self.persona, prompt=prompt, a=a, b=b,
                                         answer_check=ANSWER_CHECK if self.answer_check else "")

    @property
    def cache_id(self) -> str | None:
        """What identifies this judge's replies across runs (None: not worth caching)."""
        return None

    def use_cache(self, directory: str | Path) -> ReplyCache | None:
        """Keep replies under ``directory`` (one file per judge identity); no-op for uncached judges."""
        if self.cache_id is None:
            return None
        name = hashlib.sha1(self.cache_id.encode()).hexdigest()[:16] + ".jsonl"
        self.cache = ReplyCache(Path(directory) / name)
        return self.cache

    def judge(self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> list[str | None]:
        prompts, a, b = list(prompts), list(a), list(b)
        replies: list[str | None] = [None] * len(prompts)
        keys = None
        todo = list(range(len(prompts)))
        if self.cache is not None:
            keys = [hashlib.sha1(json.dumps([self.cache_id, self.prompt_for(p, x, y)]).encode()).hexdigest()
                    for p, x, y in zip(prompts, a, b)]
            todo = [i for i, k in enumerate(keys) if k not in self.cache.replies]
            for i, k in enumerate(keys):
                if k in self.cache.replies:
                    replies[i] = self.cache.replies[k]
            self.stats.cached += len(prompts) - len(todo)
        for start in range(0, len(todo), self.chunk_size):
            chunk = todo[start : start + self.chunk_size]
            got = list(self._replies([prompts[i] for i in chunk], [a[i] for i in chunk], [b[i] for i in chunk]))
            self.stats.requests += len(chunk)
            for i, reply in zip(chunk, got):
                replies[i] = reply
            if self.cache is not None:
                self.cache.add({keys[i]: reply for i, reply in zip(chunk, got) if reply})  # never an empty reply: a re-run asks again
        verdicts = [FAILED if r is None else parse_verdict(r) for r in replies]
        n_failed, n_unparsed = sum(v == FAILED for v in verdicts), sum(v is None for v in verdicts)
        self.failed += n_failed
        self.unparsed += n_unparsed
        self.stats.failed += n_failed
        self.stats.unparsed += n_unparsed
        return verdicts

    def _replies(self, prompts, a, b) -> list[str | None]:  # pragma: no cover
        """One reply per pair; None where no reply could be had (a failed verdict)."""
        raise NotImplementedError


@dataclass
class RuleJudge(Judge):
    """An answer beats a non-answer (:mod:`sdpo.degeneracy`); two non-answers tie; between two
    answers, the one with fewer persona rule violations wins and equal counts tie."""

    def _replies(self, prompts, a, b):
        from sdpo.degeneracy import is_non_answer

        out = []
        for p, x, y in zip(prompts, a, b):
            nx, ny = (is_non_answer(p, x), is_non_answer(p, y)) if self.answer_check else (False, False)
            if nx or ny:
                out.append("tie" if nx and ny else "B" if nx else "A")
                continue
            vx, vy = len(rule_violations(self.style, x)), len(rule_violations(self.style, y))
            out.append("A" if vx < vy else "B" if vy < vx else "tie")
        return out


@dataclass
class CallableJudge(Judge):
    """Any function ``texts -> replies`` (tests, or a custom client)."""

    fn: object = None
    name: str | None = None  # given: replies are cached under this name (see use_cache)

    @property
    def cache_id(self) -> str | None:
        return None if self.name is None else f"callable:{self.name}"

    def _replies(self, prompts, a, b):
        return list(self.fn([self.prompt_for(p, x, y) for p, x, y in zip(prompts, a, b)]))


@dataclass
class LocalJudge(Judge):
    """A local model answers the judging prompt greedily (a few tokens)."""

    model: object = None
    tokenizer: object = None
    batch_size: int = 8
    backend: str = "transformers"  # the generation engine (sdpo.engines); others load the model by name

    def __post_init__(self) -> None:
        super().__post_init__()
        from sdpo.engines import TransformersEngine, open_engine

        self._model_id = None
        if self.model is None or isinstance(self.model, str):
            self._model_id = self.model or "smollm2-135m"
            self.engine = open_engine(self.backend, self._model_id, option="judge backend")
            self.model, self.tokenizer = getattr(self.engine, "model", None), self.engine.tokenizer
        elif self.backend != "transformers":
            raise ValueError(f"judge backend {self.backend} loads the judge model by name; pass its name, "
                             "not a loaded model")
        else:
            self.engine = TransformersEngine(self.model, self.tokenizer, batch_size=self.batch_size)

    @property
    def cache_id(self) -> str | None:  # a model given by name is the same judge next time
        if not self._model_id:
            return None
        return f"local:{self._model_id}:greedy:8" + ("" if self.backend == "transformers" else f":{self.backend}")

    def _replies(self, prompts, a, b):
        from sdpo.templates import render_context

        texts = [self.prompt_for(p, x, y) for p, x, y in zip(prompts, a, b)]
        out = []
        for start in range(0, len(texts), self.batch_size):
            ctx = [render_context(self.tokenizer, [{"role": "user", "content": t}])
                   for t in texts[start : start + self.batch_size]]
            out += self.engine.generate_texts(ctx, max_new_tokens=8, temperature=0.0)[1]
        return out


@dataclass
class APIJudge(Judge):
    """Claude or an OpenAI-compatible endpoint, through the simulators' API client
    (its retries and backoff; a request whose last try fails is a 'failed' verdict)."""

    client: object = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if hasattr(self.client, "failure_outcome"):
            self.client.failure_outcome = "a 'failed' verdict (a re-run asks again)"

    @property
    def cache_id(self) -> str | None:
        c = self.client
        # not the endpoint: the same model behind a restarted server (another port) is the same judge
        return f"{type(c).__name__}:{getattr(c, 'model', '')}:{getattr(c, 'temperature', '')}:{getattr(c, 'max_tokens', '')}"

    def _replies(self, prompts, a, b):
        texts = [self.prompt_for(p, x, y) for p, x, y in zip(prompts, a, b)]
        if hasattr(self.client, "complete_detailed"):
            results = self.client.complete_detailed(texts)
            self.stats.retries += sum(r.tries - 1 for r in results)
            return [r.text for r in results]
        return self.client.complete(texts)


def judge_both_orders(judge: Judge, prompts, candidate, baseline) -> list[str]:
    """Per prompt 'win' / 'loss' / 'tie' / 'unparsed' / 'failed' for ``candidate`` against ``baseline``.

    Asked once with the candidate as A and once as B; only agreeing verdicts count,
    disagreement is a tie. A request that failed in either order makes the outcome
    'failed'; otherwise a reply that cannot be parsed in either order makes it 'unparsed'.
    """
    first = judge.judge(prompts, candidate, baseline)
    second = judge.judge(prompts, baseline, candidate)
    flip = {"A": "B", "B": "A", "tie": "tie", None: None, FAILED: FAILED}
    outcomes = []
    for v1, v2 in zip(first, second):
        v2 = flip[v2]
        if FAILED in (v1, v2):
            outcomes.append(FAILED)
        elif v1 is None or v2 is None:
            outcomes.append("unparsed")
        elif v1 == v2 == "A":
            outcomes.append("win")
        elif v1 == v2 == "B":
            outcomes.append("loss")
        else:
            outcomes.append("tie")
    return outcomes
