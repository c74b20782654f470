"""One SDPO update on a batch of ``(x, y, o)`` examples.

This is the step ``sdpo train-online`` takes per micro-batch and ``sdpo chat`` takes per
follow-up; both call :func:`sdpo_update`, so there is one copy of the method:

1. the teacher context of each example is ``x`` with the follow-up ``o`` placed by the
   template (:func:`sdpo.templates.fit_context`, cut to ``max_context_tokens``); the
   student context is ``x`` alone (given, or fitted the same way);
2. the response ``y`` (token ids as generated) is scored under both contexts with the
   signal core (:func:`sdpo.signal.hindsight_logprobs`: student with gradient, teacher
   without);
3. the loss is either the online trainer's log-ratio policy gradient
   (:func:`sdpo.losses.advantage_pg_loss`: per-token advantage ``A_t = q_t - s_t``,
   centred per sequence by default, PPO ratio clip) or top-k distillation with a tail
   bucket (:func:`sdpo.losses.topk_distillation` on the student's top-k tokens, reverse
   KL by default, token mean over the batch: the reference live chat's
   ``full_distillation`` mode);
4. backward, gradient clipping, one optimizer step.

With an ``accelerate.Accelerator`` the step runs inside ``accelerator.accumulate`` and
uses its ``backward`` / ``clip_grad_norm_`` (gradient accumulation, DDP, DeepSpeed,
FSDP); without one it is plain PyTorch. ``step_lock`` (a context manager) is held only
while the weights change (``before_step`` hook, ``optimizer.step``, ``zero_grad``), so a
reader that holds the same lock sees the weights of one version or the next, never a mix.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from sdpo.losses import CENTERING, advantage_pg_loss, sequence_advantages, token_logprobs, topk_distillation
from sdpo.signal import EncodedExample, completion_logprobs, hindsight_logprobs
from sdpo.templates import fit_context

LOSSES = ("policy_gradient", "topk_distillation")
TEACHERS = ("live", "start")  # who scores the hindsight context: the policy now, or its frozen starting weights


@dataclass
class UpdateOptions:
    """How one update is computed (the matching fields of a trainer's config fill it)."""

    loss: str = "policy_gradient"
    max_context_tokens: int = 2048
    ignore_first_tokens: int = 0
    advantage_centering: str = "sequence"
    advantage_clip: float | None = None
    ppo_clip: float | None = 0.2
    mask_eos_advantage: bool = False
    max_grad_norm: float = 1.0
    distillation_topk: int = 50
    distillation_add_tail: bool = True
    distillation_alpha: float = 1.0  # 1 = reverse KL(student || teacher), the reference live chat's
    rule_reward_weight: float = 0.0  # > 0: each example's ``reward`` enters as w * (r - batch mean)
    # ours, off by default (docs/FIDELITY.md): remove what any follow-up would cause
    contrastive_followup: str | None = None  # A_t = log p(y_t|x,o) - log p(y_t|x,o0), o0 this preset or text
    selectivity_threshold: float = 0.0  # > 0: drop tokens whose shift under o0 is within this of the shift under o
    kl_to_start: float = 0.0  # > 0: + coefficient * KL(policy || starting model) per token (k3), needs a reference
    teacher: str = "live"  # live: the policy being trained scores the hindsight context (the reference); start: a
    #                        frozen copy of the starting weights does (needs a reference model), no teacher-student loop

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.advantage_centering not in CENTERING:
            raise ValueError(f"advantage_centering must be one of {CENTERING}, got {self.advantage_centering!r}")
        if self.distillation_topk < 1:
            raise ValueError(f"distillation_topk must be >= 1, got {self.distillation_topk}")
        if not 0.0 <= self.distillation_alpha <= 1.0:
            raise ValueError(f"distillation_alpha must be in [0, 1], got {self.distillation_alpha}")
        check_signal_options(self)

    @classmethod
    def from_config(cls, cfg: Any, **overrides) -> "UpdateOptions":
        """The options a config object carries under the same names (others keep their defaults)."""
        values = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cls) if hasattr(cfg, f.name)}
        values.update(overrides)
        return cls(**values)


