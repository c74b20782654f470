"""SDPO from rich feedback: ``SDPOTrainer`` / ``SDPOConfig``.

Several rollouts per prompt are scored by reward functions that may also explain
what went wrong (``{"score": float, "feedback": str}``). Each rollout's teacher is
the same model shown the request plus a successful *peer* from its group (never
the rollout itself) and/or the feedback; the student is distilled toward it on the
rollout's own tokens.

Why this shape: TRL (pinned, 1.16) ships the machinery in
``trl.experimental.sdpo.SDPOTrainer``: grouped generation (transformers or vLLM),
EMA/live/base teachers (also as a LoRA adapter, and under DeepSpeed/FSDP), the
GRPO policy loss, logging. What it lacks is feedback that depends on the generated
rollout (its feedback column is static per dataset row). We subclass it and change
three things:

1. reward functions may return ``{"score", "feedback"}`` dicts; the feedback of
   every rollout is kept and used when the teacher context is built;
2. teacher selection and the reprompt text are ours (:func:`choose_teachers`,
   :func:`sdpo.templates.render_reprompt`): a pure, tested function with the rules
   below, and a configurable thinking tag;
3. the distillation loss uses :mod:`sdpo.losses` (checked against float64
   references), with the importance weight ``min(ratio, is_clip) ** is_coef`` (none
   when ``is_clip`` is None), aggregated as the references do: the mean over the
   active tokens of the batch (``loss_aggregation="token_mean"``; TRL's mean of
   per-sequence means is ``"sequence_mean_trl"``).

The user-facing API follows the seed: ``SDPOTrainer(model=..., args=GRPOConfig(...),
sdpo_config=SDPOConfig(...), processing_class=tok, reward_funcs=[fn],
train_dataset=ds)``. ``args`` may also be TRL's own experimental ``SDPOConfig``.
The seed's import path ``from sdpo_trainer import SDPOTrainer, SDPOConfig`` is a thin
alias of this module, and its teacher modes ``"copy"`` / ``"fixed"`` are accepted.

Importing this module also makes TRL's configs (``GRPOConfig``, TRL's SDPOConfig)
choose bf16 only where the machine supports it: left unset (``bf16=None``), TRL turns
bf16 on everywhere and transformers then refuses to build the config on a machine
without a bf16-capable accelerator; here it becomes False there (fp32), so the same
script runs on a CPU machine and, in bf16, on a GPU. An explicit ``bf16=True`` still
gets transformers' error.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from .. import losses
from ..templates import (
    DEFAULT_DEMONSTRATION_TEMPLATE,
    DEFAULT_FEEDBACK_TEMPLATE,
    DEFAULT_REPROMPT_TEMPLATE,
    check_reprompt_templates,
    render_reprompt,
    strip_thinking,
)

logger = logging.getLogger(__name__)

# Our teacher modes -> TRL's ``teacher_model_kind``. "copy" and "fixed" are the seed's
# names: "copy" is the current student itself (the reference's default when no EMA
# teacher is kept: the actor scores its own reprompted inputs), "fixed" the initial model.
TEACHER_MODES = {"ema": "ema", "live": "live", "frozen": "base", "copy": "live", "fixed": "base"}


DEMONSTRATION_SELECTIONS = ("first", "best")


class SDPOConfigError(ValueError):
    """An invalid SDPOConfig (raised at construction, saying why)."""


@dataclass
class SDPOConfig:
    """Self-distillation options (the generation/optimisation ones live in ``GRPOConfig``)."""

    enabled: bool = True
    """Train purely on self-distillation. False: plain GRPO on the rewards (the baseline)."""
    alpha: float = 0.5
    """Generalized JSD weight: 0 = forward KL(teacher||student), 1 = reverse KL(student||teacher)."""
    distillation_topk: int | None = 100
    """Compare distributions on the student's top-k tokens. None (with full_logit_distillation False)
    selects sampled-token distillation (reverse KL on the generated tokens; needs alpha = 1)."""
    distillation_add_tail: bool = True
    """With top-k: one extra category for the remaining probability mass (else renormalise the top-k)."""
    full_logit_distillation: bool = False
    """Compare full-vocabulary distributions (overrides distillation_topk)."""
    teacher_mode: str = "ema"
    """ema: exponential moving average of the student; live: the current student; frozen: the initial model.
    The seed's names are accepted: "copy" = live, "fixed" = frozen."""
    ema_tau: float = 0.05
    """EMA rate: teacher <- (1 - tau) teacher + tau student."""
    ema_update_every: int = 1
    """Optimizer steps between EMA updates."""
    skip_nonfinite_steps: bool = True
    """A step whose gradient norm is not finite (inf/NaN) changes nothing: its gradients are dropped (the
    optimizer leaves every weight as it is) and the EMA teacher is not updated, as lasgroup/SDPO
    (``verl/workers/actor/dp_actor.py`` ``_optimizer_step`` and ``update_policy``). Counted in
    ``trainer.nonfinite_steps``. False: TRL's behaviour (the optimizer steps and the EMA follows). Not
    applied under DeepSpeed, whose engine owns the step."""
    is_coef: float = 1.0
    """Exponent of the clipped importance weight for off-policy steps (0 disables the correction;
    the references have no exponent, i.e. 1)."""
    is_clip: float | None = 2.0
    """Upper clip of the importance ratio pi/pi_old. None: no importance weighting at all (as in
    lasgroup/SDPO and sdpo-rl); float("inf"): the unclipped ratio."""
    loss_aggregation: str = "token_mean"
    """How per-token losses become the batch loss. token_mean (the references): the mean over the
    active tokens of the batch, so rollouts without a teacher do not dilute it; sequence_mean_trl
    (TRL's): the mean over all rollouts of each rollout's token mean, a rollout without a teacher
    counting as zero."""
    reprompt_teacher: bool = True
    """Show the teacher a successful peer rollout from the same group."""
    success_reward_threshold: float = 1.0
    """A rollout with total reward >= this is a successful demonstration."""
    demonstration_selection: str = "first"
    """Which successful peer is shown: first (the references: the first successful peer of the group,
    in rollout order) or best (the highest-reward successful peer, first on ties)."""
    dont_reprompt_on_self_success: bool = True
    """A rollout is never its own demonstration (kept for configs written for the reference code;
    False is refused)."""
    include_environment_feedback: bool = True
    """Put the reward function's feedback text in the teacher context."""
    environment_feedback_only_without_solution: bool = True
    """Use the feedback only for rollouts that have no successful peer."""
    thinking_tag: str | None = "<think>"
    """Strip <tag>...</tag> blocks from demonstrations (None keeps them)."""
    teacher_prompt_template: str = DEFAULT_REPROMPT_TEMPLATE
    """The teacher's user message, with {prompt}, {demonstration} and {feedback}."""
    demonstration_template: str = DEFAULT_DEMONSTRATION_TEMPLATE
    """How a demonstration is inserted ({demonstration}); empty when there is none."""
    feedback_template: str = DEFAULT_FEEDBACK_TEMPLATE
    """How feedback is inserted ({feedback}); empty when it is not used."""
    max_teacher_prompt_length: int = 10240
    """Teacher prompts are truncated from the left to this many tokens."""
    # --- hybrids of GRPO and self-distillation: our options, all off by default (plain SDPO) ---
    grpo_mix: float = 0.0
    """lambda-mix: the per-token objective lambda * GRPO + (1 - lambda) * SDPO on every rollout (token mean over
    the completions; the GRPO term is the clipped policy gradient with the group-normalised advantage).
    0 = off (plain SDPO); must be < 1 (use enabled=False for plain GRPO)."""
    sample_routing: bool = False
    """SRPO (arXiv 2604.02288): successful rollouts (reward >= success_reward_threshold) get the GRPO term,
    failed rollouts with a teacher the self-distillation term, entropy-weighted (entropy_weight_beta)."""
    entropy_weight_beta: float | None = None
    """Weight each distillation token by exp(-beta * H), H the teacher's next-token entropy (nats), damping
    unreliable targets. None: 1.0 with sample_routing (SRPO's default), off otherwise; 0: off."""
    pass_rate_weighting: bool = False
    """SC-SDPO (arXiv 2605.27765): each rollout's distillation loss times sqrt(p (1 - p)), p its group's pass rate
    (share of rollouts with reward >= success_reward_threshold)."""
    pass_rate_normalization: str = "batch_mean"
    """batch_mean: the pass-rate weights are divided by their mean over the batch's rollouts with a teacher (the
    loss keeps its scale); none: raw sqrt(p (1 - p))."""

    def __post_init__(self):
        def bad(message):
            raise SDPOConfigError(f"SDPOConfig: {message}")

        if not 0.0 <= self.alpha <= 1.0:
            bad(f"alpha must be in [0, 1], got {self.alpha}")
        if self.teacher_mode not in TEACHER_MODES:
            bad(f"teacher_mode must be one of {sorted(TEACHER_MODES)}, got {self.teacher_mode!r}")
        if not 0.0 < self.ema_tau <= 1.0:
            bad(f"ema_tau must be in (0, 1], got {self.ema_tau}")
        if self.ema_update_every < 1:
            bad(f"ema_update_every must be >= 1, got {self.ema_update_every}")
        if self.distillation_topk is not None and self.distillation_topk < 1:
            bad(f"distillation_topk must be >= 1 or None, got {self.distillation_topk}")
        if self.mode == "sampled_token" and self.alpha != 1.0:
            bad(
                "sampled-token distillation (distillation_topk=None, full_logit_distillation=False) only "
                f"estimates the reverse KL, so it needs alpha=1.0 (got {self.alpha}); set distillation_topk "
                "or full_logit_distillation for other alphas"
            )
        if self.is_clip is not None and not self.is_clip > 0:
            bad(f"is_clip must be > 0 or None, got {self.is_clip}")
        if self.is_coef < 0:
            bad(f"is_coef must be >= 0, got {self.is_coef}")
        if self.demonstration_selection not in DEMONSTRATION_SELECTIONS:
            bad(f"demonstration_selection must be one of {list(DEMONSTRATION_SELECTIONS)}, "
                f"got {self.demonstration_selection!r}")
        if self.loss_aggregation not in losses.LOSS_AGGREGATIONS:
            bad(f"loss_aggregation must be one of {list(losses.LOSS_AGGREGATIONS)}, got {self.loss_aggregation!r}")
        if not self.dont_reprompt_on_self_success:
            bad(
                "dont_reprompt_on_self_success=False would let a rollout be its own demonstration; the teacher "
                "would then see the very answer it scores and the target degenerates to copying"
            )
        if self.enabled and not self.reprompt_teacher and not self.include_environment_feedback:
            bad(
                "with reprompt_teacher=False and include_environment_feedback=False the teacher never sees "
                "anything the student does not, so there is nothing to distil"
            )
        if self.thinking_tag is not None and not re.fullmatch(r"<[A-Za-z_][\w:-]*>", self.thinking_tag):
            bad(f"thinking_tag must look like '<think>', got {self.thinking_tag!r}")
        if self.max_teacher_prompt_length < 1:
            bad("max_teacher_prompt_length must be >= 1")
        if not 0.0 <= self.grpo_mix < 1.0:
            bad(f"grpo_mix must be in [0, 1) (0 = plain SDPO; for plain GRPO use enabled=False), got {self.grpo_mix}")
        if self.grpo_mix > 0 and self.sample_routing:
            bad("grpo_mix and sample_routing are two different hybrids; choose one")
        if self.entropy_weight_beta is not None and self.entropy_weight_beta < 0:
            bad(f"entropy_weight_beta must be >= 0 or None, got {self.entropy_weight_beta}")
        if self.pass_rate_normalization not in losses.PASS_RATE_NORMALIZATIONS:
            bad(f"pass_rate_normalization must be one of {list(losses.PASS_RATE_NORMALIZATIONS)}, "
                f"got {self.pass_rate_normalization!r}")
        if not self.enabled and self.hybrid != "none":
            bad("enabled=False is plain GRPO; grpo_mix, sample_routing, pass_rate_weighting and "
                "entropy_weight_beta need enabled=True")
        try:
            check_reprompt_templates(self.teacher_prompt_template, self.demonstration_template, self.feedback_template)
        except ValueError as exc:
            bad(str(exc))

    @property
    def hybrid(self) -> str:
        """Which objective: none (plain SDPO), lambda_mix, routing, or pass_rate / entropy (weighted SDPO)."""
        if self.grpo_mix > 0:
            return "lambda_mix"
        if self.sample_routing:
            return "routing"
        if self.pass_rate_weighting:
            return "pass_rate"
        if self.entropy_beta > 0:
            return "entropy"
        return "none"

    @property
    def entropy_beta(self) -> float:
        """The entropy weight's beta in effect (0 = no entropy weighting)."""
        if self.entropy_weight_beta is None:
            return 1.0 if self.sample_routing else 0.0
        return float(self.entropy_weight_beta)

    @property
    def mode(self) -> str:
        if self.full_logit_distillation:
            return "full"
        if self.distillation_topk is not None:
            return "topk"
        return "sampled_token"

    def per_token_loss(self, student_logits, teacher_logits, completion_ids) -> torch.Tensor:
        if self.mode == "full":
            return losses.full_distillation(student_logits, teacher_logits, self.alpha)
        if self.mode == "topk":
            return losses.topk_distillation(
                student_logits, teacher_logits, k=self.distillation_topk, alpha=self.alpha,
                add_tail=self.distillation_add_tail,
            )
        return losses.sampled_token_distillation(student_logits, teacher_logits, completion_ids)


