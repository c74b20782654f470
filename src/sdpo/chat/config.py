"""Options of ``sdpo chat`` (flags and YAML keys)."""

from __future__ import annotations

from dataclasses import dataclass, field

from sdpo.cli import UsageError
from sdpo.templates import DEFAULT_TEMPLATE, TEMPLATE_NAMES

# the losses of sdpo.trainers.update.LOSSES, spelt out so that `sdpo chat --help` does not import torch
# (tests/test_help.py checks they agree)
LOSSES = ("policy_gradient", "topk_distillation")

# options that define the weights: a restart on the same run directory must use the same
MODEL_OPTIONS = ("model_name_or_path", "dtype", "use_lora", "lora_r", "lora_alpha")
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


class ChatOptionError(UsageError, ValueError):
    """A bad option value; the message names the option (one line, exit 2, from ``sdpo``)."""


@dataclass
class ChatConfig:
    """``sdpo chat``: a local web chat that learns from your follow-ups (one SDPO update each).

    ``sdpo chat export --run_dir DIR --output interactions.jsonl`` writes the collected
    ``(x, y, o)`` records for ``sdpo train-offline``; ``sdpo chat --simulate STYLE`` runs a
    headless session with a simulated user and evaluates against the base model.
    """

    action: str = field(default="serve", metadata={"help": "serve (the web chat, default) or export"})
    run_dir: str = field(default="runs/chat", metadata={"help": "database, checkpoints and plots; starting again on "
                                                                "the same directory continues where it stopped"})
    # model (as the trainers)
    model_name_or_path: str = field(default="smollm2-135m", metadata={"help": "policy model (alias, path, .gguf, hub id)"})
    dtype: str = field(default="auto", metadata={"help": "auto, float32, bfloat16"})
    use_lora: bool = field(default=False, metadata={"help": "train a LoRA adapter (the reference live chat: full "
                                                            "fine-tuning by default)"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha"})
    template: str = field(default=DEFAULT_TEMPLATE, metadata={"help": f"teacher context: {', '.join(TEMPLATE_NAMES)}"})
    system_prompt: str | None = field(
        default="general", metadata={"help": "system message: a preset (general = empty, tldr) or the text itself"})
    max_new_tokens: int = field(default=256, metadata={"help": "answer length limit"})
    temperature: float = field(default=0.7, metadata={"help": "sampling temperature (reference live chat: 0.7; 0 = greedy)"})
    top_p: float = field(default=0.9, metadata={"help": "nucleus sampling (reference live chat: 0.9)"})
    max_context_tokens: int = field(default=2048, metadata={"help": "contexts are cut to this (oldest turns first)"})
    # learning
    learning_rate: float = field(default=1e-5, metadata={"help": "AdamW learning rate (reference live chat: 1e-5)"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping (0 = off)"})
    loss: str = field(default="policy_gradient", metadata={
        "help": "policy_gradient (the log-ratio policy gradient of sdpo train-online) or topk_distillation "
                "(the reference live chat's top-k distillation with a tail bucket)"})
    advantage_centering: str = field(default="sequence", metadata={"help": "policy_gradient: sequence or none"})
    advantage_clip: float | None = field(default=None, metadata={"help": "policy_gradient: clip advantages to [-c, c]"})
    ppo_clip: float = field(default=0.2, metadata={"help": "policy_gradient: PPO ratio clip (ratio 1 on-policy)"})
    ignore_first_tokens: int = field(default=0, metadata={"help": "answer tokens left out of the loss"})
    mask_eos_advantage: bool = field(default=False, metadata={"help": "leave the end-of-answer token out of the loss"})
    contrastive_followup: str | None = field(
        default=None, metadata={"help": "policy_gradient, ours (off = the reference): advantage against a generic reply "
                                        "o0 (complaint, neutral, matched or the text) instead of no reply, so what "
                                        "any complaint causes cancels (see docs/online.md)"})
    selectivity_threshold: float = field(
        default=0.0, metadata={"help": "policy_gradient, ours (0 = off): no advantage where the follow-up moves a "
                                       "token's log-prob less than this (nats) apart from a generic reply"})
    kl_to_start: float = field(
        default=0.0, metadata={"help": "policy_gradient, ours (0 = off): per-token KL to the starting weights, "
                                       "against drift over a long session"})
    teacher: str = field(
        default="live", metadata={"help": "who scores the answer with your follow-up: live (the model as it is now, "
                                          "the reference) or start (ours: the starting weights, frozen, so a long "
                                          "session cannot feed its own drift back through the teacher)"})
    distillation_topk: int = field(default=50, metadata={"help": "topk_distillation: k (reference: 50)"})
    distillation_add_tail: bool = field(default=True, metadata={"help": "topk_distillation: a tail bucket for the "
                                                                        "mass outside the top k (else renormalise)"})
    distillation_alpha: float = field(default=1.0, metadata={"help": "topk_distillation: generalized JSD weight "
                                                                     "(1 = reverse KL, the reference's)"})
    update_mode: str = field(default="sync", metadata={
        "help": "sync (the update runs before the next answer) or async (the answer comes at once; the update "
                "runs in the background and the next answer uses the newest finished weights)"})
    collect_only: bool = field(default=False, metadata={"help": "record interactions and signals, no updates"})
    undo_depth: int = field(default=3, metadata={"help": "updates that can be undone (each keeps a copy of the "
                                                         "trainable weights and the optimizer state in memory)"})
    save_every: int = field(default=10, metadata={"help": "checkpoint every N updates (and on exit; reference: 10)"})
    save_total_limit: int = field(default=2, metadata={"help": "checkpoints kept"})
    seed: int = field(default=0, metadata={"help": "sampling seed"})
    # server
    host: str = field(default="127.0.0.1", metadata={"help": "address to listen on; anything but localhost needs --auth", "group": "server"})
    port: int = field(default=7860, metadata={"help": "port (0 = a free one)", "group": "server"})
    auth: str | None = field(default=None, metadata={"help": "user:password for the page (required off localhost)", "group": "server"})
    # simulated session (headless)
    simulate: str | None = field(default=None, metadata={"help": "a persona: run a simulated session instead of "
                                                                 "the web chat (see sdpo personas)"})
    simulator: str = field(default="rule", metadata={"help": "simulate: rule, local, claude or openai"})
    simulator_model: str | None = field(default=None, metadata={"help": "simulate: the simulator's model"})
    simulator_base_url: str | None = field(default=None, metadata={"help": "simulate: API base URL (openai)"})
    judge: str = field(default="rule", metadata={"help": "simulate: rule, local, claude or openai"})
    judge_model: str | None = field(default=None, metadata={"help": "simulate: the judge's model"})
    judge_base_url: str | None = field(default=None, metadata={"help": "simulate: API base URL (openai)"})
    turns: int = field(default=100, metadata={"help": "simulate: simulated follow-ups (one update each)"})
    eval_every: int = field(default=10, metadata={"help": "simulate: evaluate against the base model every K updates"})
    eval_n: int = field(default=16, metadata={"help": "simulate: held-out prompts per evaluation (both orders judged)", "group": "simulator"})
    eval_max_new_tokens: int = field(default=128, metadata={"help": "simulate: answer length in evaluations (greedy)"})
    prompts: str = field(default="tldr", metadata={"help": "simulate: tldr or helpsteer2 (the bundled samples), or a "
                                                           "prompt JSONL"})
    # export
    output: str | None = field(default=None, metadata={"help": "export: the interactions JSONL to write", "group": "export"})
    include_excluded: bool = field(default=False, metadata={"help": "export: also undone (excluded) interactions", "group": "export"})

    def __post_init__(self):
        def bad(option, why):
            raise ChatOptionError(f"--{option}: {why}")

        if self.action not in ("serve", "export"):
            bad("action", f"unknown action {self.action!r}; use `sdpo chat` or `sdpo chat export`")
        if self.loss not in LOSSES:
            bad("loss", f"must be one of {', '.join(LOSSES)}, not {self.loss!r}")
        if self.update_mode not in ("sync", "async"):
            bad("update_mode", f"must be sync or async, not {self.update_mode!r}")
        if self.template not in TEMPLATE_NAMES:
            bad("template", f"unknown template {self.template!r}; choose one of {', '.join(TEMPLATE_NAMES)}")
        if self.advantage_centering not in ("none", "sequence"):
            bad("advantage_centering", f"must be sequence or none, not {self.advantage_centering!r}")
        if self.teacher not in ("live", "start"):
            bad("teacher", f"must be live or start, not {self.teacher!r}")
        if not self.learning_rate > 0:
            bad("learning_rate", f"must be > 0, got {self.learning_rate}")
        for name in ("max_new_tokens", "max_context_tokens", "save_every", "turns", "eval_every", "eval_n",
                     "distillation_topk", "eval_max_new_tokens"):
            if getattr(self, name) < 1:
                bad(name, f"must be >= 1, got {getattr(self, name)}")
        for name in ("undo_depth", "save_total_limit", "ignore_first_tokens"):
            if getattr(self, name) < 0:
                bad(name, f"must be >= 0, got {getattr(self, name)}")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            bad("temperature" if self.temperature < 0 else "top_p", "temperature >= 0 and 0 < top_p <= 1")
        if not 0 <= self.port <= 65535:
            bad("port", f"must be 0..65535, got {self.port}")
        if self.auth is not None and (":" not in self.auth or not self.auth.split(":", 1)[0]
                                      or not self.auth.split(":", 1)[1]):
            bad("auth", "expected user:password")
        if self.simulate is not None:
            from sdpo.feedback.personas import persona_description

            persona_description(self.simulate)
            if self.simulator not in ("rule", "local", "claude", "openai"):
                bad("simulator", f"must be rule, local, claude or openai, not {self.simulator!r}")
            if self.judge not in ("rule", "local", "claude", "openai"):
                bad("judge", f"must be rule, local, claude or openai, not {self.judge!r}")

    @property
    def is_local(self) -> bool:
        return self.host in LOCAL_HOSTS

    def auth_pair(self) -> tuple[str, str] | None:
        if not self.auth:
            return None
        user, password = self.auth.split(":", 1)
        return user, password

    def model_options(self) -> dict:
        return {k: getattr(self, k) for k in MODEL_OPTIONS}


ChatConfig.NUMBER_RULES = {'lora_r': '>=1', 'lora_alpha': '>0', 'max_new_tokens': '>=1', 'temperature': '>=0', 'top_p': '(0,1]', 'max_context_tokens': '>=1', 'learning_rate': '>0', 'weight_decay': '>=0', 'max_grad_norm': '>=0', 'advantage_clip': '>0|None', 'ppo_clip': '>0', 'ignore_first_tokens': '>=0', 'selectivity_threshold': '>=0', 'kl_to_start': '>=0', 'distillation_topk': '>=1', 'distillation_alpha': '[0,1]', 'undo_depth': '>=0', 'save_every': '>=1', 'save_total_limit': '>=0', 'seed': '>=0', 'port': '>=0', 'turns': '>=1', 'eval_every': '>=1', 'eval_n': '>=1', 'eval_max_new_tokens': '>=1'}  # checked by sdpo.cli.check_number_rules