# o0 of the contrastive signal: a generic reply of the same kind as the follow-ups, so the shift
# that *any* such reply causes (a complaint read as hindsight raises apologies) cancels
CONTRASTIVE_PRESETS = {
    "neutral": "Okay.",
    "complaint": "That's not what I wanted.",
    "matched": None,  # per follow-up: "Thanks." for a satisfied one, the generic complaint otherwise
}
_SATISFIED = re.compile(
    r"^(?!.*\b(?:but|not|don't|too|less|more|instead|please|can you|could you)\b).*\b(?:thanks|thank you|great|"
    r"perfect|just what i wanted|love it|nice|awesome)\b", re.I | re.S)


def generic_followup(preset_or_text: str, followup: str) -> str:
    """The o0 for ``followup`` under a preset name of :data:`CONTRASTIVE_PRESETS` or a literal text."""
    if preset_or_text == "matched":
        return "Thanks." if _SATISFIED.search(followup.strip()) else CONTRASTIVE_PRESETS["complaint"]
    return CONTRASTIVE_PRESETS.get(preset_or_text) or preset_or_text


def check_signal_options(opt) -> None:
    """The contrastive / selectivity / KL options of any config, checked before the model loads."""
    import math

    c = getattr(opt, "contrastive_followup", None)
    if c is not None and not str(c).strip():
        raise ValueError("contrastive_followup must be a preset (" + ", ".join(CONTRASTIVE_PRESETS)
                         + ") or a non-empty reply text")
    teacher = getattr(opt, "teacher", "live")
    if teacher not in TEACHERS:
        raise ValueError(f"teacher must be one of {', '.join(TEACHERS)}, got {teacher!r}")
    for name in ("selectivity_threshold", "kl_to_start"):
        value = getattr(opt, name, 0.0)
        if value is None or not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value}")


def selectivity_weights(teacher, generic, student, threshold: float):
    """Per token 1.0 where the follow-up moves the token's log-prob differently from the generic
    reply (``|q_t - g_t| >= threshold``), 0.0 where the shift is the same whatever was said."""
    return [((q - g).abs() >= threshold).float() for q, g, s in zip(teacher, generic, student)]


@dataclass
class UpdateExample:
    """``x`` (a prompt or chat messages, as the template takes them), the response token ids
    as generated (EOS kept when the response ended), and the follow-up text. ``context``: the
    student context ids when already rendered (the ids the response was generated from)."""

    messages: Any
    response: list[int]
    followup: str
    context: list[int] | None = None
    reward: float | None = None  # a scalar from the feedback source (needed when rule_reward_weight > 0)
    weight: float = 1.0  # multiplies the advantage; 0 = no feedback for this example (e.g. a failed follow-up)


@dataclass
class UpdateResult:
    loss: float
    stats: dict[str, float]
    student: list[torch.Tensor]  # per-token log p(y_t | x, y_<t), detached, float32
    teacher: list[torch.Tensor]  # per-token log p(y_t | x with o, y_<t)
    eos_signal: list[float]  # teacher - student at the EOS of the responses that ended
    truncated: int  # contexts cut to max_context_tokens
    timings: dict[str, float] = field(default_factory=dict)
    advantages: list[list[float]] = field(default_factory=list)  # per token, as trained (policy gradient)

    @property
    def signals(self) -> list[list[float]]:
        """The per-token signal ``A_t = q_t - s_t`` of each response (uncentred)."""
        return [(q - s).tolist() for s, q in zip(self.student, self.teacher)]


def _response_logits(model, context: Sequence[int], response: Sequence[int]) -> torch.Tensor:
    """Logits at the positions that predict ``response`` (one forward of context + response)."""
    device = next(model.parameters()).device
    ids = torch.tensor([list(context) + list(response)], device=device)
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), logits_to_keep=len(response) + 1)
    return out.logits[0, :-1]


