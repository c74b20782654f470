"""Offline SDPO: learn from logged ``(x, y, o)`` interactions, no simulator.

Built on ``transformers.Trainer``, so checkpointing, resuming, mixed precision,
gradient accumulation and accelerate / DeepSpeed / FSDP launches come with it. What
this module adds:

* :class:`OfflineSDPOConfig` - ``TrainingArguments`` plus the SDPO options, with the
  reference defaults (LR 2e-6, cosine schedule, 5 % warm-up, 2 epochs, batch 4 x 8,
  gradient clipping 10, the ``hindsight-revise`` teacher context);
* :class:`InteractionDataset` - records tokenized once up front (both contexts
  through the chat template, ``y`` once, EOS appended, contexts cut from the left);
* :class:`OfflineSDPOTrainer` - ``compute_loss`` scores each batch with the signal
  core: the student pass keeps gradients, the teacher pass (same model, current
  weights) runs under ``no_grad``; only response positions reach the output head,
  and each batch is split into length-matched micro-batches. Batches are drawn
  length-grouped (``train_sampling_strategy='group_by_length'``), so uneven
  conversations waste little on padding.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch.utils.data import Dataset
from transformers import Trainer, TrainerCallback, TrainingArguments

import sdpo.number_rules  # noqa: F401 - registers the -1 rules of max_steps and local_rank
from sdpo.distributed import consolidate_zero3_saves, full_state_dict_for_final_save, sharded_launch
from sdpo.losses import CENTERING, advantage_pg_loss
from sdpo.signal import EncodedExample, completion_logprobs, encode_examples, hindsight_logprobs
from sdpo.templates import DEFAULT_OFFLINE_TEMPLATE, TEMPLATE_NAMES


FIRST_TOKENS_RULES = ("batch", "sequence")


@dataclass
class OfflineSDPOConfig(TrainingArguments):
    """Options of ``sdpo train-offline``; every ``TrainingArguments`` option works too."""

    model_name_or_path: str = field(default="smollm2-135m", metadata={"help": "policy: alias, path, .gguf or hub id"})
    train_jsonl: str | None = field(default=None, metadata={"help": "interaction records (sdpo prepare ...)"})
    template: str = field(default=DEFAULT_OFFLINE_TEMPLATE,
                          metadata={"help": f"teacher context: {', '.join(TEMPLATE_NAMES)}"})
    max_context_tokens: int = field(default=2048, metadata={"help": "contexts are cut from the left to this"})
    ignore_first_tokens: int = field(default=2, metadata={"help": "response tokens at the start left out of the loss"})
    ignore_first_tokens_rule: str = field(
        default="batch", metadata={"help": "batch (the reference): the first tokens are left out only when the "
                                            "batch's longest response is longer than ignore_first_tokens, and a "
                                            "response with no token left counts as 0 in the batch mean; sequence: "
                                            "every response loses its first tokens and one with none left is out "
                                            "of the mean"})
    advantage_centering: str = field(default="none", metadata={"help": "none or sequence (mean-centre per response)"})
    advantage_clip: float | None = field(default=None, metadata={"help": "clip advantages to [-c, c]"})
    kl_coef: float = field(default=0.0, metadata={"help": "weight of KL(policy || initial model) on y tokens"})
    append_eos: bool = field(default=True, metadata={"help": "append EOS to y"})
    strip_response: bool = field(
        default=True, metadata={"help": "remove trailing whitespace from y before the EOS (the reference); false "
                                        "keeps y as logged"})
    max_response_tokens: int = field(
        default=2048, metadata={"help": "keep the first N tokens of y, EOS included (the reference's 2048); 0 = "
                                        "no limit"})
    skip_invalid: bool = field(default=False, metadata={"help": "count and skip malformed records instead of failing"})
    max_records: int | None = field(default=None, metadata={"help": "use only the first N records"})
    model_dtype: str = field(default="auto", metadata={"help": "auto, float32, bfloat16"})
    use_lora: bool = field(default=False, metadata={"help": "train a LoRA adapter instead of all weights"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha"})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout"})
    # reference defaults (offline SDPO): LR 2e-6, cosine with 5 % warm-up, 2 epochs, batch 4 x GA 8
    learning_rate: float = field(default=2e-6, metadata={"help": "peak learning rate"})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "learning-rate schedule"})
    warmup_steps: float = field(default=0.05, metadata={"help": "warm-up steps (a value < 1 is a fraction)"})
    num_train_epochs: float = field(default=2.0, metadata={"help": "epochs"})
    per_device_train_batch_size: int = field(default=4, metadata={"help": "records per device per step"})
    gradient_accumulation_steps: int = field(default=8, metadata={"help": "micro-steps per optimizer step"})
    max_grad_norm: float = field(default=10.0, metadata={"help": "gradient clipping (the reference's 10)"})
    optim: str = field(default="adamw_torch_fused", metadata={
        "help": "optimizer; adamw_torch_fused is adamw_torch's algorithm in one fused kernel (CPU and GPU); "
                "the reference uses adamw_bnb_8bit (8-bit AdamW, needs bitsandbytes and a GPU)"})
    logging_steps: float = field(default=1, metadata={"help": "log every N steps"})
    save_steps: float = field(default=100, metadata={"help": "checkpoint every N steps"})
    save_total_limit: int | None = field(
        default=3, metadata={"help": "keep only the newest N checkpoints (None/0 = keep all)"})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "start over in an output_dir that holds another run (deletes its "
                                         "checkpoints and metrics.jsonl)"})
    train_sampling_strategy: str = field(default="group_by_length", metadata={"help": "random or group_by_length"})
    remove_unused_columns: bool = field(default=False, metadata={"help": "must stay false"})
    project: str = field(default="sdpo", metadata={"help": "tracker project name"})
    report_to: None | str | list[str] = field(default="trackio", metadata={"help": "trackio (local, default), wandb, none"})

    def __post_init__(self):
        from sdpo import rundir

        if self.output_dir is None:
            self.output_dir = str(Path("runs") / "sdpo-offline" / time.strftime("%Y%m%d-%H%M%S"))
        rundir.check_output_path(self.output_dir)
        if self.overwrite_output_dir and self.resume_from_checkpoint not in (None, "", "false", "False"):
            raise rundir.RunDirError("--overwrite_output_dir and --resume_from_checkpoint exclude each other: "
                                     "continue the run or start over, not both")
        if self.save_total_limit == 0:
            self.save_total_limit = None  # keep all
        import os

        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available() and not sharded_launch():
            # Launched as several processes on a machine without CUDA: without use_cpu the
            # Trainer would run each process on its own instead of as one gloo DDP job.
            self.use_cpu = True
        if self.run_name is None:
            self.run_name = Path(self.output_dir).name  # the tracker's run is named after the output folder
        # impossible numbers: one line before anything loads (TrainingArguments would accept most of them)
        for name in ("per_device_train_batch_size", "gradient_accumulation_steps", "max_context_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError(f"max_steps must be >= 1 (or -1: epochs decide), got {self.max_steps}")
        if self.max_steps == -1 and not self.num_train_epochs > 0:
            raise ValueError(f"num_train_epochs must be > 0, got {self.num_train_epochs}")
        if "bnb" in str(self.optim) or "8bit" in str(self.optim):
            import importlib.util

            if importlib.util.find_spec("bitsandbytes") is None:
                raise ValueError(f"optim={self.optim} needs bitsandbytes (pip install bitsandbytes; CUDA GPUs); "
                                 "use --optim adamw_torch otherwise")
        if not torch.cuda.is_available():
            self.dataloader_pin_memory = False  # nothing to pin to (torch would warn at every epoch)
        if self.disable_tqdm is None:
            from sdpo.progress import mode

            # a log file gets the Trainer's one line per logging step, not hundreds of redrawn bar frames
            self.disable_tqdm = mode() != "bar"
        super().__post_init__()
        if self.template not in TEMPLATE_NAMES:
            raise ValueError(f"template {self.template!r} is unknown; choose one of {', '.join(TEMPLATE_NAMES)}")
        if self.advantage_centering not in CENTERING:
            raise ValueError(f"advantage_centering must be one of {CENTERING}, got {self.advantage_centering!r}")
        if self.ignore_first_tokens < 0:
            raise ValueError("ignore_first_tokens must be >= 0")
        if self.ignore_first_tokens_rule not in FIRST_TOKENS_RULES:
            raise ValueError(f"ignore_first_tokens_rule must be batch or sequence, got {self.ignore_first_tokens_rule!r}")
        if self.advantage_clip is not None and self.advantage_clip <= 0:
            raise ValueError("advantage_clip must be positive")


OfflineSDPOConfig.NUMBER_RULES = {k: v for k, v in {'per_device_train_batch_size': '>=1', 'num_train_epochs': '>0', 'max_steps': '-1or>=1', 'learning_rate': '>0', 'warmup_steps': '>=0', 'weight_decay': '>=0', 'adam_beta1': '[0,1)', 'adam_beta2': '[0,1)', 'adam_epsilon': '>0', 'gradient_accumulation_steps': '>=1', 'max_grad_norm': '>=0', 'label_smoothing_factor': '[0,1)', 'neftune_noise_alpha': '>0|None', 'torch_empty_cache_steps': '>=1|None', 'logging_steps': '>0', 'eval_steps': '>0|None', 'eval_delay': '>=0', 'per_device_eval_batch_size': '>=1', 'eval_accumulation_steps': '>=1|None', 'save_steps': '>0', 'save_total_limit': '>=0|None', 'seed': '>=0', 'data_seed': '>=0|None', 'dataloader_num_workers': '>=0', 'dataloader_prefetch_factor': '>=1|None', 'ddp_bucket_cap_mb': '>=1|None', 'ddp_timeout': '>=1', 'local_rank': '>=-1', 'max_context_tokens': '>=1', 'ignore_first_tokens': '>=0', 'max_response_tokens': '>=0', 'advantage_clip': '>0|None', 'kl_coef': '>=0', 'max_records': '>=1|None', 'lora_r': '>=1', 'lora_alpha': '>0', 'lora_dropout': '[0,1)'}.items() if k in OfflineSDPOConfig.__dataclass_fields__}  # checked by sdpo.cli.check_number_rules (the -1 rules: sdpo.number_rules)


class InteractionDataset(Dataset):
    """Interaction records tokenized for the signal core."""

    def __init__(self, encoded: list[EncodedExample]):
        self.encoded = encoded
        self.lengths = [len(e.teacher_context) + len(e.response) for e in encoded]

    @classmethod
    def from_records(cls, records, tokenizer, *, template=DEFAULT_OFFLINE_TEMPLATE, max_context_tokens=2048, append_eos=True,
                     strip_response=False, max_response_tokens=0):
        """``strip_response``: trailing whitespace of ``y`` removed before the EOS; ``max_response_tokens``: ``y``
        (EOS included) cut to its first N tokens (0: no limit). Both as the reference's collator
        (``offline_sdpo_trainer.py`` L89-107: ``text.rstrip() + eos_token``, truncated to 2048 tokens)."""
        examples = [(r.x, r.y.rstrip() if strip_response else r.y, r.o) for r in records]
        encoded = encode_examples(tokenizer, examples, template, max_context_tokens=max_context_tokens,
                                  append_eos=append_eos)
        if max_response_tokens:
            for e in encoded:
                del e.response[max_response_tokens:]
        return cls(encoded)

    def __len__(self) -> int:
        return len(self.encoded)

    def __getitem__(self, i: int) -> dict:
        return {"encoded": self.encoded[i]}


def collate(features: list[dict]) -> dict:
    return {"encoded": [f["encoded"] for f in features]}


class OfflineSDPOTrainer(Trainer):
    """``Trainer`` whose loss is the SDPO policy-gradient loss on logged follow-ups."""

    def __init__(self, *args, sdpo_args: OfflineSDPOConfig | None = None, reference_model=None, **kwargs):
        kwargs.setdefault("data_collator", collate)
        super().__init__(*args, **kwargs)
        self.sdpo_args = sdpo_args or self.args
        self.reference_model = reference_model
        self._signal_stats: dict[str, list[float]] = defaultdict(list)
        tok = self.processing_class
        self.pad_token_id = tok.pad_token_id if tok is not None and tok.pad_token_id is not None else 0

    def _issue_warnings_after_load(self, load_result) -> None:
        """A tied output head (``lm_head`` = the embedding) is stored once in a checkpoint, so on resume it is
        not "missing": only keys that share no tensor with another are reported."""
        if getattr(load_result, "missing_keys", None) and hasattr(load_result, "_replace"):
            model = self.accelerator.unwrap_model(self.model)
            owners: dict[int, list[str]] = {}
            for name, param in model.named_parameters(remove_duplicate=False):
                owners.setdefault(param.data_ptr(), []).append(name)
            tied = {name for names in owners.values() if len(names) > 1 for name in names}
            load_result = load_result._replace(missing_keys=[k for k in load_result.missing_keys if k not in tied])
        super()._issue_warnings_after_load(load_result)

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy == "group_by_length" and isinstance(dataset, InteractionDataset):
            from transformers.trainer_pt_utils import LengthGroupedSampler

            generator = torch.Generator()
            generator.manual_seed(self.args.data_seed if self.args.data_seed is not None else self.args.seed)
            return LengthGroupedSampler(
                self.args.train_batch_size * self.args.gradient_accumulation_steps,
                lengths=dataset.lengths,
                generator=generator,
            )
        return super()._get_train_sampler(train_dataset)

    def _reference_logprobs(self, model, encoded):
        contexts = [e.student_context for e in encoded]
        responses = [e.response for e in encoded]
        with torch.no_grad():
            if self.reference_model is not None:
                return completion_logprobs(self.reference_model, contexts, responses, pad_token_id=self.pad_token_id)
            unwrapped = self.accelerator.unwrap_model(model)
            if hasattr(unwrapped, "disable_adapter"):  # LoRA: the base model is the reference
                with unwrapped.disable_adapter():
                    return completion_logprobs(unwrapped, contexts, responses, pad_token_id=self.pad_token_id)
        raise RuntimeError("kl_coef > 0 needs a reference model (or LoRA, whose base model serves as one)")

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        cfg = self.sdpo_args
        encoded = inputs["encoded"]
        student, teacher = hindsight_logprobs(model, encoded, pad_token_id=self.pad_token_id, student_grad=True)
        reference = self._reference_logprobs(model, encoded) if cfg.kl_coef else None
        loss, stats = offline_loss(student, teacher, cfg, reference=reference)
        for key, value in stats.items():
            self._signal_stats[key].append(value)
        self._signal_stats["response_length"].append(sum(len(e.response) for e in encoded) / len(encoded))
        self._signal_stats["contexts_truncated"].append(
            float(sum((e.student_truncated > 0) + (e.teacher_truncated > 0) for e in encoded)))
        return (loss, {"student": student, "teacher": teacher}) if return_outputs else loss

    def log(self, logs: dict, *args, **kwargs) -> None:
        if self._signal_stats and "loss" in logs:
            for key, values in self._signal_stats.items():
                if key in ("response_tokens", "sequences", "contexts_truncated"):
                    logs[key] = float(sum(values))
                else:
                    logs[key] = sum(values) / len(values)
            self._signal_stats.clear()
        super().log(logs, *args, **kwargs)


def offline_loss(student, teacher, cfg, *, reference=None):
    """The batch loss of offline SDPO: ``advantage_pg_loss`` with the first ``ignore_first_tokens`` response
    tokens left out by ``ignore_first_tokens_rule``.

    ``batch`` (the reference, ``offline_sdpo_trainer.py`` L389-393 and L217-227): the tokens are cut only
    when the batch's padded width (its longest response) is longer than ``ignore_first_tokens``; a response
    with no token left then contributes 0 and still counts in the mean over the batch's sequences.
    ``sequence``: each response longer than ``ignore_first_tokens`` loses its first tokens, and shorter ones
    are left out of the mean."""
    k = cfg.ignore_first_tokens
    lengths = [int(s.shape[0]) for s in student]
    if cfg.ignore_first_tokens_rule == "batch" and lengths and max(lengths) <= k:
        k = 0  # the reference slices only a batch wider than k
    loss, stats = advantage_pg_loss(student, teacher, ignore_first=k, centering=cfg.advantage_centering,
                                    clip=cfg.advantage_clip, reference=reference, kl_coef=cfg.kl_coef)
    kept = sum(n > k for n in lengths)
    if cfg.ignore_first_tokens_rule == "batch" and 0 < kept < len(lengths):
        loss = loss * (kept / len(lengths))  # the responses with no token left: zeros in the batch mean
    return loss, stats


class MetricsFileCallback(TrainerCallback):
    """Appends every log line to ``<output_dir>/metrics.jsonl`` (main process only)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        path = Path(args.output_dir) / "metrics.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"step": state.global_step, **logs}) + "\n")


