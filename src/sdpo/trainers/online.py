"""Online SDPO from user interactions.

Each step, for a batch of prompts ``x``:

1. **generate** one response ``y`` per prompt with the current policy (sampling,
   temperature 1.0 by default);
2. **simulate** the user's next message ``o`` with a user simulator (rule-based,
   a local model, Claude, or an OpenAI-compatible endpoint);
3. **score**: the same model, current weights, re-scores ``y`` with ``o`` as
   hindsight (teacher, no gradient) and without it (student, with gradient); the
   per-token difference is the advantage;
4. **update** with the policy-gradient loss (PPO ratio clip; on-policy the ratio is 1).

Why a loop on ``accelerate`` and not TRL's trainers: TRL's experimental SDPO trainer
takes the teacher's privileged context from a static dataset column, while here the
feedback exists only after the policy has answered and the user has replied, and it
goes into chat templates (``sdpo.templates``) that differ from TRL's reprompting. The
loop is short; ``accelerate`` provides DDP / DeepSpeed / FSDP, gradient accumulation
and checkpoint state, and the scoring is the same signal core every other part uses.

Checkpoints (``checkpoint-<step>/``) hold the model and tokenizer (``save_pretrained``,
loadable by any tool) and ``accelerate_state/`` (optimizer, scheduler, RNG) so a run
resumes exactly. ``metrics.jsonl`` records, per step: loss, signal mean / |mean| / std,
response and follow-up lengths, simulator latency and fallbacks, the persona rule
score of the responses, and the step time split into generate / simulate / score / update.
"""

from __future__ import annotations

import contextlib
import json
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from sdpo.distributed import (
    check_world,
    fill_deepspeed_config,
    gathered_parameters,
    policy_for_generation,
    sharded_launch,
    zero3_init_disabled,
)
from sdpo.losses import CENTERING
from sdpo.templates import DEFAULT_TEMPLATE, TEMPLATE_NAMES, fit_context, get_template, render_context