# ---------------------------------------------------------------------------
# Teacher selection (pure)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TeacherChoice:
    demonstration: int | None
    """Index (in the gathered batch) of the peer whose completion is shown, if any."""
    use_feedback: bool

    @property
    def active(self) -> bool:
        return self.demonstration is not None or self.use_feedback


def _has_text(value) -> bool:
    return isinstance(value, str) and value.strip() != ""


def choose_teachers(
    rewards: Sequence[float], feedbacks: Sequence[str | None], num_generations: int, config: SDPOConfig
) -> list[TeacherChoice]:
    """Per rollout: which successful peer (never itself) and whether its feedback goes in.

    Rollouts are grouped by prompt in consecutive blocks of ``num_generations``. The
    demonstration is the group's first successful peer (``demonstration_selection="first"``,
    as the references) or its highest-reward one (``"best"``, first on ties). A rollout
    with neither a demonstration nor feedback is inactive (masked out).
    """
    n = len(rewards)
    if n % num_generations:
        raise ValueError(f"{n} rollouts do not split into groups of {num_generations}")
    if len(feedbacks) != n:
        raise ValueError(f"{len(feedbacks)} feedback entries for {n} rollouts")
    ok = [not math.isnan(float(r)) and float(r) >= config.success_reward_threshold for r in rewards]
    choices = []
    for i in range(n):
        start = (i // num_generations) * num_generations
        demo = None
        if config.reprompt_teacher:
            peers = [j for j in range(start, start + num_generations) if j != i and ok[j]]
            if peers and config.demonstration_selection == "best":
                demo = max(peers, key=lambda j: (float(rewards[j]), -j))
            elif peers:
                demo = peers[0]
        use_fb = (
            config.include_environment_feedback
            and _has_text(feedbacks[i])
            and (demo is None or not config.environment_feedback_only_without_solution)
        )
        choices.append(TeacherChoice(demo, use_fb))
    return choices


def teacher_prompt(original: Any, demonstration: str | None, feedback: str | None, config: SDPOConfig) -> Any:
    """The teacher's prompt: the last user message rewritten; other messages kept."""
    if demonstration is not None:
        demonstration = strip_thinking(demonstration, config.thinking_tag)
    kwargs = dict(
        demonstration=demonstration, feedback=feedback, teacher_template=config.teacher_prompt_template,
        demonstration_template=config.demonstration_template, feedback_template=config.feedback_template,
    )
    if isinstance(original, list):
        if not original or original[-1].get("role") != "user":
            raise ValueError("a conversational prompt must end with a user message to build the teacher prompt")
        content = original[-1].get("content", "")
        if isinstance(content, list):
            content = " ".join(p.get("text", "") for p in content if p.get("type") == "text")
        return [*original[:-1], {"role": "user", "content": render_reprompt(content, **kwargs)}]
    return render_reprompt(original, **kwargs)


# ---------------------------------------------------------------------------
# Teacher-context leakage: does the student echo what only the teacher was shown?
# ---------------------------------------------------------------------------

ECHO_NGRAM = 4
"""Word n-gram length of the echo (leakage) measure."""

_WORD = re.compile(r"[a-z0-9']+")


def word_ngrams(text: str, n: int = ECHO_NGRAM) -> set[tuple[str, ...]]:
    """Lower-cased word n-grams of ``text`` (letters, digits, apostrophes)."""
    words = _WORD.findall(text.lower())
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def template_phrases(config: SDPOConfig) -> list[str]:
    """The fixed text of the teacher templates, cut at every placeholder (phrases only the teacher sees)."""
    out = []
    for template in (config.teacher_prompt_template, config.demonstration_template, config.feedback_template):
        out.extend(part for part in re.split(r"\{\w+\}", template) if part.strip())
    return out


def teacher_only_ngrams(teacher_texts: Sequence[str], student_text: str, n: int = ECHO_NGRAM) -> set[tuple[str, ...]]:
    """n-grams of the teacher-only texts (template phrases, feedback) that the student's prompt lacks."""
    grams: set[tuple[str, ...]] = set()
    for text in teacher_texts:
        if _has_text(text):
            grams |= word_ngrams(text, n)
    return grams - word_ngrams(student_text, n)


def echoes_teacher_context(completion: str, teacher_ngrams: set, n: int = ECHO_NGRAM) -> bool:
    """Whether ``completion`` contains at least one teacher-only n-gram."""
    return bool(word_ngrams(completion, n) & teacher_ngrams)


def _prompt_text(prompt: Any) -> str:
    if isinstance(prompt, list):
        parts = []
        for message in prompt:
            content = message.get("content", "")
            if isinstance(content, list):
                content = " ".join(p.get("text", "") for p in content if p.get("type") == "text")
            parts.append(str(content))
        return "\n".join(parts)
    return str(prompt)


# ---------------------------------------------------------------------------
# Reward functions that explain themselves
# ---------------------------------------------------------------------------


class _ScoredReward:
    """Wraps a reward function; dict outputs are split into the score and the feedback text."""

    def __init__(self, func: Callable):
        self.func = func
        self.__name__ = getattr(func, "__name__", type(func).__name__)
        self.last_feedback: list[str | None] | None = None

    def __call__(self, prompts, completions, **kwargs):
        out = list(self.func(prompts=prompts, completions=completions, **kwargs))
        if len(out) != len(completions):
            raise ValueError(f"reward function {self.__name__} returned {len(out)} values for {len(completions)} completions")
        scores, feedback = [], []
        for k, item in enumerate(out):
            if isinstance(item, dict):
                if "score" not in item:
                    raise ValueError(f"reward function {self.__name__}: item {k} is a dict without 'score': {item!r}")
                score, fb = item["score"], item.get("feedback")
                if fb is not None and not isinstance(fb, str):
                    raise ValueError(f"reward function {self.__name__}: item {k} 'feedback' must be a string")
            else:
                score, fb = item, None
            scores.append(None if score is None else float(score))
            feedback.append(fb)
        self.last_feedback = feedback
        return scores


# ---------------------------------------------------------------------------
# GRPOConfig + SDPOConfig -> TRL's experimental SDPOConfig
# ---------------------------------------------------------------------------


def to_trl_config(args, config: SDPOConfig):
    """Build ``trl.experimental.sdpo.SDPOConfig`` from the user's GRPOConfig (or TrainingArguments)."""
    from trl import GRPOConfig
    from trl.experimental.sdpo import SDPOConfig as TRLSDPOConfig

    if args is None:
        args = GRPOConfig(output_dir="sdpo-output")
    trl_fields = {f.name for f in dataclasses.fields(TRLSDPOConfig) if f.init}
    values, ignored = {}, []
    fresh = None
    if isinstance(args, GRPOConfig):  # to name the GRPO-only options the user changed
        try:
            fresh = GRPOConfig(output_dir=args.output_dir, use_cpu=args.use_cpu, bf16=args.bf16, fp16=args.fp16)
        except ValueError:
            fresh = None
    for f in dataclasses.fields(args):
        if not f.init:
            continue
        value = getattr(args, f.name)
        if f.name in trl_fields:
            values[f.name] = value
        elif fresh is not None and value != getattr(fresh, f.name, value):
            ignored.append(f.name)
    if ignored:
        logger.warning("SDPOTrainer ignores these GRPOConfig options (not used by SDPO): %s", ", ".join(sorted(ignored)))
    # GRPOConfig.__post_init__ filled both; one determines the other.
    values.pop("generation_batch_size", None)
    if "report_to" in values:  # TRL's forms, commas too ("trackio,tensorboard"), which TrainingArguments does not split
        from sdpo.trackers import parse_report_to

        values["report_to"] = parse_report_to(values["report_to"])
    values.update(
        distillation_weight=1.0 if config.enabled else 0.0,
        distillation_alpha=config.alpha if config.mode != "sampled_token" else 1.0,
        distillation_mode={"full": "full_logits", "topk": "topk_logits", "sampled_token": "sampled_token"}[config.mode],
        distillation_topk=config.distillation_topk if config.mode == "topk" else None,
        distillation_add_tail=config.distillation_add_tail,
        distillation_is_clip=config.is_clip,
        teacher_model_kind=TEACHER_MODES[config.teacher_mode],
        teacher_update_rate=config.ema_tau,
        teacher_sync_steps=config.ema_update_every,
        max_reprompt_len=config.max_teacher_prompt_length,
        use_successful_as_teacher=config.reprompt_teacher,
        success_reward_threshold=config.success_reward_threshold,
        dont_reprompt_on_self_success=True,
        include_environment_feedback=config.include_environment_feedback,
        environment_feedback_only_without_solution=config.environment_feedback_only_without_solution,
        remove_thinking_from_demonstration=config.thinking_tag is not None,
    )
    return TRLSDPOConfig(**values)


# ---------------------------------------------------------------------------
# The trainer
# ---------------------------------------------------------------------------


def _trl_sdpo():
    import os
    import warnings

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # we pin TRL and test against it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from trl.experimental.sdpo import SDPOTrainer as TRLSDPOTrainer
        from trl.experimental.sdpo.sdpo_trainer import SuccessfulRolloutTeacherContextBuilder

    return TRLSDPOTrainer, SuccessfulRolloutTeacherContextBuilder


TRLSDPOTrainer, _TRLContextBuilder = _trl_sdpo()


def bf16_supported(use_cpu: bool = False) -> bool:
    """Whether transformers accepts ``bf16=True`` here (a bf16-capable GPU/XPU/NPU/XLA device, or use_cpu)."""
    from transformers.utils import is_torch_bf16_gpu_available, is_torch_xla_available

    return bool(use_cpu) or is_torch_bf16_gpu_available() or is_torch_xla_available()


def _choose_bf16_where_supported() -> None:
    """TRL's configs: ``bf16=None`` (unset) means bf16 where supported, fp32 elsewhere (see the module doc)."""
    from trl.trainer.base_config import _BaseConfig

    original = _BaseConfig.__post_init__
    if getattr(original, "_sdpo_auto_bf16", False):
        return

    def __post_init__(self, *args, **kwargs):
        if self.bf16 is None and not self.fp16 and not bf16_supported(self.use_cpu):
            self.bf16 = False
        return original(self, *args, **kwargs)

    __post_init__._sdpo_auto_bf16 = True
    __post_init__.__wrapped__ = original
    _BaseConfig.__post_init__ = __post_init__


_choose_bf16_where_supported()


class FeedbackTeacherContextBuilder(_TRLContextBuilder):
    """Builds teacher inputs from :func:`choose_teachers` with per-rollout feedback."""

    def build(self, output, prompts, rewards, feedbacks=None):
        from accelerate.utils import gather_object

        trainer = self.trainer
        cfg: SDPOConfig = trainer.sdpo_config
        acc = trainer.accelerator
        mode = "train" if trainer.model.training else "eval"
        num_generations = trainer.num_generations if mode == "train" else trainer.num_generations_eval
        completion_ids, completion_mask = output["completion_ids"], output["completion_mask"]
        n_local = len(prompts)
        start = acc.process_index * n_local

        dataset_fb = list(feedbacks) if feedbacks is not None else [None] * n_local
        rollout_fb = trainer._rollout_feedback if trainer._rollout_feedback is not None else [None] * n_local
        local_fb = [r if _has_text(r) else d for r, d in zip(rollout_fb, dataset_fb)]

        all_rewards = acc.gather(rewards).float().cpu().tolist()
        pad_id = trainer._tokenizer.pad_token_id
        padded = acc.pad_across_processes(completion_ids, dim=1, pad_index=pad_id)
        padded_mask = acc.pad_across_processes(completion_mask, dim=1, pad_index=0)
        all_ids, all_mask = acc.gather(padded), acc.gather(padded_mask)
        all_prompts = gather_object(prompts)
        all_fb = gather_object(local_fb)
        choices = choose_teachers(all_rewards, all_fb, num_generations, cfg)

        messages, active = [], []
        for g in range(start, start + n_local):
            choice = choices[g]
            active.append(1.0 if choice.active else 0.0)
            if not choice.active:
                messages.append(all_prompts[g])
                continue
            demo = None
            if choice.demonstration is not None:
                d = choice.demonstration
                demo = trainer.processing_class.decode(all_ids[d][all_mask[d].bool()], skip_special_tokens=True)
            messages.append(teacher_prompt(all_prompts[g], demo, all_fb[g] if choice.use_feedback else None, cfg))
        batch = self._tokenize_teacher_messages(messages)
        device = acc.device
        total = len(choices)
        groups = max(1, total // num_generations)
        success = [
            any(not math.isnan(r) and r >= cfg.success_reward_threshold for r in all_rewards[k : k + num_generations])
            for k in range(0, total, num_generations)
        ]
        self.last_metrics = {
            "self_distillation/success_group_fraction": sum(success) / groups,
            "self_distillation/success_sample_fraction": sum(c.demonstration is not None for c in choices) / total,
            "self_distillation/feedback_available_fraction": sum(_has_text(f) for f in all_fb) / total,
            "self_distillation/feedback_used_fraction": sum(c.use_feedback for c in choices) / total,
            "self_distillation/reprompt_sample_fraction": sum(c.active for c in choices) / total,
        }
        pass_rates = losses.group_pass_rates(all_rewards, num_generations, cfg.success_reward_threshold)
        trainer._last_pass_rates = pass_rates[start : start + n_local]
        trainer._last_success = [
            1.0 if not math.isnan(r) and r >= cfg.success_reward_threshold else 0.0
            for r in all_rewards[start : start + n_local]
        ]
        # leakage: completions that echo a phrase only the teacher context has (template text, feedback)
        phrases = template_phrases(cfg)
        texts = trainer.processing_class.batch_decode(
            [ids[m.bool()] for ids, m in zip(completion_ids, completion_mask)], skip_special_tokens=True
        )
        echo = [
            echoes_teacher_context(text, teacher_only_ngrams([*phrases, all_fb[g]], _prompt_text(all_prompts[g])))
            for text, g in zip(texts, range(start, start + n_local))
        ]
        echo_rate = sum(echo) / max(1, len(echo))
        if acc.num_processes > 1:
            echo_rate = acc.gather(torch.tensor([echo_rate], device=acc.device)).mean().item()
        self.last_metrics["self_distillation/teacher_context_echo_rate"] = echo_rate
        trainer._last_teacher_messages = messages
        return {
            "teacher_input_ids": torch.cat([batch["prompt_ids"], completion_ids], dim=1),
            "teacher_attention_mask": torch.cat([batch["prompt_mask"], completion_mask], dim=1),
            "self_distillation_mask": torch.tensor(active, device=device),
        }


class SDPOTrainer(TRLSDPOTrainer):
    """Self-distillation from peer demonstrations and environment feedback (see the module doc)."""

    def __init__(
        self,
        model,
        args=None,
        sdpo_config: SDPOConfig | None = None,
        processing_class=None,
        reward_funcs: Callable | Sequence[Callable] | None = None,
        train_dataset=None,
        eval_dataset=None,
        callbacks=None,
        optimizers=(None, None),
        peft_config=None,
        reward_processing_classes=None,
    ):
        from trl.experimental.sdpo import SDPOConfig as TRLSDPOConfig

        self.sdpo_config = sdpo_config if sdpo_config is not None else SDPOConfig()
        if not isinstance(self.sdpo_config, SDPOConfig):
            raise TypeError(f"sdpo_config must be sdpo.SDPOConfig, got {type(self.sdpo_config).__name__}")
        trl_args = args if isinstance(args, TRLSDPOConfig) else to_trl_config(args, self.sdpo_config)
        if reward_funcs is None:
            raise ValueError("SDPOTrainer needs reward_funcs: functions (prompts, completions, **columns) -> "
                             "list of floats or of {'score': float, 'feedback': str}")
        funcs = list(reward_funcs) if isinstance(reward_funcs, (list, tuple)) else [reward_funcs]
        self._scored = []
        wrapped = []
        for f in funcs:
            if isinstance(f, (str, torch.nn.Module)):
                wrapped.append(f)
            else:
                w = _ScoredReward(f)
                self._scored.append(w)
                wrapped.append(w)
        self._rollout_feedback: list[str | None] | None = None
        self._last_teacher_messages: list[Any] = []
        self._last_pass_rates: list[float] | None = None
        self._last_success: list[float] | None = None
        super().__init__(
            model=model, reward_funcs=wrapped, args=trl_args, train_dataset=train_dataset,
            eval_dataset=eval_dataset, processing_class=processing_class,
            reward_processing_classes=reward_processing_classes, callbacks=callbacks, optimizers=optimizers,
            peft_config=peft_config,
        )
        self.teacher_context_builder = FeedbackTeacherContextBuilder(self)
        self.nonfinite_steps = 0
        self._step_skipped = False
        self._guard_ema_callbacks()
        from pathlib import Path

        from sdpo.progress import WarningTally, filter_library_warnings, quiet_trainer

        filter_library_warnings()
        # one progress line with a few metrics instead of TRL's dict of ~30 metrics per step; every logged row
        # goes to <output_dir>/metrics.jsonl (and to the trackers, as before). To print the dicts again:
        # trainer.add_callback(transformers.PrinterCallback)
        quiet_trainer(self, Path(self.args.output_dir) / "metrics.jsonl" if self.args.output_dir else None)
        self.warning_tally = WarningTally()  # TRL's per-step diagnostics: once, then counted (see train)
        from sdpo.distributed import consolidate_zero3_saves

        consolidate_zero3_saves(self.accelerator)  # saved models load with from_pretrained under ZeRO-3 too

    def _get_grad_norm(self, model, grad_norm=None):
        """The gradient norm (``Trainer``'s); with ``skip_nonfinite_steps`` a non-finite one drops the gradients
        so that the optimizer step that follows changes no weight (the reference skips that step)."""
        norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        self._step_skipped = False
        if norm is not None and self.sdpo_config.skip_nonfinite_steps and not self.is_deepspeed_enabled:
            value = float(norm.item() if hasattr(norm, "item") else norm)
            if not math.isfinite(value):
                self._step_skipped = True
                self.nonfinite_steps += 1
                for p in model.parameters():
                    p.grad = None  # torch optimizers leave a parameter without a gradient untouched
                logger.warning("gradient norm %s at step %d: the step is skipped (weights and EMA teacher "
                               "unchanged; %d such steps so far)", value, self.state.global_step + 1,
                               self.nonfinite_steps)
        return norm

    # TRL's per-step diagnostics, in words that hold for this trainer (a routed or feedback-only step still
    # learns; with SDPO off, the run is GRPO): printed the first time, counted, summed up after training
    _DIAGNOSTICS = {
        "flat_rewards": "every rollout of every group scored the same: no group-relative (GRPO) signal at such a "
                        "step; SDPO's teacher still learns from the feedback where there is some",
        "no_successful_rollouts": "no successful rollout in any group: the teachers had the feedback text only, no "
                                  "peer demonstration",
        "inactive_self_distillation": "no teacher context (no successful peer and no feedback): nothing to distil "
                                      "at such a step",
    }
    _GRPO_DIAGNOSTICS = {
        "flat_rewards": "every rollout of every group scored the same: GRPO's advantages were zero at such a step",
    }

    def _warn_on_degenerate_diagnostics(self, mode: str, counter_key: str, message: str) -> None:
        if self.args.diagnostics_warning_interval == 0:
            return
        self._diagnostic_counters[mode][counter_key] += 1
        if not self.sdpo_config.enabled:  # plain GRPO: nothing about SDPO applies
            if counter_key in self._GRPO_DIAGNOSTICS:
                self.warning_tally.warn(f"grpo/{counter_key}", self._GRPO_DIAGNOSTICS[counter_key], show_first=False)
            return
        self.warning_tally.warn(counter_key, self._DIAGNOSTICS.get(counter_key, message))

    def train(self, *args, **kwargs):
        """``Trainer.train``; afterwards one line per repeated diagnostic, with the number of steps it held."""
        try:
            return super().train(*args, **kwargs)
        finally:
            self.warning_tally.print_summary(steps=self.state.global_step)

    def _guard_ema_callbacks(self) -> None:
        """The EMA teacher's callbacks (TRL's) skip the update after a skipped step."""
        from trl.experimental.sdpo.teacher_sync import PEFTAdapterEMACallback, SyncTeacherModelCallback

        for callback in self.callback_handler.callbacks:
            if isinstance(callback, (SyncTeacherModelCallback, PEFTAdapterEMACallback)):
                update = callback.on_step_end

                def guarded(args, state, control, _update=update, **kwargs):
                    if self._step_skipped:
                        return None
                    return _update(args, state, control, **kwargs)

                callback.on_step_end = guarded

    def save_model(self, output_dir=None, _internal_call=False):
        """Under FSDP with sharded checkpoints, the model saved by hand is one loadable file."""
        if not _internal_call:
            from sdpo.distributed import full_state_dict_for_final_save

            full_state_dict_for_final_save(self.accelerator)
        return super().save_model(output_dir, _internal_call=_internal_call)

    # The teacher for a non-PEFT student: TRL reloads it from the model's path; a
    # deep copy also works for models that have no path (built in memory, GGUF).
    def _setup_teacher_model(self) -> None:
        from accelerate.utils import is_peft_model
        from trl.experimental.sdpo.teacher_sync import SyncTeacherModelCallback

        kind = self.args.teacher_model_kind
        if kind == "live" or is_peft_model(self.model) or self.is_deepspeed_enabled or self.is_fsdp_enabled:
            return super()._setup_teacher_model()
        teacher = copy.deepcopy(self.accelerator.unwrap_model(self.model))
        teacher.requires_grad_(False)
        teacher.eval()
        self.teacher_model = self.accelerator.prepare_model(teacher, evaluation_mode=True)
        if kind == "ema":
            self.add_callback(SyncTeacherModelCallback(teacher_model=self.teacher_model, accelerator=self.accelerator))

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        for w in self._scored:
            w.last_feedback = None
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        merged: list[str | None] = [None] * len(prompts)
        for w in self._scored:
            for k, fb in enumerate(w.last_feedback or []):
                if _has_text(fb):
                    merged[k] = fb if merged[k] is None else merged[k] + "\n" + fb
        self._rollout_feedback = merged
        return rewards

    def _compute_self_distillation_loss(self, model, inputs, distillation_logits):
        mode = "train" if model.training else "eval"
        mask = distillation_logits.loss_mask
        if mask.sum() == 0:
            self._log_self_distillation_metric(mode, 0.0)
            return distillation_logits.student_logits.sum() * 0.0
        cfg = self.sdpo_config
        per_token = cfg.per_token_loss(
            distillation_logits.student_logits, distillation_logits.teacher_logits, distillation_logits.completion_ids
        )
        old = inputs.get("old_per_token_logps")
        if old is not None and cfg.is_clip is not None and cfg.is_coef != 0:
            student_lp = losses.token_logprobs(distillation_logits.student_logits, distillation_logits.completion_ids)
            per_token = per_token * losses.importance_weights(student_lp, old, clip=cfg.is_clip, coef=cfg.is_coef)
        loss = losses.aggregate_distillation_loss(per_token, mask, cfg.loss_aggregation)
        token_mean = (per_token.detach() * mask).sum() / mask.sum().clamp(min=1.0)
        self._log_self_distillation_metric(mode, self.accelerator.gather(token_mean).mean().item())
        return loss

    # ------------------------------------------------------------------ hybrids (our options)

    def _prepare_training_batch(self, inputs):
        batch = super()._prepare_training_batch(inputs)
        device = batch["completion_ids"].device
        n = batch["completion_ids"].shape[0]
        rates = self._last_pass_rates if self._last_pass_rates is not None else [0.0] * n
        success = self._last_success if self._last_success is not None else [0.0] * n
        batch["group_pass_rate"] = torch.tensor(rates, dtype=torch.float32, device=device)
        batch["rollout_success"] = torch.tensor(success, dtype=torch.float32, device=device)
        return batch

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        cfg = self.sdpo_config
        if not cfg.enabled or cfg.hybrid == "none" or self.use_teacher_server:
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        if return_outputs:
            raise ValueError("The SDPOTrainer does not support returning outputs")
        logits = self._compute_teacher_student_logits(model, self.teacher_model, inputs)
        loss = self._compute_hybrid_loss(model, inputs, logits)
        scale = self.current_gradient_accumulation_steps if self.model.training else 1.0
        return loss / scale

    def _compute_hybrid_loss(self, model, inputs, dl) -> torch.Tensor:
        """The hybrid objectives of :mod:`sdpo.losses` (lambda-mix, routing, pass-rate / entropy weighting)."""
        cfg = self.sdpo_config
        mode = "train" if model.training else "eval"
        mask = dl.completion_mask.float()
        active = inputs.get("self_distillation_mask")
        active = torch.ones(mask.shape[0], device=mask.device) if active is None else active.float()
        student_lp = losses.token_logprobs(dl.student_logits, dl.completion_ids)
        sd = cfg.per_token_loss(dl.student_logits, dl.teacher_logits, dl.completion_ids)
        old = inputs.get("old_per_token_logps")
        if old is not None and cfg.is_clip is not None and cfg.is_coef != 0:
            sd = sd * losses.importance_weights(student_lp, old, clip=cfg.is_clip, coef=cfg.is_coef)
        token_w = None
        if cfg.entropy_beta > 0:
            token_w = losses.entropy_weights(losses.teacher_entropy(dl.teacher_logits), cfg.entropy_beta)
            denom = (mask * active.unsqueeze(1)).sum().clamp(min=1.0)
            self._metrics[mode]["hybrid/entropy_weight_mean"].append(
                ((token_w * mask * active.unsqueeze(1)).sum() / denom).item())
        row_w = None
        if cfg.pass_rate_weighting:
            row_w = losses.pass_rate_weights(inputs["group_pass_rate"], active, cfg.pass_rate_normalization)
            self._metrics[mode]["hybrid/pass_rate_weight_nonzero_fraction"].append(
                ((row_w > 0).float() * active).sum().item() / max(1.0, active.sum().item()))
        needs_pg = cfg.hybrid in ("lambda_mix", "routing")
        if needs_pg:
            pg = losses.clipped_policy_gradient(
                student_lp, old if old is not None else student_lp.detach(), inputs["advantages"],
                eps_low=self.epsilon_low, eps_high=self.epsilon_high,
            )
        if cfg.hybrid == "lambda_mix":
            loss = losses.lambda_mix_loss(pg, sd, mask, active, cfg.grpo_mix, row_weights=row_w, token_weights=token_w)
        elif cfg.hybrid == "routing":
            success = inputs["rollout_success"]
            loss = losses.routed_loss(pg, sd, mask, active, success, row_weights=row_w, token_weights=token_w)
            n = max(1, success.numel())
            self._metrics[mode]["hybrid/routed_grpo_fraction"].append(success.sum().item() / n)
            self._metrics[mode]["hybrid/routed_sdpo_fraction"].append(((1 - success) * active).sum().item() / n)
        else:  # weighted plain SDPO: pass-rate and/or entropy weights
            weights = torch.ones_like(mask) if token_w is None else token_w
            rows = torch.ones_like(active) if row_w is None else row_w
            loss = losses.pass_rate_weighted_loss(sd * weights, mask, active, rows)
        token_mean = (sd.detach() * mask * active.unsqueeze(1)).sum() / (mask * active.unsqueeze(1)).sum().clamp(min=1.0)
        self._log_self_distillation_metric(mode, self.accelerator.gather(token_mean).mean().item())
        self._metrics[mode]["hybrid/loss"].append(self.accelerator.gather(loss.detach()).mean().item())
        return loss