def build_trainer(config: OfflineSDPOConfig, *, model=None, tokenizer=None, records=None, callbacks=None):
    """Load data and model as ``config`` says and return the trainer (nothing trained yet).

    Records are validated before the model is loaded, so a bad file fails fast.
    """
    from sdpo.data.interactions import load_interactions
    from sdpo.models import LoraOptions, apply_lora, load_model

    report = None
    if records is None:
        if not config.train_jsonl:
            raise ValueError("train_jsonl is required (records from `sdpo prepare ...`)")
        records, report = load_interactions(config.train_jsonl, skip_invalid=config.skip_invalid)
    if config.max_records:
        records = records[: config.max_records]
    if model is None:
        model, tokenizer = load_model(config.model_name_or_path, dtype=config.model_dtype, device="cpu")
        if config.use_lora:
            model = apply_lora(model, LoraOptions(r=config.lora_r, alpha=config.lora_alpha, dropout=config.lora_dropout))
    dataset = InteractionDataset.from_records(
        records,
        tokenizer,
        template=config.template,
        max_context_tokens=config.max_context_tokens,
        append_eos=config.append_eos,
        strip_response=config.strip_response,
        max_response_tokens=config.max_response_tokens,
    )
    cut = sum(e.student_truncated > 0 or e.teacher_truncated > 0 for e in dataset.encoded)
    if cut:
        import warnings

        warnings.warn(f"{cut} of {len(dataset)} records have a context longer than max_context_tokens="
                      f"{config.max_context_tokens}: the oldest turns (then the start of the request) are cut, the "
                      "follow-up is kept; logged per step as contexts_truncated", stacklevel=2)
    reference_model = None
    if config.kl_coef and not config.use_lora:
        import copy

        reference_model = copy.deepcopy(model).eval().requires_grad_(False)
    trainer = OfflineSDPOTrainer(
        model=model,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        sdpo_args=config,
        reference_model=reference_model,
        callbacks=[MetricsFileCallback(), *(callbacks or [])],
    )
    if reference_model is not None:
        reference_model.to(trainer.args.device)
    trainer.load_report = report
    from sdpo.progress import quiet_trainer

    quiet_trainer(trainer)  # our progress line instead of the Trainer's per-step dicts (metrics.jsonl has them)
    return trainer


