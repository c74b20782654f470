"""Can this model teach itself? Measured before any training.

SDPO trains a model toward *itself* shown more context (a successful peer, the
environment's feedback, the user's follow-up). That only helps when the model, so
shown, actually does better and its log-probs point the right way. This module
measures that on a task with verifiable answers and on user follow-ups, and turns the
numbers into a recommendation (SDPO, a hybrid, or GRPO).

Rich feedback (the additions or code task of :mod:`sdpo.tasks`):

- ``accuracy_plain`` / ``accuracy_teacher``: greedy accuracy under the plain prompt and
  under the teacher context (built exactly as :class:`sdpo.SDPOTrainer` builds it from
  sampled rollouts: a successful peer and/or the feedback), on the same problems;
- ``gap_correct`` / ``gap_incorrect``: the mean sequence log-prob gap
  ``log p(y | teacher context) - log p(y | prompt)`` over sampled rollouts that were right /
  wrong; a useful teacher raises right answers more than wrong ones
  (``gap_separation`` = the difference > 0);
- ``copy_share``: the share of the teacher's greedy continuations that copy a phrase
  (a word 4-gram) only the teacher context has (template text, feedback): what the
  student learns to echo when it is distilled toward such a teacher.

User interactions:

- ``selectivity``: mean |signal| under relevant follow-ups / under unrelated ones (as
  ``sdpo signal-analysis``);
- ``preference_rate``: over response pairs built from persona rules
  (:func:`sdpo.feedback.simulators.rule_violations`), the share where the teacher shown
  the follow-up raises the response that satisfies it more than the one that does not
  (summed hindsight signal).

:func:`verdict` is a pure function of those numbers (thresholds below).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

# Thresholds of the verdict (see :func:`verdict`).
MIN_TEACHER_GAIN = 0.10
"""The teacher context must lift greedy accuracy by at least this much for SDPO to be recommended."""
MIN_GAP_SEPARATION = 0.0
"""gap_correct - gap_incorrect above this: the teacher's log-probs favour right answers."""
MAX_COPY_SHARE = 0.20
"""Above this share of teacher continuations copying teacher-only phrases, distillation teaches echoing."""
MIN_SELECTIVITY = 1.0
MIN_PREFERENCE_RATE = 0.5


# ----------------------------------------------------------------------------- persona pairs


@dataclass(frozen=True)
class PersonaPair:
    style: str
    prompt: str
    satisfying: str
    violating: str

    @property
    def followup(self) -> str:
        from sdpo.feedback.simulators import rule_violations

        return " ".join(rule_violations(self.style, self.violating))


PERSONA_PAIRS = [
    PersonaPair("no_emojis", "Suggest a name for a pet goldfish.",
                "How about Bubbles? It is short and cheerful.",
                "How about Bubbles? \U0001f41f It is short and cheerful \U0001f60a"),
    PersonaPair("no_lists", "What should I pack for a day hike?",
                "Bring water, a snack, sunscreen and a light jacket, and wear comfortable shoes.",
                "- water\n- a snack\n- sunscreen\n- a light jacket\n- comfortable shoes"),
    PersonaPair("more_lists", "What should I pack for a day hike?",
                "- water\n- a snack\n- sunscreen\n- a light jacket\n- comfortable shoes",
                "Bring water, a snack, sunscreen and a light jacket, and wear comfortable shoes."),
    PersonaPair("no_first_person", "Is Python good for beginners?",
                "Python is a good first language: its syntax is plain and its community is large.",
                "I think Python is a good first language; in my experience its syntax is plain."),
    PersonaPair("exclamation", "Give me a fact about octopuses.",
                "Octopuses have three hearts!",
                "Octopuses have three hearts."),
    PersonaPair("committing", "Should I learn Spanish or French first?",
                "Learn Spanish first: it is more widely spoken and its spelling is regular.",
                "It depends; maybe Spanish, or perhaps French, it might vary."),
    PersonaPair("no_filler_followup", "How long should I boil an egg?",
                "Boil it for about nine minutes for a firm yolk.",
                "Boil it for about nine minutes for a firm yolk. Let me know if you need anything else!"),
    PersonaPair("concise_casual_beginner", "What is a black hole?",
                "So, a black hole is a spot in space where gravity is so strong that even light can't escape.",
                " ".join(["A black hole is a region of spacetime in which the gravitational field is so intense "
                          "that nothing, not even electromagnetic radiation such as light, can escape from it."] * 3)),
    PersonaPair("less_formatting", "How do I make tea?",
                "Boil water, pour it over a tea bag, wait three minutes and remove the bag.",
                "## Steps\n**Boil** water, pour it over a tea bag, wait three minutes and remove the bag."),
    PersonaPair("no_sycophantic", "Why is the sky blue?",
                "Air scatters blue light more than red light, so the sky looks blue.",
                "Great question! Air scatters blue light more than red light, so the sky looks blue."),
]