@dataclass
class OnlineSDPOConfig:
    """Options of ``sdpo train-online`` (flags and YAML keys)."""

    model_name_or_path: str = field(default="smollm2-135m", metadata={"help": "policy model"})
    train_jsonl: str | None = field(default=None, metadata={"help": "prompt records (sdpo prepare tldr|helpsteer2)"})
    val_jsonl: str | None = field(default=None, metadata={"help": "held-out prompts for the before/after summary"})
    output_dir: str | None = field(default=None, metadata={"help": "default runs/sdpo-online/<run-id>"})
    style: str = field(default="concise_casual_beginner", metadata={"help": "persona of the simulated user"})
    simulator: str = field(default="local", metadata={"help": "rule, local, claude or openai"})
    simulator_model: str | None = field(
        default=None, metadata={"help": "local: model to play the user (default the policy's); API: model name"}
    )
    simulator_backend: str = field(
        default="transformers", metadata={"help": "local: its generation engine (transformers, ctranslate2, "
                                                  "ctranslate2-int8, vllm; sdpo.engines), loading the model by name"})
    simulator_base_url: str | None = field(default=None, metadata={"help": "API base URL (openai: e.g. vLLM)"})
    simulator_concurrency: int = field(default=8, metadata={"help": "concurrent API requests"})
    simulator_max_retries: int = field(default=6, metadata={"help": "API: retries after the first try of a request"})
    simulator_timeout: float = field(default=60.0, metadata={"help": "API: seconds per try"})
    simulator_retry_backoff: float = field(default=0.5, metadata={"help": "API: first wait in seconds, doubling"})
    simulator_max_consecutive_failures: int = field(
        default=8, metadata={"help": "API: stop the run (resumable) after this many requests in a row failed after "
                                     "all their tries (0 = never stop)"})
    simulator_temperature: float | None = field(default=None, metadata={"help": "default 0.7 local, 0 API"})
    simulator_max_new_tokens: int | None = field(default=None, metadata={"help": "default 128 local, 256 API"})
    template: str = field(default=DEFAULT_TEMPLATE, metadata={"help": f"teacher context: {', '.join(TEMPLATE_NAMES)}"})
    system_prompt: str | None = field(
        default="general", metadata={"help": "system message for generation and scoring: a preset (general = empty "
                                             "message, as the reference; tldr = the TL;DR task's, strips the prompts' "
                                             "'TL;DR:' cue) or the text itself"})
    max_prompt_tokens: int | None = field(
        default=512, metadata={"help": "drop prompts whose rendered context is longer (reference: 512); 0 = keep all"})
    max_train_prompts: int | None = field(
        default=512, metadata={"help": "train on a seeded random subset of at most N prompts (reference: 512 "
                                       "HelpSteer2, 256 TL;DR); 0 = all"})
    max_context_tokens: int = field(default=2048, metadata={"help": "contexts are cut from the left to this"})
    max_new_tokens: int = field(default=256, metadata={"help": "response length limit"})
    temperature: float = field(default=1.0, metadata={"help": "policy sampling temperature"})
    learning_rate: float = field(default=5e-6, metadata={"help": "constant learning rate"})
    per_device_train_batch_size: int = field(default=4, metadata={"help": "prompts per device per step"})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "micro-steps per optimizer step"})
    generation_batch_size: int | None = field(
        default=None, metadata={"help": "rows per policy generate call; default all the optimizer step's prompts "
                                        "(per_device_train_batch_size x gradient_accumulation_steps), sampled "
                                        "and simulated together"})
    max_steps: int | None = field(
        default=None, metadata={"help": "optimizer steps; default one pass: ceil(prompts / (batch x accumulation "
                                        "x processes))"})
    save_steps: int = field(default=3, metadata={"help": "checkpoint every N steps (and at the end)"})
    advantage_centering: str = field(
        default="sequence", metadata={"help": "sequence (subtract each response's mean advantage, as the reference "
                                              "online trainer) or none"})
    advantage_clip: float | None = field(default=None, metadata={"help": "clip advantages to [-c, c]"})
    ppo_clip: float = field(default=0.2, metadata={"help": "PPO ratio clip"})
    ignore_first_tokens: int = field(default=0, metadata={"help": "response tokens left out of the loss"})
    mask_eos_advantage: bool = field(
        default=False, metadata={"help": "leave the end-of-sequence token out of the loss (see RESULTS.md: on small "
                                         "models the hindsight teacher is biased against stopping)"})
    rule_reward_weight: float = field(
        default=0.0, metadata={"help": "ours, off by default: add w*(r - batch mean r) to every token's advantage, r = 1 "
                                       "when the answer passes the persona's rule checks (sdpo.feedback.simulators."
                                       "rule_score), else 0; 0 = pure hindsight SDPO (the reference)"})
    contrastive_followup: str | None = field(
        default=None, metadata={"help": "ours, off by default: advantage log p(y|x,o) - log p(y|x,o0) with o0 a generic "
                                        "reply - 'complaint' (\"That's not what I wanted.\"), 'neutral' (\"Okay.\"), "
                                        "'matched' (\"Thanks.\" for a satisfied follow-up, the complaint otherwise) or "
                                        "the text itself - so the shift any complaint causes (apologies) cancels; "
                                        "unset = log p(y|x,o) - log p(y|x), the reference"})
    selectivity_threshold: float = field(
        default=0.0, metadata={"help": "ours, 0 = off: leave out tokens whose log-prob moves by less than this (nats) "
                                       "between the follow-up and a generic reply o0 (contrastive_followup's, else 'matched')"})
    kl_to_start: float = field(
        default=0.0, metadata={"help": "ours, 0 = off (the reference's KL coefficient): weight of a per-token KL to the "
                                       "starting model (a frozen copy), against drift and forgetting in long runs"})
    teacher: str = field(
        default="live", metadata={"help": "who scores the answer with the follow-up: live (the policy being trained, "
                                          "the reference) or start (ours: a frozen copy of the starting weights, so "
                                          "the student cannot feed its own drift back through the teacher)"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping (0 = off)"})
    use_lora: bool = field(default=False, metadata={"help": "train a LoRA adapter"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha"})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "recompute activations in backward"})
    dtype: str = field(default="auto", metadata={"help": "auto, float32, bfloat16"})
    seed: int = field(default=42, metadata={"help": "random seed (prompt subset, data order, sampling)"})
    resume_from_checkpoint: str | None = field(
        default=None, metadata={"help": "a checkpoint dir, or 'last' (the newest complete checkpoint in output_dir)"})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "start over in an output_dir that holds another run (deletes its "
                                         "checkpoints, metrics.jsonl and summaries)"})
    save_total_limit: int | None = field(
        default=3, metadata={"help": "keep only the newest N complete checkpoints (0 = keep all)"})
    save_only_model: bool = field(
        default=False, metadata={"help": "checkpoints hold the model only, no optimizer/RNG state: smaller, but a "
                                         "run cannot be resumed from them (refused with a message)"})
    use_vllm: bool = field(
        default=False, metadata={"help": "generate the policy's responses with vLLM (GPU; TRL's VLLMGeneration) "
                                         "instead of transformers' generate; weights pushed after every optimizer "
                                         "step"})
    vllm_mode: str = field(
        default="colocate", metadata={"help": "colocate (a vLLM engine in each training process, on its GPU) or "
                                              "server (a running `trl vllm-serve`)"})
    vllm_server_base_url: str | None = field(
        default=None, metadata={"help": "server: base URL, e.g. http://localhost:8000 (overrides host and port)"})
    vllm_server_host: str = field(default="0.0.0.0", metadata={"help": "server: host"})
    vllm_server_port: int = field(default=8000, metadata={"help": "server: port"})
    vllm_server_timeout: float = field(default=240.0, metadata={"help": "server: seconds to wait for it to be up"})
    vllm_group_port: int = field(default=51216, metadata={"help": "server: port of the weight-update group"})
    vllm_gpu_memory_utilization: float = field(
        default=0.3, metadata={"help": "colocate: share of GPU memory for vLLM (weights and KV cache)"})
    vllm_tensor_parallel_size: int = field(default=1, metadata={"help": "colocate: tensor-parallel GPUs per engine"})
    vllm_max_model_length: int | None = field(
        default=None, metadata={"help": "colocate: engine context length; default max_context_tokens + "
                                        "max_new_tokens"})
    summary_prompts: int = field(default=8, metadata={"help": "held-out prompts for the before/after summary (0 = off)"})
    summary_max_new_tokens: int = field(default=96, metadata={"help": "length limit of summary generations"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})
    report_to: str = field(default="trackio", metadata={"help": "trackio (local, default), wandb, tensorboard, all, "
                                                                "none, or several: 'trackio,tensorboard'"})
    project: str = field(default="sdpo", metadata={"help": "tracker project name"})

    def __post_init__(self):
        from sdpo.feedback.personas import persona_description

        persona_description(self.style)
        if self.simulator not in ("rule", "local", "claude", "openai"):
            raise ValueError(f"simulator must be rule, local, claude or openai, got {self.simulator!r}")
        if self.template not in TEMPLATE_NAMES:
            raise ValueError(f"template {self.template!r} is unknown; choose one of {', '.join(TEMPLATE_NAMES)}")
        if self.advantage_centering not in CENTERING:
            raise ValueError(f"advantage_centering must be one of {CENTERING}")
        from sdpo.trackers import OWN_TRACKERS, parse_report_to, report_to_text

        # TRL's forms (none, all, a list, "a,b"), normalised to one string (sdpo.trackers.start_tracker)
        self.report_to = report_to_text(parse_report_to(self.report_to, allowed=tuple(OWN_TRACKERS)))
        if self.save_steps < 1:
            raise ValueError("save_steps must be >= 1")
        for name in ("per_device_train_batch_size", "gradient_accumulation_steps", "max_new_tokens",
                     "max_context_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_steps", "summary_prompts", "max_prompt_tokens", "max_train_prompts"):
            value = getattr(self, name)
            if value is not None and value < (1 if name == "max_steps" else 0):
                raise ValueError(f"{name} must be {'>= 1 or unset' if name == 'max_steps' else '>= 0'}, got {value}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.generation_batch_size is not None and self.generation_batch_size < 1:
            raise ValueError("generation_batch_size must be >= 1")
        from sdpo.trainers.update import check_signal_options

        check_signal_options(self)
        if not self.rule_reward_weight >= 0:
            raise ValueError(f"rule_reward_weight must be >= 0, got {self.rule_reward_weight}")
        if self.rule_reward_weight:
            from sdpo.feedback.simulators import rule_checkable

            if not rule_checkable(self.style):
                raise ValueError(f"rule_reward_weight needs a persona with rule checks; {self.style!r} has none "
                                 "(see `sdpo personas`)")
            if getattr(self, "loss", "policy_gradient") != "policy_gradient":
                raise ValueError("rule_reward_weight works with --loss policy_gradient")
        from sdpo.vllm_backend import check_options

        check_options(self)  # vllm_* options; with use_vllm: vLLM installed, CUDA for colocate
        from sdpo.engines import check_backend

        check_backend(self.simulator_backend, "--simulator_backend")
        if self.output_dir is None:
            self.output_dir = str(Path("runs") / "sdpo-online" / time.strftime("%Y%m%d-%H%M%S"))
        from sdpo import rundir

        rundir.check_output_path(self.output_dir)
        if self.save_total_limit is not None and self.save_total_limit < 0:
            raise rundir.RunDirError(f"save_total_limit must be >= 0 (0 = keep all), got {self.save_total_limit}")
        if self.overwrite_output_dir and self.resume_from_checkpoint:
            raise rundir.RunDirError("--overwrite_output_dir and --resume_from_checkpoint exclude each other: "
                                     "continue the run or start over, not both")


OnlineSDPOConfig.NUMBER_RULES = {k: v for k, v in {'simulator_concurrency': '>=1', 'simulator_max_retries': '>=0', 'simulator_timeout': '>0', 'simulator_retry_backoff': '>=0', 'simulator_max_consecutive_failures': '>=0', 'simulator_temperature': '>=0|None', 'simulator_max_new_tokens': '>=1|None', 'max_prompt_tokens': '>=0|None', 'max_train_prompts': '>=0|None', 'max_context_tokens': '>=1', 'max_new_tokens': '>=1', 'temperature': '>=0', 'learning_rate': '>0', 'per_device_train_batch_size': '>=1', 'gradient_accumulation_steps': '>=1', 'generation_batch_size': '>=1|None', 'max_steps': '>=1|None', 'save_steps': '>=1', 'advantage_clip': '>0|None', 'ppo_clip': '>0', 'ignore_first_tokens': '>=0', 'rule_reward_weight': '>=0', 'selectivity_threshold': '>=0', 'kl_to_start': '>=0', 'weight_decay': '>=0', 'max_grad_norm': '>=0', 'lora_r': '>=1', 'lora_alpha': '>0', 'seed': '>=0', 'save_total_limit': '>=0|None', 'vllm_server_port': '>=1', 'vllm_server_timeout': '>0', 'vllm_group_port': '>=1', 'vllm_gpu_memory_utilization': '(0,1]', 'vllm_tensor_parallel_size': '>=1', 'vllm_max_model_length': '>=1|None', 'summary_prompts': '>=0', 'summary_max_new_tokens': '>=1'}.items() if k in OnlineSDPOConfig.__dataclass_fields__}  # checked by sdpo.cli.check_number_rules


def build_simulator(cfg: OnlineSDPOConfig, policy=None, tokenizer=None):
    """The configured simulator. API simulators check their key here, before any training."""
    from sdpo.feedback import simulators as sims

    if cfg.simulator == "rule":
        return sims.RuleUserSimulator(cfg.style)
    if cfg.simulator == "local":
        kwargs = {"max_context_tokens": cfg.max_context_tokens}
        if cfg.simulator_temperature is not None:
            kwargs["temperature"] = cfg.simulator_temperature
        if cfg.simulator_max_new_tokens is not None:
            kwargs["max_new_tokens"] = cfg.simulator_max_new_tokens
        from transformers.integrations import is_deepspeed_zero3_enabled

        if cfg.simulator_backend != "transformers":  # an engine loads the model by name (frozen by construction)
            return sims.StyleUserSimulator(cfg.style, model=cfg.simulator_model or cfg.model_name_or_path,
                                           backend=cfg.simulator_backend, **kwargs)
        if cfg.simulator_model in (None, cfg.model_name_or_path) and policy is not None \
                and not is_deepspeed_zero3_enabled():
            import copy

            # a frozen copy: the user does not change when the policy learns
            model = copy.deepcopy(policy).eval().requires_grad_(False)
            return sims.StyleUserSimulator(cfg.style, model=model, tokenizer=tokenizer, **kwargs)
        # its own copy, loaded whole even when ZeRO-3 partitions the policy at load time
        with zero3_init_disabled():
            return sims.StyleUserSimulator(cfg.style, model=cfg.simulator_model or cfg.model_name_or_path, **kwargs)
    cls = sims.ClaudeStyleUserSimulator if cfg.simulator == "claude" else sims.OpenAICompatibleUserSimulator
    kwargs = dict(base_url=cfg.simulator_base_url, max_concurrency=cfg.simulator_concurrency,
                  max_retries=cfg.simulator_max_retries, timeout=cfg.simulator_timeout,
                  retry_backoff=cfg.simulator_retry_backoff,
                  max_consecutive_failures=cfg.simulator_max_consecutive_failures)
    if cfg.simulator_model:
        kwargs["model"] = cfg.simulator_model
    if cfg.simulator_temperature is not None:
        kwargs["temperature"] = cfg.simulator_temperature
    if cfg.simulator_max_new_tokens is not None:
        kwargs["max_tokens"] = cfg.simulator_max_new_tokens
    return cls(cfg.style, **kwargs)


def generate(model, tokenizer, contexts, *, max_new_tokens, temperature, device):
    """Sampled (temperature > 0) or greedy responses; returns token ids (EOS kept) and texts.
    Responses end at the tokenizer's EOS only: the loss and the EOS metrics look for that id."""
    from sdpo.generation import hf_generate

    responses = hf_generate(model, tokenizer, contexts, max_new_tokens=max_new_tokens, temperature=temperature,
                            device=device, eos=[tokenizer.eos_token_id])
    texts = [tokenizer.decode(r, skip_special_tokens=True) for r in responses]
    return responses, texts


def steps_for_one_pass(n_prompts: int, batch_size: int, grad_accum: int, world: int) -> int:
    """Optimizer steps that visit every prompt once: ceil(N / (BS x GA x processes)); the last
    step wraps around to the start of the next (seeded) pass to fill its batch."""
    per_step = batch_size * grad_accum * world
    return max(1, -(-n_prompts // per_step))


def select_prompts(prompts, tokenizer, template, *, max_prompt_tokens, max_prompts, seed):
    """The reference's prompt selection: drop prompts whose rendered student context is longer than
    ``max_prompt_tokens``, then a seeded random subset of at most ``max_prompts`` (0/None = all).
    Returns the prompts and counts for the log."""
    kept = list(prompts)
    too_long = 0
    if max_prompt_tokens:
        kept = [p for p in prompts
                if len(render_context(tokenizer, template.student_messages(p.messages))) <= max_prompt_tokens]
        too_long = len(prompts) - len(kept)
    if not kept:
        raise ValueError(f"every prompt ({len(prompts)}) is longer than max_prompt_tokens={max_prompt_tokens} "
                         "tokens; raise --max_prompt_tokens (0 keeps all)")
    if max_prompts and len(kept) > max_prompts:
        order = list(range(len(kept)))
        random.Random(seed).shuffle(order)
        kept = [kept[i] for i in sorted(order[:max_prompts])]
    return kept, {"prompts_given": len(prompts), "prompts_too_long": too_long, "prompts_used": len(kept)}


def echoes_template(template, prompt: str, response: str) -> bool:
    """Does ``response`` copy the teacher template's fixed wording (its header, or any word 4-gram of
    its note that the prompt does not also contain)? The measure of ``SDPOTrainer``'s
    ``teacher_context_echo_rate``, applied to the hindsight template."""
    from sdpo.templates import HINDSIGHT_HEADER
    from sdpo.trainers.rich import teacher_only_ngrams, word_ngrams

    if HINDSIGHT_HEADER.strip() in response:
        return True
    phrases = [part for part in template.note.split("{followup}") if part.strip()]
    return bool(word_ngrams(response) & teacher_only_ngrams(phrases, prompt))


class OnlineSDPOTrainer:
    def __init__(self, cfg: OnlineSDPOConfig, *, model=None, tokenizer=None, simulator=None, prompts=None,
                 val_prompts=None):
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        from sdpo.data.prompts import load_prompts

        self.cfg = cfg
        # everything that can fail on bad input fails here, before the model loads
        self.prompts = prompts if prompts is not None else load_prompts(self._require(cfg.train_jsonl, "train_jsonl"))
        self.val_prompts = val_prompts
        if self.val_prompts is None and cfg.val_jsonl:
            self.val_prompts = load_prompts(cfg.val_jsonl)
        self.accelerator = Accelerator(gradient_accumulation_steps=cfg.gradient_accumulation_steps,
                                       cpu=not torch.cuda.is_available() and not sharded_launch())
        check_world(self.accelerator)
        fill_deepspeed_config(self.accelerator, micro_batch=cfg.per_device_train_batch_size,
                              grad_accum=cfg.gradient_accumulation_steps, max_grad_norm=cfg.max_grad_norm)
        set_seed(cfg.seed)
        if simulator is None and cfg.simulator in ("claude", "openai"):
            simulator = build_simulator(cfg)  # checks the API key before the model loads
        if model is None:
            from sdpo.models import LoraOptions, load_model

            lora = LoraOptions(r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=0.0) if cfg.use_lora else None
            model, tokenizer = load_model(cfg.model_name_or_path, dtype=cfg.dtype, device="cpu", lora=lora)
        self.tokenizer = tokenizer
        self.simulator = simulator or build_simulator(cfg, model, tokenizer)
        if cfg.gradient_checkpointing:
            enable = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5.x name
            if enable is not None:
                enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:  # older transformers
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.config.use_cache = False
        self.template = get_template(cfg.template, system_prompt=cfg.system_prompt)
        self.prompts, self.prompt_selection = select_prompts(
            self.prompts, self.tokenizer, self.template, max_prompt_tokens=cfg.max_prompt_tokens,
            max_prompts=cfg.max_train_prompts, seed=cfg.seed)
        if self.val_prompts:
            self.val_prompts, _ = select_prompts(self.val_prompts, self.tokenizer, self.template,
                                                 max_prompt_tokens=cfg.max_prompt_tokens, max_prompts=None,
                                                 seed=cfg.seed)
        self.reference_model = None
        if cfg.kl_to_start or cfg.teacher == "start":
            import copy

            # the starting weights, frozen: the anchor of kl_to_start and the teacher of --teacher start
            self.reference_model = copy.deepcopy(model).eval().requires_grad_(False)
        params = [p for p in model.parameters() if p.requires_grad]
        from sdpo.models import adamw_options  # fused AdamW where torch has the kernel, foreach otherwise
        optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                                      **adamw_options(params))
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        if hasattr(self.simulator, "model") and isinstance(self.simulator.model, torch.nn.Module):
            self.simulator.model.to(self.accelerator.device)
        if self.reference_model is not None:
            self.reference_model.to(self.accelerator.device)
        world = self.accelerator.num_processes
        self.global_batch = cfg.per_device_train_batch_size * world
        self.max_steps = cfg.max_steps or steps_for_one_pass(len(self.prompts), cfg.per_device_train_batch_size,
                                                             cfg.gradient_accumulation_steps, world)
        self.step = 0
        self.micro = 0

    @staticmethod
    def _require(value, name):
        if not value:
            raise ValueError(f"{name} is required")
        return value

    # ------------------------------------------------------------------ data
    def _batch(self, micro_step: int):
        """This rank's prompts for a micro-step: a seeded permutation per pass, sliced by rank."""
        n = len(self.prompts)
        start = micro_step * self.global_batch
        out = []
        for k in range(start, start + self.global_batch):
            epoch, pos = divmod(k, n)
            out.append(self.prompts[self._permutation(epoch)[pos]])
        rank, per = self.accelerator.process_index, self.cfg.per_device_train_batch_size
        return out[rank * per : (rank + 1) * per]

    def _permutation(self, epoch: int) -> list[int]:
        """The seeded prompt order of one pass, built once per pass (a pure function of seed and epoch)."""
        cache = self.__dict__.setdefault("_perms", {})
        if epoch not in cache:
            order = list(range(len(self.prompts)))
            random.Random(self.cfg.seed * 1_000_003 + epoch).shuffle(order)
            cache.clear()  # only the current pass (and the next, at a boundary) is ever needed
            cache[epoch] = order
        return cache[epoch]

    # ------------------------------------------------------------------ one step
    def _note_truncations(self, n: int) -> None:
        """Count contexts over max_context_tokens (a per-step metric) and warn once per run."""
        if not n:
            return
        self._truncated = getattr(self, "_truncated", 0) + n
        if not getattr(self, "_warned_truncation", False):
            self._warned_truncation = True
            import warnings

            warnings.warn(f"a context is longer than max_context_tokens={self.cfg.max_context_tokens}: the oldest "
                          "turns (then the start of the request) are cut, the system message and the follow-up are "
                          "kept; the count per step is logged as contexts_truncated", stacklevel=2)

    def _rollouts(self) -> tuple[list[dict], dict]:
        """Responses and follow-ups for every micro-batch of the coming optimizer step, made together.

        The weights cannot change inside a gradient-accumulation window (the optimizer steps at its
        end), so sampling all ``gradient_accumulation_steps`` micro-batches up front is the same
        on-policy data as sampling before each, and the policy and the simulator see
        ``per_device_train_batch_size x gradient_accumulation_steps`` rows per call instead of one
        micro-batch (batched simulation is what makes a local user fast; see
        ``benchmarks/RESULTS.md``). ``generation_batch_size`` caps the rows per ``generate`` call.
        """
        cfg, tok, acc = self.cfg, self.tokenizer, self.accelerator
        batches = [self._batch(self.micro + i) for i in range(cfg.gradient_accumulation_steps)]
        prompts = [p for b in batches for p in b]
        t0 = time.perf_counter()
        fitted = [fit_context(tok, self.template, p.messages, cfg.max_context_tokens) for p in prompts]
        contexts = [ids for ids, _ in fitted]
        self._note_truncations(sum(over > 0 for _, over in fitted))
        rows = cfg.generation_batch_size or len(contexts)
        responses, texts = [], []
        if cfg.use_vllm:  # the engine is built at the first rollout and gets the weights after each step
            if getattr(self, "vllm", None) is None:
                from sdpo.vllm_backend import VLLMPolicyGenerator

                self.vllm = VLLMPolicyGenerator(self.model, acc, tok, cfg)
            for start in range(0, len(contexts), rows):  # same call count on every rank (server: gathered)
                r, t = self.vllm.generate(contexts[start : start + rows])
                responses += r
                texts += t
        else:
            with policy_for_generation(self.model, acc) as policy:
                for start in range(0, len(contexts), rows):  # same row count on every rank (lockstep under ZeRO-3)
                    r, t = generate(policy, tok, contexts[start : start + rows], max_new_tokens=cfg.max_new_tokens,
                                    temperature=cfg.temperature, device=acc.device)
                    responses += r
                    texts += t
        t1 = time.perf_counter()
        followups = self.simulator.followups([p.text for p in prompts], texts)
        # a follow-up that could not be obtained (failed request, empty reply) is no feedback: left out
        failed = list(getattr(self.simulator, "last_failed", None) or [False] * len(followups))
        timings = {"time/generate": t1 - t0, "time/simulate": time.perf_counter() - t1}
        per = cfg.per_device_train_batch_size
        return [
            {key: values[i * per : (i + 1) * per]
             for key, values in (("batch", prompts), ("contexts", contexts), ("responses", responses),
                                 ("texts", texts), ("followups", followups), ("failed", failed))}
            for i in range(len(batches))
        ], timings

    def _micro_step(self, rollout: dict) -> dict:
        from sdpo.degeneracy import degeneracy_rate, filler_token_mask, positive_advantage_share
        from sdpo.feedback.simulators import rule_score
        from sdpo.trainers.update import UpdateExample, sdpo_update

        cfg, tok, acc = self.cfg, self.tokenizer, self.accelerator
        batch, contexts, responses = rollout["batch"], rollout["contexts"], rollout["responses"]
        texts, followups = rollout["texts"], rollout["followups"]
        failed = rollout.get("failed") or [False] * len(texts)
        # the step itself (teacher contexts, scoring, loss, backward, clip, optimizer step) is
        # shared with `sdpo chat`: sdpo.trainers.update.sdpo_update
        result = sdpo_update(
            self.model, self.optimizer, tok, self.template,
            [UpdateExample(p.messages, resp, o, context=ctx,
                           reward=rule_score(cfg.style, text) if cfg.rule_reward_weight else None,
                           weight=0.0 if bad else 1.0)
             for p, ctx, resp, o, text, bad in zip(batch, contexts, responses, followups, texts, failed)],
            cfg, accelerator=acc, reference_model=self.reference_model,
        )
        self._note_truncations(result.truncated)
        loss, stats, eos_signal, timings = result.loss, result.stats, result.eos_signal, result.timings

        metrics = {
            "loss": loss,
            **stats,
            "response_tokens_mean": sum(len(r) for r in responses) / len(responses),
            # the teacher's view of stopping: mean signal at the EOS of responses that ended (0 if none did)
            "eos_signal_mean": sum(eos_signal) / len(eos_signal) if eos_signal else 0.0,
            "ended_fraction": len(eos_signal) / len(responses),
            "followup_words_mean": sum(len(o.split()) for o in followups) / len(followups),
            "persona_rule_score": sum(rule_score(cfg.style, t) for t in texts) / len(texts),
            # collapse: answers that are no answers (apology/filler, loops, empty, off topic; sdpo.degeneracy),
            # and the share of the positive advantage that lands on apology/filler tokens
            "nonanswer_rate": degeneracy_rate([p.text for p in batch], texts),
            "filler_advantage_share": positive_advantage_share(
                result.advantages, [filler_token_mask(tok, r) for r in responses]) if result.advantages else 0.0,
            # follow-ups that could not be obtained: those samples got no advantage (left out of the push)
            "followups_failed": float(sum(failed)),
            # leakage: answers that copy the teacher template's own wording (only the teacher sees it)
            "echo_rate": sum(echoes_template(self.template, p.text, t) for p, t in zip(batch, texts)) / len(texts),
            **timings,
        }
        self.last_example = {"prompt": batch[0].text, "response": texts[0], "followup": followups[0]}
        return metrics

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self):
        """``checkpoint-<step>/``: the model once (``save_pretrained``), the tokenizer, and
        ``accelerate_state/`` (optimizer, RNG; the model too only under LoRA, DeepSpeed or FSDP, whose
        own formats accelerate writes). Written under ``checkpoint-<step>.tmp`` and renamed when every
        rank has finished, so ``last`` never picks a half-written checkpoint."""
        import shutil

        from sdpo import rundir

        acc, cfg = self.accelerator, self.cfg
        out = Path(cfg.output_dir)
        final = out / f"checkpoint-{self.step}"
        tmp = rundir.temporary_checkpoint(out, self.step)
        self._ensure_state_hooks()
        if acc.is_main_process and tmp.exists():
            shutil.rmtree(tmp)  # left by a write that was killed
        acc.wait_for_everyone()
        try:
            if not cfg.save_only_model:
                acc.save_state(str(tmp / "accelerate_state"))
            state_dict = acc.get_state_dict(self.model)  # collective: gathers ZeRO-3 / FSDP shards
            if acc.is_main_process:
                acc.unwrap_model(self.model).save_pretrained(tmp, state_dict=state_dict)
                self.tokenizer.save_pretrained(tmp)
            acc.wait_for_everyone()  # every rank's files are in place
            if acc.is_main_process:
                state = {"step": self.step, "micro_step": self.micro, "save_only_model": cfg.save_only_model}
                (tmp / rundir.STATE_NAME).write_text(json.dumps(state))  # written last: marks it complete
                rundir.commit_checkpoint(tmp, final)
                rundir.rotate_checkpoints(out, cfg.save_total_limit)
        except Exception as err:  # a full disk: torch's writer raises RuntimeError, safetensors its own error
            if not rundir.is_disk_full(err, tmp):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
            raise rundir.disk_full_error(out, final.name) from None
        acc.wait_for_everyone()
        return final

    def _ensure_state_hooks(self):
        """Plain and DDP runs: the model goes into ``checkpoint-<step>/`` once (``save_pretrained``), not a
        second time into ``accelerate_state/``; on resume it is read back from there. Under DeepSpeed
        and FSDP accelerate saves the model through their own formats (its ``weights`` / ``models``
        lists stay empty there), and LoRA keeps accelerate's own model state (``save_pretrained``
        writes only the adapter)."""
        if getattr(self, "_state_hooks", None) is not None:
            return
        self._state_hooks = []
        if self.cfg.use_lora:
            return
        acc = self.accelerator

        def skip_model(models, weights, output_dir):
            weights.clear()  # written by save_pretrained next to accelerate_state/

        def load_model(models, input_dir):
            folder = Path(input_dir)
            if not models or any(folder.glob("model*.safetensors")) or any(folder.glob("pytorch_model*.bin")):
                return  # an older checkpoint with the model in accelerate_state/: accelerate loads it
            for model in models:
                self._load_weights(acc.unwrap_model(model), folder.parent)
            models.clear()

        self._state_hooks = [acc.register_save_state_pre_hook(skip_model),
                             acc.register_load_state_pre_hook(load_model)]

    @staticmethod
    def _load_weights(model, folder: Path):
        """Weights written by ``save_pretrained`` (one file or shards) into ``model``; keys it left out
        must be tied to loaded ones (e.g. ``lm_head`` sharing the embeddings)."""
        from safetensors.torch import load_file

        index = folder / "model.safetensors.index.json"
        if index.is_file():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        else:
            files = ["model.safetensors"]
        state = {}
        for name in files:
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{folder}: {name} is missing; the checkpoint is incomplete")
            state.update(load_file(str(folder / name)))
        result = model.load_state_dict(state, strict=False)
        if result.unexpected_keys:
            raise RuntimeError(f"{folder}: weights {result.unexpected_keys[:3]} do not belong to the model")
        loaded = {p.data_ptr() for k, p in model.state_dict().items() if k in state}
        params = model.state_dict()
        untied = [k for k in result.missing_keys if params[k].data_ptr() not in loaded]
        if untied:
            raise RuntimeError(f"{folder}: weights {untied[:3]} are missing from the checkpoint")

    def load_checkpoint(self, value: str):
        """``value``: a checkpoint directory, or ``last`` (the newest complete checkpoint of output_dir;
        incomplete ones are skipped with a warning)."""
        from sdpo import rundir

        acc = self.accelerator
        if value in rundir.LAST:
            path = rundir.last_checkpoint(self.cfg.output_dir, warn=acc.is_main_process)
        else:
            path = Path(value)
            if not rundir.is_complete(path):
                raise FileNotFoundError(f"--resume_from_checkpoint {value}: not a complete checkpoint "
                                        f"(no readable {rundir.STATE_NAME})")
        state = json.loads((path / rundir.STATE_NAME).read_text())
        if state.get("save_only_model") or not (path / "accelerate_state").is_dir():
            raise rundir.RunDirError(f"--resume_from_checkpoint: {path} holds the model only (--save_only_model), "
                                     "no optimizer or RNG state, so the run cannot continue exactly; start a new "
                                     f"run from its weights with --model_name_or_path {path}")
        self._ensure_state_hooks()
        acc.load_state(str(path / "accelerate_state"))
        self.step, self.micro = state["step"], state["micro_step"]
        return path

    # ------------------------------------------------------------------ summary
    def _summary_generations(self, when: str = "before"):
        if not self.cfg.summary_prompts:
            return None
        prompts = (self.val_prompts or self.prompts)[: self.cfg.summary_prompts]
        self.accelerator.print(f"summary: greedy answers to {len(prompts)} {'held-out' if self.val_prompts else 'training'}"
                               f" prompts {when} training (up to {self.cfg.summary_max_new_tokens} tokens) ...",
                               flush=True)
        contexts = [fit_context(self.tokenizer, self.template, p.messages, self.cfg.max_context_tokens)[0]
                    for p in prompts]
        with policy_for_generation(self.model, self.accelerator) as policy:
            _, texts = generate(policy, self.tokenizer, contexts, max_new_tokens=self.cfg.summary_max_new_tokens,
                                temperature=0.0, device=self.accelerator.device)
        return [p.text for p in prompts], texts

    # ------------------------------------------------------------------ loop
    def train(self):
        """The loop, holding ``output_dir`` (:func:`sdpo.rundir.claim`) for the run's life."""
        from sdpo import rundir

        cfg, acc = self.cfg, self.accelerator
        with rundir.claim(cfg.output_dir, resume=cfg.resume_from_checkpoint, overwrite=cfg.overwrite_output_dir,
                          main=acc.is_main_process):
            return self._train()

    def _train(self):
        from sdpo import rundir

        cfg, acc = self.cfg, self.accelerator
        out = Path(cfg.output_dir)
        if acc.is_main_process:
            out.mkdir(parents=True, exist_ok=True)
            (out / "sdpo_online_config.json").write_text(json.dumps(asdict(cfg), indent=1))
        history = []
        resume = rundir.resume_target(out, cfg.resume_from_checkpoint)  # None: 'last' with no checkpoint yet
        if resume:
            resumed = self.load_checkpoint(resume)
            acc.print(f"resumed from {resumed} at step {self.step}")
            if acc.is_main_process:  # what came after the checkpoint is done again: no duplicate rows
                rundir.truncate_metrics(out / "metrics.jsonl", self.step)
                rundir.remove_temporary(out)
            acc.wait_for_everyone()
            history = [{k: v for k, v in row.items() if k != "step"}
                       for row in rundir.read_metrics(out / "metrics.jsonl", self.step)]
        sel = self.prompt_selection
        acc.print(f"prompts: training on {sel['prompts_used']} of {sel['prompts_given']} "
                  f"({sel['prompts_too_long']} longer than max_prompt_tokens={cfg.max_prompt_tokens} dropped, "
                  f"max_train_prompts={cfg.max_train_prompts}); {self.max_steps} optimizer steps")
        tracker = self._start_tracker() if acc.is_main_process else None
        if cfg.advantage_centering == "sequence" and not cfg.rule_reward_weight:
            acc.print("note: the logged loss is ~0 by construction (advantages centred per response, PPO ratio 1 "
                      "on-policy); its gradient is not. Watch adv (mean |advantage|), signal, persona and "
                      "nonanswer (share of answers that are no answers)")
        before_file = out / "summary_before.json"
        if self.step == 0:
            before = self._summary_generations()
            if before is not None and acc.is_main_process:  # kept for the summary of a resumed run
                before_file.write_text(json.dumps({"prompts": before[0], "texts": before[1]}, ensure_ascii=False))
        elif before_file.is_file() and cfg.summary_prompts:
            saved = json.loads(before_file.read_text())
            before = (saved["prompts"], saved["texts"])
        else:
            before = None
        bar = None
        if cfg.progress and acc.is_main_process:
            from sdpo.progress import progress_bar

            bar = progress_bar(total=self.max_steps, initial=self.step, desc="online SDPO", unit="step",
                               every_percent=20.0)
        self.model.train()
        stop = _StopRequest()
        try:
            with stop.installed():
                while self.step < self.max_steps and not self._agree_to_stop(stop):
                    self._one_step(history, out, tracker, bar)
        except KeyboardInterrupt:  # a second Ctrl-C: the current step is abandoned
            stop.signal = stop.signal or "SIGINT"
        finally:
            if bar is not None:
                bar.close()
        if stop.signal:
            self._report_interrupt(stop.signal)
            if tracker is not None:
                tracker.finish()
            raise TrainingInterrupted(f"stopped by {stop.signal} at step {self.step}")
        after = self._summary_generations("after") if before is not None else None
        self.summary = self._write_summary(before, after, history)
        if tracker is not None:
            tracker.finish()
        return self.summary

    def _one_step(self, history, out, tracker, bar):
        cfg, acc = self.cfg, self.accelerator
        started = time.perf_counter()
        micro_metrics = []
        rollouts, timings = self._rollouts()
        for rollout in rollouts:
            micro_metrics.append(self._micro_step(rollout))
            self.micro += 1
        self.step += 1
        if getattr(self, "vllm", None) is not None:  # the optimizer stepped: the engine gets the new weights
            pushed = time.perf_counter()
            self.vllm.sync()
            timings["time/vllm_sync"] = time.perf_counter() - pushed
        # means over micro-steps; times are totals for the optimizer step
        metrics = {k: sum(m[k] for m in micro_metrics) / (1 if k.startswith("time/") else len(micro_metrics))
                   for k in micro_metrics[0]}
        metrics.update(timings)
        metrics["contexts_truncated"] = float(getattr(self, "_truncated", 0))
        self._truncated = 0
        metrics.update(self.simulator.stats.as_metrics())
        metrics["time/step"] = time.perf_counter() - started
        metrics = self._mean_over_ranks(metrics)
        history.append(metrics)
        if acc.is_main_process:
            with (out / "metrics.jsonl").open("a", encoding="utf-8") as f:
                f.write(json.dumps({"step": self.step, **metrics}) + "\n")
            if tracker is not None:
                tracker.log(metrics, step=self.step)
            if bar is not None:  # postfix first: a log file's progress line carries this step's values
                # quantities that move (the loss is ~0 by construction: centred advantages, ratio 1)
                bar.set_postfix(adv=f"{metrics.get('advantage_abs_mean', 0):.3f}",
                                signal=f"{metrics.get('signal_abs_mean', 0):.3f}",
                                persona=f"{metrics['persona_rule_score']:.2f}",
                                nonanswer=f"{metrics.get('nonanswer_rate', 0):.2f}", refresh=False)
                bar.update(1)
        if self.step % cfg.save_steps == 0 or self.step == self.max_steps:
            self.save_checkpoint()

    def _agree_to_stop(self, stop: "_StopRequest") -> bool:
        """Whether a stop was asked for (on any rank: all ranks stop after the same step)."""
        acc = self.accelerator
        if acc.num_processes == 1:
            return bool(stop.signal)
        flag = torch.tensor([1.0 if stop.signal else 0.0], device=acc.device)
        if acc.reduce(flag, reduction="sum").item() > 0:
            stop.signal = stop.signal or "a signal on another rank"
            return True
        return False

    def _report_interrupt(self, signal_name: str):
        from sdpo import rundir

        acc = self.accelerator
        if not acc.is_main_process:
            return
        done = rundir.complete_checkpoints(self.cfg.output_dir, warn=False)
        launcher = " (under a launcher, put it in front again)" if acc.num_processes > 1 else ""
        if done:
            lines = [f"stopped by {signal_name} after step {self.step} of {self.max_steps}; last complete "
                     f"checkpoint: {done[-1]} (step {rundir.checkpoint_step(done[-1])})",
                     f"resume with{launcher}: {rundir.resume_command()}"]
        else:
            lines = [f"stopped by {signal_name} after step {self.step} of {self.max_steps}; no checkpoint was saved "
                     f"yet in {self.cfg.output_dir}",
                     f"start again with{launcher}: {rundir.restart_command()}"]
        print("\n".join(lines), file=sys.stderr, flush=True)

    def _start_tracker(self):
        """The trackers ``report_to`` names (trackio, W&B, TensorBoard; ``sdpo.trackers``), or None."""
        from sdpo.trackers import start_tracker

        cfg = self.cfg
        return start_tracker(cfg.report_to, project=cfg.project, name=Path(cfg.output_dir).name,
                             config=asdict(cfg), output_dir=cfg.output_dir)

    def _mean_over_ranks(self, metrics: dict) -> dict:
        acc = self.accelerator
        if acc.num_processes == 1:
            return metrics
        keys = sorted(metrics)
        values = torch.tensor([float(metrics[k]) for k in keys], device=acc.device, dtype=torch.float64)
        values = acc.reduce(values, reduction="mean")
        return dict(zip(keys, values.tolist()))

    def parameter_checksum(self) -> float:
        """Sum of all trainable parameters (float64): equal on every rank when DDP keeps them in sync."""
        model = self.accelerator.unwrap_model(self.model)
        params = [p for p in model.parameters() if p.requires_grad]
        with gathered_parameters(self.accelerator, params):
            # FSDP2 parameters are DTensor shards: compare the full tensors
            full = [p.full_tensor() if hasattr(p, "full_tensor") else p for p in params]
            return float(sum(p.detach().double().sum() for p in full))

    def _write_summary(self, before, after, history) -> dict:
        from sdpo.feedback.simulators import rule_score
        from sdpo.judges.stats import json_safe

        style = self.cfg.style
        summary: dict = {"steps": self.step, "style": style, **self.prompt_selection}
        if history:
            k = max(1, len(history) // 3)
            for name in ("persona_rule_score", "response_tokens_mean", "signal_abs_mean", "nonanswer_rate",
                         "filler_advantage_share"):
                if name in history[0]:
                    summary[f"first_steps_{name}"] = sum(h[name] for h in history[:k]) / k
                    summary[f"last_steps_{name}"] = sum(h[name] for h in history[-k:]) / k
        if before and after:
            prompts, b = before
            _, a = after
            summary["heldout_persona_score_before"] = sum(rule_score(style, t) for t in b) / len(b)
            summary["heldout_persona_score_after"] = sum(rule_score(style, t) for t in a) / len(a)
            summary["heldout_words_before"] = sum(len(t.split()) for t in b) / len(b)
            summary["heldout_words_after"] = sum(len(t.split()) for t in a) / len(a)
            summary["heldout_changed"] = sum(x != y for x, y in zip(b, a))
            # the rule judge (a non-answer loses to an answer; then fewer persona violations wins), both orders
            from sdpo.degeneracy import degeneracy_rate
            from sdpo.judges.pairwise import RuleJudge, judge_both_orders
            from sdpo.judges.stats import verdict

            outcomes = judge_both_orders(RuleJudge(style), prompts, a, b)
            wins, losses = outcomes.count("win"), outcomes.count("loss")
            summary.update(rule_judge_wins=wins, rule_judge_losses=losses, rule_judge_ties=len(a) - wins - losses,
                           rule_judge_win_rate=wins / (wins + losses) if wins + losses else None)
            summary["heldout_nonanswer_before"] = degeneracy_rate(prompts, b)
            summary["heldout_nonanswer_after"] = degeneracy_rate(prompts, a)
            summary["verdict"] = verdict(wins, losses, len(a) - wins - losses,
                                         degenerate_before=summary["heldout_nonanswer_before"],
                                         degenerate_after=summary["heldout_nonanswer_after"])
            summary["examples"] = [{"prompt": p, "before": x, "after": y} for p, x, y in zip(prompts, b, a)][:3]
            if self.accelerator.is_main_process:  # every answer, to read (the summary shows one)
                from sdpo.data.io import write_jsonl
                from sdpo.degeneracy import non_answer_reason

                answers_file = Path(self.cfg.output_dir, "summary_answers.jsonl")
                write_jsonl(({"prompt": p, "before": x, "after": y, "rule_judge_after_vs_before": o,
                              "nonanswer_before": non_answer_reason(p, x), "nonanswer_after": non_answer_reason(p, y)}
                             for p, x, y, o in zip(prompts, b, a, outcomes)), answers_file)
                summary["answers_file"] = str(answers_file)
        if self.accelerator.is_main_process:
            Path(self.cfg.output_dir, "summary.json").write_text(json.dumps(json_safe(summary), indent=1,
                                                                                ensure_ascii=False))
        return summary


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C / SIGTERM stopped the loop; the message with the resume command was printed."""


class _StopRequest:
    """SIGINT / SIGTERM during the loop: the first asks to stop after the current step (the loop
    checks between steps), a second one stops at once (KeyboardInterrupt, the step is abandoned)."""

    def __init__(self):
        self.signal: str | None = None

    def _handle(self, signum, frame):
        import signal

        if self.signal:
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name
        print(f"\n{self.signal}: stopping after the current step (again to stop at once)", file=sys.stderr,
              flush=True)

    @contextlib.contextmanager
    def installed(self):
        import signal
        import threading

        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


def format_summary(summary: dict) -> str:
    lines = [f"online SDPO: {summary['steps']} steps, user persona '{summary['style']}'"]
    for name, label in (("persona_rule_score", "persona rule score (training responses)"),
                        ("response_tokens_mean", "response length, tokens"),
                        ("signal_abs_mean", "mean |signal|"),
                        ("nonanswer_rate", "non-answers (training responses)"),
                        ("filler_advantage_share", "share of positive advantage on apology/filler tokens")):
        if f"first_steps_{name}" in summary:
            lines.append(f"  {label}: first third {summary[f'first_steps_{name}']:.3f}"
                         f" -> last third {summary[f'last_steps_{name}']:.3f}")
    if "heldout_persona_score_before" in summary:
        lines.append(f"  held-out greedy answers: persona rule score {summary['heldout_persona_score_before']:.2f}"
                     f" -> {summary['heldout_persona_score_after']:.2f}, words {summary['heldout_words_before']:.1f}"
                     f" -> {summary['heldout_words_after']:.1f}, {summary['heldout_changed']} answers changed")
        lines.append(f"  held-out non-answers: {summary['heldout_nonanswer_before']:.2f} -> "
                     f"{summary['heldout_nonanswer_after']:.2f}")
        for ex in summary.get("examples", [])[:1]:
            short = lambda t: (t[:160] + "…") if len(t) > 160 else t  # noqa: E731
            lines.append(f"  e.g. prompt: {short(ex['prompt'])!r}")
            lines.append(f"       before: {short(ex['before'])!r}")
            from sdpo.degeneracy import non_answer_reason

            why = non_answer_reason(ex["prompt"], ex["after"])
            lines.append(f"       after:  {short(ex['after'])!r}" + (f"  <- not an answer ({why})" if why else ""))
    if "verdict" in summary:
        from sdpo.judges.stats import format_verdict

        lines.append(format_verdict(summary["verdict"], what="trained vs initial, rule judge, held-out greedy"))
    if summary.get("answers_file"):
        lines.append(f"  every held-out answer before/after, with the judge's outcome: {summary['answers_file']}")
    return "\n".join(lines)


def train_online(cfg: OnlineSDPOConfig, **kwargs) -> OnlineSDPOTrainer:
    trainer = OnlineSDPOTrainer(cfg, **kwargs)
    trainer.train()
    return trainer