def resolve_resume(config: OfflineSDPOConfig):
    """``resume_from_checkpoint``: a path, or ``last`` for the newest complete checkpoint in output_dir
    (one whose ``trainer_state.json``, which ``Trainer`` writes last, is there and readable; incomplete
    ones are skipped with a warning)."""
    from sdpo import rundir

    value = rundir.resume_target(config.output_dir, config.resume_from_checkpoint)
    if value is None:  # not asked, or 'last' before the first complete checkpoint: from the beginning
        return None
    if value in rundir.LAST:
        return str(rundir.last_checkpoint(config.output_dir, warn=config.process_index == 0))
    if not Path(value).is_dir():
        raise FileNotFoundError(f"resume_from_checkpoint: {value} is not a directory")
    if not rundir.is_complete(value):
        raise FileNotFoundError(f"resume_from_checkpoint: {value} is not a complete checkpoint "
                                f"(no readable {rundir.STATE_NAME})")
    return value


def planned_steps(config: TrainingArguments, n_records: int) -> int:
    """Optimizer steps the Trainer will take (its own rule: --max_steps, else epochs x updates per epoch)."""
    if config.max_steps and config.max_steps > 0:
        return int(config.max_steps)
    batches = math.ceil(n_records / max(1, config.per_device_train_batch_size * max(1, config.world_size)))
    per_epoch = max(batches // config.gradient_accumulation_steps
                    + int(batches % config.gradient_accumulation_steps > 0), 1)
    return math.ceil(config.num_train_epochs * per_epoch)