def sdpo_update(
    model,
    optimizer,
    tokenizer,
    template,
    examples: Sequence[UpdateExample],
    options: UpdateOptions | Any,
    *,
    accelerator=None,
    step_lock=None,
    before_step: Callable[[], None] | None = None,
    reference_model=None,
) -> UpdateResult:
    """Score ``examples``, compute the loss, backward, clip, step (see the module docstring).

    ``options``: an :class:`UpdateOptions` or any config with the same field names.
    ``reference_model``: the frozen starting model, for ``kl_to_start`` (its log-probs of each
    response in the student context) and ``teacher="start"`` (it scores the hindsight and generic
    contexts instead of the policy).
    """
    opt = options if isinstance(options, UpdateOptions) else UpdateOptions.from_config(options)
    tok = tokenizer
    timings: dict[str, float] = {}
    t_score = time.perf_counter()
    encoded, truncated = [], 0
    for ex in examples:
        context = ex.context
        if context is None:
            context, over = fit_context(tok, template, ex.messages, opt.max_context_tokens)
            truncated += int(over > 0)
        teacher_ctx, over = fit_context(tok, template, ex.messages, opt.max_context_tokens, followup=ex.followup)
        truncated += int(over > 0)
        encoded.append(EncodedExample(context, teacher_ctx, list(ex.response) or [tok.eos_token_id]))
    responses = [e.response for e in encoded]
    generic_ctx = None
    if (opt.contrastive_followup is not None or opt.selectivity_threshold) and opt.loss == "policy_gradient":
        o0 = opt.contrastive_followup or "matched"  # selectivity alone compares with the matched generic reply
        generic_ctx = [fit_context(tok, template, ex.messages, opt.max_context_tokens,
                                   followup=generic_followup(o0, ex.followup))[0]
                       for ex in examples]
    if opt.kl_to_start and reference_model is None:
        raise ValueError("kl_to_start > 0 needs the starting model (reference_model)")
    frozen = opt.teacher == "start"
    if frozen and reference_model is None:
        raise ValueError("teacher='start' needs the starting model (reference_model)")
    scorer = reference_model if frozen else model  # who scores the hindsight (and generic) contexts
    accumulate = accelerator.accumulate(model) if accelerator is not None else contextlib.nullcontext()
    with accumulate:
        if opt.loss == "policy_gradient":
            if frozen:  # two models: the student with its gradient, the frozen start as the teacher
                student = completion_logprobs(model, [e.student_context for e in encoded], responses,
                                              pad_token_id=tok.pad_token_id)
                with torch.no_grad():
                    teacher = completion_logprobs(reference_model, [e.teacher_context for e in encoded], responses,
                                                  pad_token_id=tok.pad_token_id)
            else:
                student, teacher = hindsight_logprobs(model, encoded, pad_token_id=tok.pad_token_id,
                                                      student_grad=True)
            student_logits = teacher_logits = None
            generic = reference = None
            with torch.no_grad():
                if generic_ctx is not None:
                    generic = completion_logprobs(scorer, generic_ctx, responses, pad_token_id=tok.pad_token_id)
                if reference_model is not None and opt.kl_to_start:
                    reference = completion_logprobs(reference_model, [e.student_context for e in encoded],
                                                    responses, pad_token_id=tok.pad_token_id)
        else:
            student_logits = [_response_logits(model, e.student_context, e.response) for e in encoded]
            with torch.no_grad():
                teacher_logits = [_response_logits(scorer, e.teacher_context, e.response) for e in encoded]
            student, teacher = [], []
            for sl, tl, e in zip(student_logits, teacher_logits, encoded):
                ids = torch.tensor(e.response, device=sl.device)
                student.append(token_logprobs(sl, ids))
                teacher.append(token_logprobs(tl, ids).detach())
        timings["time/score"] = time.perf_counter() - t_score
        t_update = time.perf_counter()
        ended = [bool(r) and r[-1] == tok.eos_token_id for r in responses]
        eos_signal = (torch.stack([q[-1] - s[-1].detach() for s, q, e in zip(student, teacher, ended) if e])
                      .tolist() if any(ended) else [])  # one device sync, not one per sequence
        if opt.mask_eos_advantage:
            student = [s[:-1] if e else s for s, e in zip(student, ended)]
            teacher = [q[:-1] if e else q for q, e in zip(teacher, ended)]
            if opt.loss == "policy_gradient":
                generic = None if generic is None else [g[:-1] if e else g for g, e in zip(generic, ended)]
                reference = None if reference is None else [r[:-1] if e else r for r, e in zip(reference, ended)]
        if opt.loss == "policy_gradient":
            scalar = None
            if opt.rule_reward_weight:
                rewards = [ex.reward for ex in examples]
                if any(r is None for r in rewards):
                    raise ValueError("rule_reward_weight > 0 needs a reward on every example")
                baseline = sum(rewards) / len(rewards)
                scalar = [opt.rule_reward_weight * (r - baseline) for r in rewards]
            weights = (selectivity_weights(teacher, generic, student, opt.selectivity_threshold)
                       if opt.selectivity_threshold and generic is not None else None)
            if any(ex.weight != 1.0 for ex in examples):
                weights = [(w if w is not None else torch.ones_like(s_, dtype=torch.float32)) * ex.weight
                           for w, s_, ex in zip(weights or [None] * len(student), student, examples)]
            loss, stats = advantage_pg_loss(
                student, teacher, ignore_first=opt.ignore_first_tokens, centering=opt.advantage_centering,
                clip=opt.advantage_clip, old=[s.detach() for s in student], ppo_clip=opt.ppo_clip,
                scalar=scalar, baseline=generic if opt.contrastive_followup is not None else None,
                token_weights=weights,
                reference=reference, kl_coef=opt.kl_to_start if reference is not None else 0.0,
            )
            if opt.selectivity_threshold and weights is not None:
                kept = torch.cat([w[opt.ignore_first_tokens:] for w in weights])
                stats["selectivity_kept"] = kept.mean().item() if kept.numel() else 0.0
            advantages = []
            for i, (s_, q_) in enumerate(zip(student, teacher)):
                base = generic[i] if opt.contrastive_followup is not None else s_
                adv, _ = sequence_advantages(base, q_, ignore_first=opt.ignore_first_tokens,
                                             centering=opt.advantage_centering, clip=opt.advantage_clip)
                if weights is not None:
                    adv = adv * weights[i]
                if scalar is not None:
                    adv = adv + scalar[i]
                adv[: opt.ignore_first_tokens] = 0.0
                advantages.append(adv.tolist())
        else:
            advantages = []
            loss, stats = _topk_loss(student, teacher, student_logits, teacher_logits, ended, opt)
        grad_norm = None
        if accelerator is not None:
            accelerator.backward(loss)
            if accelerator.sync_gradients and opt.max_grad_norm:
                grad_norm = accelerator.clip_grad_norm_(model.parameters(), opt.max_grad_norm)
        else:
            loss.backward()
            if opt.max_grad_norm:
                grad_norm = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad],
                                                           opt.max_grad_norm)
        if grad_norm is not None:
            stats["grad_norm"] = float(grad_norm)
        with step_lock if step_lock is not None else contextlib.nullcontext():
            if before_step is not None:
                before_step()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    timings["time/update"] = time.perf_counter() - t_update
    return UpdateResult(
        loss=loss.item(), stats=stats, student=[s.detach().float() for s in student],
        teacher=[q.detach().float() for q in teacher], eos_signal=eos_signal, truncated=truncated, timings=timings,
        advantages=advantages,
    )