def check_pairs(pairs: Sequence[PersonaPair]) -> None:
    """Each pair must split on its persona's rules: the satisfying one clean, the other with a complaint."""
    from sdpo.feedback.simulators import rule_violations

    for k, p in enumerate(pairs):
        if rule_violations(p.style, p.satisfying):
            raise ValueError(f"persona pair {k} ({p.style}): the satisfying response breaks a rule: "
                             f"{rule_violations(p.style, p.satisfying)}")
        if not rule_violations(p.style, p.violating):
            raise ValueError(f"persona pair {k} ({p.style}): the violating response breaks no rule")


# ----------------------------------------------------------------------------- rich feedback


def _chat_ids(tokenizer, prompt) -> list[int]:
    return list(tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True,
                                              return_dict=True)["input_ids"])


def _batched_generate(model, tokenizer, contexts, *, max_new_tokens, temperature, batch_size=16):
    from sdpo.trainers.online import generate

    device = next(model.parameters()).device
    ids, texts = [], []
    for start in range(0, len(contexts), batch_size):
        r, t = generate(model, tokenizer, contexts[start : start + batch_size], max_new_tokens=max_new_tokens,
                        temperature=temperature, device=device)
        ids.extend(r)
        texts.extend(t)
    return ids, texts


def _mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def rich_feedback_check(model, tokenizer, task, rows: Sequence[dict], *, num_generations: int = 4,
                        max_new_tokens: int = 12, config=None, seed: int = 0, batch_size: int = 16) -> dict:
    """The rich-feedback numbers of the module doc on ``rows`` of ``task`` (an :class:`sdpo.tasks.ExampleTask`)."""
    import torch

    from sdpo.signal import completion_logprobs
    from sdpo.tasks import score_answers
    from sdpo.trainers.rich import (
        SDPOConfig,
        choose_teachers,
        echoes_teacher_context,
        teacher_only_ngrams,
        teacher_prompt,
        template_phrases,
    )

    cfg = config or SDPOConfig()
    rows = list(rows)
    if not rows:
        raise ValueError("the teacher check needs at least one problem")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            plain_ctx = [_chat_ids(tokenizer, r["prompt"]) for r in rows]
            _, plain_answers = _batched_generate(model, tokenizer, plain_ctx, max_new_tokens=max_new_tokens,
                                                 temperature=0.0, batch_size=batch_size)
            plain_ok = [float(s["score"]) >= cfg.success_reward_threshold
                        for s in score_answers(task, rows, plain_answers)]

            # sampled rollouts, num_generations per problem, as the trainer sees them
            torch.manual_seed(seed)
            roll_rows = [r for r in rows for _ in range(num_generations)]
            roll_ctx = [c for c in plain_ctx for _ in range(num_generations)]
            roll_ids, roll_texts = _batched_generate(model, tokenizer, roll_ctx, max_new_tokens=max_new_tokens,
                                                     temperature=1.0, batch_size=batch_size)
            scored = score_answers(task, roll_rows, roll_texts)
            rewards = [float(s["score"]) for s in scored]
            feedback = [s.get("feedback") for s in scored]
            choices = choose_teachers(rewards, feedback, num_generations, cfg)

            teacher_msgs: list[Any] = []
            for k, ch in enumerate(choices):
                if not ch.active:
                    teacher_msgs.append(None)
                    continue
                demo = roll_texts[ch.demonstration] if ch.demonstration is not None else None
                teacher_msgs.append(teacher_prompt(roll_rows[k]["prompt"], demo,
                                                   feedback[k] if ch.use_feedback else None, cfg))

            # log-prob gap of each rollout with a teacher
            active = [k for k, m in enumerate(teacher_msgs) if m is not None and len(roll_ids[k]) > 0]
            gaps_ok, gaps_bad = [], []
            for start in range(0, len(active), batch_size):
                chunk = active[start : start + batch_size]
                pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
                s_lp = completion_logprobs(model, [roll_ctx[k] for k in chunk], [roll_ids[k] for k in chunk],
                                           pad_token_id=pad)
                t_lp = completion_logprobs(model, [_chat_ids(tokenizer, teacher_msgs[k]) for k in chunk],
                                           [roll_ids[k] for k in chunk], pad_token_id=pad)
                for k, s, t in zip(chunk, s_lp, t_lp):
                    gap = float(t.sum() - s.sum())
                    (gaps_ok if rewards[k] >= cfg.success_reward_threshold else gaps_bad).append(gap)

            # greedy under the teacher context: per problem, its first rollout that has a teacher
            problem_teacher: list[tuple[int, int]] = []  # (problem, rollout)
            for p in range(len(rows)):
                ks = [p * num_generations + j for j in range(num_generations)
                      if teacher_msgs[p * num_generations + j] is not None]
                if ks:
                    problem_teacher.append((p, ks[0]))
            t_ctx = [_chat_ids(tokenizer, teacher_msgs[k]) for _, k in problem_teacher]
            _, t_answers = _batched_generate(model, tokenizer, t_ctx, max_new_tokens=max_new_tokens,
                                             temperature=0.0, batch_size=batch_size)
    finally:
        model.train(was_training)

    t_rows = [rows[p] for p, _ in problem_teacher]
    t_ok = [float(s["score"]) >= cfg.success_reward_threshold for s in score_answers(task, t_rows, t_answers)] \
        if t_rows else []
    phrases = template_phrases(cfg)
    from sdpo.trainers.rich import _prompt_text

    copies = [
        echoes_teacher_context(ans, teacher_only_ngrams([*phrases, feedback[k] if choices[k].use_feedback else None],
                                                         _prompt_text(rows[p]["prompt"])))
        for (p, k), ans in zip(problem_teacher, t_answers)
    ]
    with_demo = [i for i, (_, k) in enumerate(problem_teacher) if choices[k].demonstration is not None]
    fb_only = [i for i, (_, k) in enumerate(problem_teacher) if choices[k].demonstration is None]
    n_t = len(problem_teacher)
    acc_plain_same = sum(plain_ok[p] for p, _ in problem_teacher) / n_t if n_t else None
    acc_teacher = sum(t_ok) / n_t if n_t else None
    gap_ok, gap_bad = _mean(gaps_ok), _mean(gaps_bad)
    examples = [
        {"prompt": rows[p]["prompt"][-1]["content"], "plain": plain_answers[p], "teacher": t_answers[i],
         "teacher_context": teacher_msgs[k][-1]["content"] if isinstance(teacher_msgs[k], list) else teacher_msgs[k]}
        for i, (p, k) in enumerate(problem_teacher[:3])
    ]
    return {
        "n_problems": len(rows),
        "num_generations": num_generations,
        "accuracy_plain": sum(plain_ok) / len(rows),
        "n_with_teacher": n_t,
        "accuracy_plain_same_problems": acc_plain_same,
        "accuracy_teacher": acc_teacher,
        "teacher_gain": (acc_teacher - acc_plain_same) if n_t else None,
        "accuracy_teacher_with_demonstration": _mean([float(t_ok[i]) for i in with_demo]),
        "accuracy_teacher_feedback_only": _mean([float(t_ok[i]) for i in fb_only]),
        "n_with_demonstration": len(with_demo),
        "n_feedback_only": len(fb_only),
        "rollout_success_rate": sum(r >= cfg.success_reward_threshold for r in rewards) / len(rewards),
        "n_rollouts_correct": len(gaps_ok),
        "n_rollouts_incorrect": len(gaps_bad),
        "gap_correct": gap_ok,
        "gap_incorrect": gap_bad,
        "gap_separation": (gap_ok - gap_bad) if gap_ok is not None and gap_bad is not None else None,
        "copy_share": sum(copies) / len(copies) if copies else None,
        "examples": examples,
    }