def learning_rate_note(config: TrainingArguments, n_records: int) -> str | None:
    """One line when the schedule gives learning rate 0 at every step of the run (e.g. a 1-step run whose
    warm-up rounds up to 1 step), or never reaches the peak because the warm-up is as long as the run."""
    import warnings

    from transformers import get_scheduler

    steps = planned_steps(config, n_records)
    warmup = config.get_warmup_steps(steps)
    if warmup < 1 or config.learning_rate <= 0:
        return None
    param = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.SGD([param], lr=config.learning_rate)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scheduler.step() without optimizer.step()
        scheduler = get_scheduler(config.lr_scheduler_type, optimizer, num_warmup_steps=warmup,
                                  num_training_steps=steps, scheduler_specific_kwargs=config.lr_scheduler_kwargs or {})
        rates = []
        for _ in range(min(steps, warmup + 1)):  # the warm-up decides; the rest of the schedule only decays
            rates.append(scheduler.get_last_lr()[0])
            scheduler.step()
    plural = "s" if steps != 1 else ""
    every = "at the run's only optimizer step" if steps == 1 else f"at every one of the {steps} optimizer steps"
    how = (f"--warmup_steps {config.warmup_steps:g} is {warmup} warm-up step{'s' if warmup != 1 else ''}"
           + (f" ({config.warmup_steps:g} x {steps}, rounded up)" if config.warmup_steps < 1 else ""))
    if max(rates) == 0:
        return (f"the learning rate is 0 {every} ({how}): "
                "the weights will not change; for a short sanity run pass --warmup_steps 0")
    if warmup >= steps:
        return (f"the warm-up covers the whole run ({how}, {steps} optimizer step{plural}): the learning rate "
                f"stays below --learning_rate {config.learning_rate:g} (at most {max(rates):.3g}); "
                "--warmup_steps 0 for a short run")
    return None