def _topk_loss(student, teacher, student_logits, teacher_logits, ended, opt: UpdateOptions):
    """Top-k (+ tail) generalized JSD per position; the mean over all valid tokens of the batch."""
    per_token, signals = [], []
    for i, (sl, tl) in enumerate(zip(student_logits, teacher_logits)):
        if opt.mask_eos_advantage and ended[i]:
            sl, tl = sl[:-1], tl[:-1]
        d = topk_distillation(sl, tl, k=opt.distillation_topk, alpha=opt.distillation_alpha,
                              add_tail=opt.distillation_add_tail)
        per_token.append(d[opt.ignore_first_tokens:])
        signals.append((teacher[i].detach() - student[i].detach()).float()[opt.ignore_first_tokens:])
    flat = torch.cat(per_token)
    if flat.numel() == 0:
        zero = sum(s.sum() for s in student_logits) * 0.0
        return zero, {"sequences": 0.0}
    loss = flat.mean()
    signal = torch.cat(signals)
    stats = {
        "signal_mean": signal.mean().item(),
        "signal_abs_mean": signal.abs().mean().item(),
        "signal_std": signal.std().item() if signal.numel() > 1 else 0.0,
        "response_tokens": float(signal.numel()),
        "sequences": float(sum(1 for p in per_token if p.numel())),
        "distillation_loss": loss.item(),
    }
    return loss, stats