# ----------------------------------------------------------------------------- user interactions


def user_interaction_check(model, tokenizer, cases, pairs: Sequence[PersonaPair] = PERSONA_PAIRS, *,
                           template=None, batch_size: int = 16) -> dict:
    """Selectivity on ``cases`` (relevant vs unrelated follow-ups) and the persona-pair preference rate."""
    from sdpo.analysis.signal_report import analyze
    from sdpo.signal import SignalScorer
    from sdpo.templates import get_template

    check_pairs(pairs)
    scorer = SignalScorer(model, tokenizer, template or get_template())
    out: dict = {}
    if cases:
        result = analyze(scorer, cases, batch_size=batch_size)
        out.update({
            "n_cases": result["n_cases"],
            "selectivity": result["overall"]["selectivity"],
            "median_case_selectivity": result["overall"]["median_case_selectivity"],
            "cases_above_1": result["overall"]["cases_above_1"],
        })
    if not pairs:
        return out
    examples = []
    for p in pairs:
        x = [{"role": "user", "content": p.prompt}]
        examples += [(x, p.satisfying, p.followup), (x, p.violating, p.followup)]
    signals = scorer.score(examples, batch_size=batch_size)
    margins = []
    per_pair = []
    for k, p in enumerate(pairs):
        good, bad = sum(signals[2 * k].signal), sum(signals[2 * k + 1].signal)
        margins.append(good - bad)
        per_pair.append({"style": p.style, "followup": p.followup, "gain_satisfying": good,
                         "gain_violating": bad, "prefers_satisfying": good > bad})
    out.update({
        "n_pairs": len(pairs),
        "preference_rate": sum(m > 0 for m in margins) / len(margins),
        "mean_margin": sum(margins) / len(margins),
        "pairs": per_pair,
    })
    return out