@contextmanager
def _disk_full_is_one_line(output_dir: str, what: str):
    """A save that runs out of space: the half-written checkpoint goes (``Trainer`` writes
    ``trainer_state.json`` last, so it is the one without it) and the error is one line that says what
    is kept and how to go on; any other error passes through unchanged."""
    import shutil

    from sdpo import rundir

    try:
        yield
    except Exception as err:
        if not rundir.is_disk_full(err, output_dir):
            raise
        partial = [p for p in Path(output_dir).glob("checkpoint-*") if p.is_dir() and not rundir.is_complete(p)]
        for path in partial:
            shutil.rmtree(path, ignore_errors=True)
        raise rundir.disk_full_error(output_dir, ", ".join(p.name for p in partial) or what) from None


def train_offline(config: OfflineSDPOConfig, **kwargs):
    """Train as ``config`` says, holding ``output_dir`` for the run (:func:`sdpo.rundir.claim`: locked,
    a used directory refused unless resuming or ``overwrite_output_dir``)."""
    from sdpo import rundir

    with rundir.claim(config.output_dir, resume=config.resume_from_checkpoint,
                      overwrite=config.overwrite_output_dir, main=config.process_index == 0):
        return _train_offline(config, **kwargs)


def _train_offline(config: OfflineSDPOConfig, **kwargs):
    from sdpo import rundir

    resume = resolve_resume(config)  # before the model loads
    trainer = build_trainer(config, **kwargs)
    if trainer.load_report is not None and trainer.is_world_process_zero():
        print(trainer.load_report.summary())
        for line in trainer.load_report.first_errors:
            print(f"  skipped: {line}")
    if resume is not None:
        step = json.loads((Path(resume) / rundir.STATE_NAME).read_text()).get("global_step", 0)
        planned = planned_steps(config, len(trainer.train_dataset))
        if step >= planned:  # Trainer would take one more step past the end; there is nothing left to train
            return _finished_already(trainer, config, resume, step, planned)
        if trainer.is_world_process_zero():  # the resumed steps are logged again
            rundir.truncate_metrics(Path(config.output_dir) / "metrics.jsonl", step)
    if trainer.is_world_process_zero():
        note = learning_rate_note(config, len(trainer.train_dataset))
        if note:
            print(f"warning: {note}", file=sys.stderr, flush=True)
    if "trackio" in (config.report_to or []):
        from sdpo.progress import quiet_trackio

        quiet_trackio()  # one line instead of trackio's banner
    consolidate_zero3_saves(trainer.accelerator)
    with _disk_full_is_one_line(config.output_dir, "a checkpoint"):
        trainer.train(resume_from_checkpoint=resume)
    _save_final(trainer, config)
    return trainer


