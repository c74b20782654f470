"""Environment feedback sources for rich-feedback SDPO: reward functions that score a
completion and say why, in TRL's reward-function calling convention
``f(prompts, completions, **dataset_columns) -> list[{"score", "feedback"}]``.

- :class:`NumericAnswerReward`: the last number in the answer vs the ``answer`` column.
- :class:`CodeTestsReward`: the Python function in the answer, run against the
  ``tests`` column in the sandbox (:mod:`sdpo.feedback.sandbox`; bubblewrap by
  default), up to ``max_workers`` candidates at a time.
"""

from __future__ import annotations

import json
import re
from typing import Any, Sequence

from .sandbox import SandboxLimits, resolve_sandbox, run_python_tests_batch

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)


def completion_text(completion: Any) -> str:
    """Text of a completion, plain or conversational (list of messages)."""
    if isinstance(completion, list):
        return "".join(str(m.get("content", "")) for m in completion if isinstance(m, dict))
    return str(completion)


def extract_number(text: str) -> float | None:
    """The last number in ``text`` (commas as thousands separators allowed)."""
    found = _NUMBER.findall(text)
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


def extract_code(text: str, entry_point: str | None = None) -> str:
    """The Python code in a completion: the last fenced block defining ``entry_point``,
    else the last fenced block, else the whole text (from the first ``def``/``import``)."""
    blocks = [body for lang, body in _FENCE.findall(text) if lang.lower() in ("", "python", "py", "python3")]
    if entry_point:
        defining = [b for b in blocks if re.search(rf"\bdef\s+{re.escape(entry_point)}\s*\(", b)]
        if defining:
            return defining[-1]
    if blocks:
        return blocks[-1]
    match = re.search(r"^(def |import |from |class )", text, flags=re.MULTILINE)
    return text[match.start():] if match else text


class NumericAnswerReward:
    """1.0 when the last number in the answer equals ``answer`` (within ``tolerance``), else 0.0.

    The feedback names the number that was found; with ``reveal_answer`` it also gives
    the right one (what a maths checker that knows the solution would say).
    """

    __name__ = "numeric_answer"

    def __init__(self, *, tolerance: float = 1e-6, reveal_answer: bool = True):
        self.tolerance = tolerance
        self.reveal_answer = reveal_answer

    def __call__(self, prompts, completions, answer: Sequence[Any] | None = None, **_) -> list[dict]:
        if answer is None:
            raise ValueError("NumericAnswerReward needs an 'answer' column in the dataset")
        out = []
        for completion, expected in zip(completions, answer):
            got = extract_number(completion_text(completion))
            expected = float(expected)
            if got is not None and abs(got - expected) <= self.tolerance:
                out.append({"score": 1.0, "feedback": "Correct."})
                continue
            said = "no number was given" if got is None else f"the answer given was {got:g}"
            hint = f"; the correct answer is {expected:g}" if self.reveal_answer else ""
            out.append({"score": 0.0, "feedback": f"Wrong: {said}{hint}."})
        return out


class CodeTestsReward:
    """Fraction of test cases passed by the function in the answer, with the sandbox's feedback.

    Dataset columns: ``entry_point`` (function name) and ``tests`` (list of
    ``{"args": [...], "expected": ...}``, or that list as JSON text, which is how it
    fits in an Arrow/`datasets` column).
    """

    __name__ = "code_tests"

    def __init__(self, limits: SandboxLimits | None = None, *, max_workers: int = 4, sandbox: Any = None):
        """``sandbox``: "bwrap" (default; or ``$SDPO_SANDBOX``), "process-unsafe",
        "remote:<url>" or a backend object such as
        :class:`~sdpo.feedback.remote_sandbox.RemoteSandbox`. Resolved at the first call,
        so building the reward never needs bubblewrap."""
        if max_workers < 1:
            raise ValueError(f"CodeTestsReward: max_workers must be at least 1, got {max_workers}")
        self.limits = limits or SandboxLimits()
        self.max_workers = max_workers
        self.sandbox = sandbox

    def __call__(self, prompts, completions, entry_point=None, tests=None, **_) -> list[dict]:
        if entry_point is None or tests is None:
            raise ValueError("CodeTestsReward needs 'entry_point' and 'tests' columns in the dataset")
        jobs = []
        for completion, name, cases in zip(completions, entry_point, tests):
            if isinstance(cases, str):
                cases = json.loads(cases)
            jobs.append((extract_code(completion_text(completion), name), name, cases))
        results = run_python_tests_batch(jobs, self.limits, sandbox=resolve_sandbox(self.sandbox),
                                         max_workers=self.max_workers)
        return [{"score": r.score, "feedback": r.feedback} for r in results]