# ----------------------------------------------------------------------------- verdict


def _fmt(x, spec=".3f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def verdict(rich: dict | None, user: dict | None) -> dict:
    """Recommendation from the measured numbers (pure; thresholds are the module constants).

    Rich feedback:
      SDPO   the teacher context lifts greedy accuracy by >= MIN_TEACHER_GAIN, its log-probs
             favour right rollouts (gap_separation > MIN_GAP_SEPARATION) and it copies
             teacher-only phrases in <= MAX_COPY_SHARE of its answers;
      hybrid some but not all of that: the teacher helps or separates, but not reliably enough
             to distil on every rollout; use sample routing (successes to GRPO);
      GRPO   the teacher neither lifts accuracy nor separates right from wrong rollouts.
    User interactions: the hindsight signal is usable when selectivity > MIN_SELECTIVITY and
    the preference rate > MIN_PREFERENCE_RATE.
    """
    out: dict = {"lines": []}
    if rich is not None:
        gain, sep, copy = rich.get("teacher_gain"), rich.get("gap_separation"), rich.get("copy_share")
        helps = gain is not None and gain >= MIN_TEACHER_GAIN
        separates = sep is not None and sep > MIN_GAP_SEPARATION
        copies = copy is not None and copy > MAX_COPY_SHARE
        if helps and separates and not copies:
            rec, why = "SDPO", "the self-teacher is better than the student and its signal points the right way"
        elif helps or separates:
            rec = "hybrid"
            missing = [name for name, ok in (("lifts accuracy", helps), ("separates right from wrong", separates),
                                             ("does not copy its context", not copies)) if not ok]
            why = "the self-teacher is only partly reliable (it does not: " + ", ".join(missing) + \
                  "); use SDPOConfig(sample_routing=True) so successful rollouts get GRPO"
        else:
            rec, why = "GRPO", "the self-teacher is no better than the student; use SDPOConfig(enabled=False)"
        out["rich_feedback"] = {"recommendation": rec, "teacher_helps": helps, "signal_separates": separates,
                                "copies_context": copies, "reason": why}
        out["lines"] += [
            f"greedy accuracy: plain {_fmt(rich.get('accuracy_plain_same_problems'))} -> teacher context "
            f"{_fmt(rich.get('accuracy_teacher'))} (gain {_fmt(gain, '+.3f')}, {rich.get('n_with_teacher')} problems)",
            f"teacher - student log-prob gap: correct rollouts {_fmt(rich.get('gap_correct'), '+.2f')}, incorrect "
            f"{_fmt(rich.get('gap_incorrect'), '+.2f')} (separation {_fmt(sep, '+.2f')})",
            f"teacher answers copying teacher-only phrases: {_fmt(copy)}",
            f"rich feedback: {rec} - {why}",
        ]
        out["recommendation"] = rec
    if user is not None:
        sel, pref = user.get("selectivity"), user.get("preference_rate")
        usable = (sel is not None and sel > MIN_SELECTIVITY) and (pref is not None and pref > MIN_PREFERENCE_RATE)
        out["user_interactions"] = {"signal_usable": usable}
        out["lines"] += [
            f"user follow-ups: selectivity {_fmt(sel)} (relevant / unrelated, > {MIN_SELECTIVITY} wanted), teacher "
            f"prefers the satisfying response in {_fmt(pref)} of {user.get('n_pairs')} persona pairs",
            "user interactions: " + ("the hindsight signal is about the feedback; online SDPO can learn from it"
                                     if usable else "the hindsight signal is not selective enough; expect little "
                                     "from online SDPO with this model (try a larger one). Measured on the embedded "
                                     "135M model (benchmarks/RESULTS.md, 200 held-out requests, 3 personas, 2 seeds): "
                                     "the reference signal collapsed into loops and filler (40-48% non-answers, "
                                     "judged worse than the base model everywhere); --contrastive_followup neutral "
                                     "avoided it (2-8% non-answers, base 6%) and won more pairs than it lost in all "
                                     "6 runs, significantly on both seeds for 1 persona of 3 only: no setting "
                                     "reliably teaches a persona at that size"),
        ]
    return out