def _save_final(trainer, config: OfflineSDPOConfig) -> None:
    """The final model and ``sdpo_config.json`` in output_dir."""
    full_state_dict_for_final_save(trainer.accelerator)
    with _disk_full_is_one_line(config.output_dir, "the final model"):
        trainer.save_model(config.output_dir)
    if trainer.is_world_process_zero():
        settings = {k: v for k, v in asdict(config).items() if "token" not in k.lower() or k.endswith("_tokens")}
        (Path(config.output_dir) / "sdpo_config.json").write_text(json.dumps(settings, indent=1, default=str))


def _finished_already(trainer, config: OfflineSDPOConfig, resume: str, step: int, planned: int):
    """Resuming a run whose checkpoint is at (or past) the last step: nothing is trained. The final model
    is written from that checkpoint when a kill came between the last checkpoint and the final save."""
    from transformers import TrainerState

    from sdpo import rundir

    trainer.state = TrainerState.load_from_json(str(Path(resume) / rundir.STATE_NAME))
    if trainer.is_world_process_zero():
        print(f"{resume} is at step {step} of {planned}: the run is done, nothing to train", flush=True)
    if not (Path(config.output_dir) / "sdpo_config.json").is_file():  # written after the final model
        trainer._load_from_checkpoint(resume)
        _save_final(trainer, config)
    return trainer
