"""One online SDPO step (score + update) vs TRL's experimental SDPOTrainer on the same work.

Side by side in one process, the order alternating every round, one warm-up round, then
the median of ``--repeats`` rounds. Both sides start from the same weights (two copies of
``--model``), see the same ``--prompts`` TL;DR prompts (the bundled sample,
``prepare_tldr``), the same sampled completions and the same follow-up texts:

* the completions are sampled once, up front, outside any timed region: our copy of the
  model, ``sdpo.generation.hf_generate`` at temperature 1, ``--max-new-tokens`` new
  tokens (EOS kept where a response ended), from the student contexts the online trainer
  renders (``fit_context`` with the default ``hindsight`` template and system prompt);
* the follow-ups come from the rule simulator (``RuleUserSimulator``, persona
  ``concise_casual_beginner``, the online trainer's default style) on those completions.

**ours** (timed): ``sdpo.trainers.update.sdpo_update``, as ``OnlineSDPOTrainer._micro_step``
calls it, with the online trainer's defaults (``UpdateOptions.from_config(OnlineSDPOConfig())``:
policy-gradient loss on ``A_t = log q_t - log s_t``, per-sequence centring, PPO clip
0.2, gradient clipping 1.0): teacher contexts built from the follow-ups (template,
tokenisation), student forward with gradient + teacher forward without (the signal
core), loss, backward, clip, AdamW step, ``zero_grad``. The optimizer is built as the
online trainer builds it (``torch.optim.AdamW(lr=5e-6, weight_decay=0,
**sdpo.models.adamw_options(params))``, i.e. fused where torch has the kernel). No
``accelerate.Accelerator`` (the plain-PyTorch path of ``sdpo_update``, the one ``sdpo
chat`` takes; on one process the trainer's accelerator adds nothing but wrappers).

**TRL** (timed): ``trl.experimental.sdpo.SDPOTrainer.training_step`` on a batch prepared
once in the trainer's own format, then the optimizer step exactly as
``transformers.Trainer``'s inner loop does it (``accelerator.clip_grad_norm_`` at
``max_grad_norm`` 1.0, ``optimizer.step()``, ``lr_scheduler.step()``,
``model.zero_grad()``). ``training_step`` does ``model.train()``, the loss under
``compute_loss_context_manager()`` (``SDPOTrainer.compute_loss``: student forward with
gradient on prompt + completion, live-teacher forward under ``no_grad`` on reprompt +
completion, sampled-token distillation loss), ``accelerator.backward``. Generation is
bypassed: the trainer's ``_prepare_inputs`` (which would sample and score new rollouts)
is replaced on the instance by the identity, and the batch is built up front:
``prompt_ids`` / ``prompt_mask`` = our student contexts left-padded (the ids the
completions were sampled from; whether TRL's own prompt tokenisation gives the same ids
is reported as ``trl_prompt_tokenization_matches``), ``completion_ids`` /
``completion_mask`` right-padded, and the teacher part made by TRL's own
``SuccessfulRolloutTeacherContextBuilder.build`` (its ``reprompt_template`` /
``feedback_template`` with the follow-up as ``privileged_context``). TRL's teacher
tokenisation is therefore *outside* its timed region while ours is inside (a few ms,
against us).

TRL settings (``SDPOConfig``), what we chose and why:

* ``distillation_mode="sampled_token"`` (its default), ``distillation_alpha=1.0`` (its
  default; required by that mode), ``distillation_weight=1.0`` (its default: pure
  self-distillation, no GRPO term): the per-token loss ``(log p_S - log p_T).detach() *
  log p_S`` on the sampled token, the uncentred form of our policy gradient;
* ``teacher_model_kind="live"`` (its default is ``"ema"``, a second model kept by an EMA
  callback): the teacher is the current student under the feedback context, which is
  what our hindsight teacher is; the EMA update would be extra work of TRL's that we
  don't do;
* ``include_environment_feedback=True``, ``use_successful_as_teacher=False``,
  ``num_generations=1``: one completion per prompt, the teacher context is the prompt
  plus the follow-up (there are no peers to demonstrate);
* ``distillation_is_clip=2.0`` (default) is inactive: with one generation per optimizer
  step TRL keeps no ``old_per_token_logps``; ours computes its PPO ratio (1 on-policy);
* ``max_prompt_length=None`` (no left cut; ours allows 2048 tokens, the TL;DR prompts
  are far shorter); ``learning_rate=5e-6`` constant, ``weight_decay=0``,
  ``max_grad_norm=1.0`` (same numbers as ours);
* ``optim``: TRL/transformers' default (``adamw_torch_fused`` on torch >= 2.8);
* precision: ``--dtype auto`` resolves as in ``sdpo.models.parameter_dtype``. Where
  that is mixed precision (float32 parameters, bf16 autocast: CPUs with AMX/avx512_bf16)
  TRL gets ``bf16=True`` (accelerate's bf16 autocast, float32 master weights: the same
  recipe); float32 gives ``bf16=False`` on both; bf16 parameters (``auto`` on a bf16
  GPU, or ``--dtype bfloat16``) give both bf16 weights and TRL ``bf16=True``. Which
  autocast dtype each side's forwards actually ran under is probed and printed
  (``ours_autocast``, ``trl_autocast``);
* ``gradient_checkpointing=False``: TRL's config defaults to ``True``, which recomputes
  activations in backward (more work for less memory); we compare equal work. Pass
  ``--trl-gradient-checkpointing`` to time TRL's default as well.

Then one more round per side with wrappers on (not in the medians): ``split``, where each
side's step spends its time (tokenisation, forwards with / without gradient, backward,
gradient clipping, optimizer, the rest; host-sync calls counted; see ``_Split``).

Printed: one JSON line with the median seconds per step of each side, ``ratio``
(ours / TRL: below 1 means ours is faster; the issue's target is <= 0.8), every round's
times, token counts (response tokens, student / teacher context tokens of each side and
TRL's padded forward sizes), dtype, threads, versions, date, load average and the command.

    python benchmarks/bench_trl_step.py                         # smollm2-135m, 4 prompts, 64 tokens
    python benchmarks/bench_trl_step.py --dtype float32 --repeats 5
    python benchmarks/bench_trl_step.py --model tiny-random --repeats 1 --prompts 2 --max-new-tokens 4
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
STYLE = "concise_casual_beginner"  # the online trainer's default persona


def _parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="smollm2-135m (default) or tiny-random (tests)")
    parser.add_argument("--prompts", type=int, default=4, help="prompts per step (the online trainer's batch)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="completion length limit")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds after one warm-up round")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, or auto")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed of the completions")
    parser.add_argument("--trl-gradient-checkpointing", action="store_true",
                        help="TRL with its config default gradient_checkpointing=True (recomputes activations)")
    parser.add_argument("--no-split", action="store_true", help="skip the extra profiled round (the split)")
    parser.add_argument("--torch-profile", type=int, default=0, metavar="N",
                        help="one more round per side under torch.profiler: its N operators with the most self time")
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else None
    for name in ("prompts", "max_new_tokens", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    return args


class _AutocastProbe:
    """Records the autocast dtype (or None) the model's first linear layer ran under."""

    def __init__(self, model):
        self.seen: set[str] = set()
        linear = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
        self.device = next(model.parameters()).device.type
        self.handle = linear.register_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        on = torch.is_autocast_enabled(self.device)
        self.seen.add(str(torch.get_autocast_dtype(self.device)).replace("torch.", "") if on else "none")

    def result(self) -> str:
        return ",".join(sorted(self.seen)) or "not-run"


class _Split:
    """Where one step's time goes, measured in an extra, untimed round (the wrappers cost a little).

    ``tokenize``: the tokenizer's ``__call__`` / ``encode`` / ``apply_chat_template`` / ``decode``;
    ``body_forward_grad`` / ``_no_grad``: the decoder stack's forward with and without autograd
    (student vs teacher); ``head_forward_*``: the output head (ours applies it to the response
    positions in chunks, TRL's full forward to every position); ``backward``: ``Tensor.backward``; ``clip``: ``clip_grad_norm_``;
    ``optimizer``: ``optimizer.step`` (+ ``zero_grad``); ``host_syncs``: calls of ``Tensor.item`` /
    ``tolist`` / ``cpu`` / ``numpy`` (counted; on a CPU they wait for nothing, on a GPU each waits for the
    queue); ``other``: the rest of the step (log-softmax over the vocabulary, padding, masks, the loss's
    arithmetic, the Trainer's wrappers).
    """

    SYNC_METHODS = ("item", "tolist", "cpu", "numpy")

    def __init__(self, model, tokenizer, optimizer):
        self.model, self.tok, self.opt = model, tokenizer, optimizer
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def _add(self, key, dt):
        self.seconds[key] = self.seconds.get(key, 0.0) + dt
        self.calls[key] = self.calls.get(key, 0) + 1

    def _timed(self, key, fn):
        def wrapper(*a, **kw):
            if self._depth:  # nested (e.g. encode inside __call__): counted once, by the outer call
                return fn(*a, **kw)
            self._depth += 1
            start = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self._depth -= 1
                self._add(key, time.perf_counter() - start)
        return wrapper

    def __enter__(self):
        self._depth = 0
        self._saved = []
        for name in ("__call__", "encode", "apply_chat_template", "decode", "batch_decode"):
            if hasattr(self.tok, name):
                self._patch_instance(self.tok, name, "tokenize")
        self._patch_instance(self.opt, "step", "optimizer")
        self._patch_instance(self.opt, "zero_grad", "optimizer")
        self._patch_attr(torch.Tensor, "backward", "backward")
        self._patch_attr(torch.nn.utils, "clip_grad_norm_", "clip")
        for name in self.SYNC_METHODS:
            original = getattr(torch.Tensor, name)
            self._saved.append((torch.Tensor, name, original, False))

            def counted(t, *a, _orig=original, _name=name, **kw):
                self.calls["host_syncs"] = self.calls.get("host_syncs", 0) + 1
                return _orig(t, *a, **kw)
            setattr(torch.Tensor, name, counted)
        self._fwd_start = []

        inner = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        body = getattr(inner, inner.base_model_prefix)  # the decoder stack: both sides call it
        head = inner.get_output_embeddings()  # ours applies it in chunks, TRL's full forward once
        self._hooks = []
        for module, key in ((body, "body"), (head, "head")):
            def pre_k(module, args, _key=key):
                self._fwd_start.append(time.perf_counter())

            def post_k(module, args, output, _key=key):
                elapsed = time.perf_counter() - self._fwd_start.pop()
                if self._depth:  # recomputed inside backward (activation checkpointing): backward's time
                    self.calls[f"{_key}_recomputed_in_backward"] = self.calls.get(
                        f"{_key}_recomputed_in_backward", 0) + 1
                    return
                grad = "grad" if torch.is_grad_enabled() else "no_grad"
                self._add(f"{_key}_forward_{grad}", elapsed)
            self._hooks += [module.register_forward_pre_hook(pre_k), module.register_forward_hook(post_k)]
        return self

    def _patch_instance(self, obj, name, key):
        original = getattr(obj, name)
        had = name in vars(obj) if hasattr(obj, "__dict__") else False
        setattr(obj, name, self._timed(key, original))
        self._saved.append((obj, name, original if had else None, True))

    def _patch_attr(self, owner, name, key):
        original = getattr(owner, name)
        self._saved.append((owner, name, original, False))
        timed = self._timed(key, original)
        setattr(owner, name, timed)

    def __exit__(self, *exc):
        for h in self._hooks:
            h.remove()
        for owner, name, original, instance in reversed(self._saved):
            if instance and original is None:
                delattr(owner, name)
            else:
                setattr(owner, name, original)
        return False

    def result(self, total: float) -> dict:
        out = {k: round(v, 4) for k, v in sorted(self.seconds.items())}
        out["other"] = round(total - sum(self.seconds.values()), 4)
        out["total"] = round(total, 4)
        out["calls"] = dict(sorted(self.calls.items()))
        return out


def _left_pad(rows, pad_id, device):
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad_id] * (width - len(r)) + list(r) for r in rows], device=device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
    return ids, mask


def _right_pad(rows, pad_id, device):
    width = max(len(r) for r in rows)
    ids = torch.tensor([list(r) + [pad_id] * (width - len(r)) for r in rows], device=device)
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=device)
    return ids, mask


def _build_trl(model, tok, train_rows, args, bf16: bool, out_dir: str):
    """An SDPOTrainer on ``model`` with the settings of the module docstring, its optimizer
    and scheduler created and prepared as ``Trainer._prepare_for_training`` does."""
    from datasets import Dataset
    from trl.experimental.sdpo import SDPOConfig, SDPOTrainer

    def zero_reward(completions, **kwargs):  # SDPOTrainer requires a reward function; unused here
        return [0.0] * len(completions)

    config = SDPOConfig(
        output_dir=out_dir, report_to="none", save_strategy="no", logging_strategy="no",
        use_cpu=torch.device(args.device).type == "cpu", bf16=bf16, seed=args.seed,
        per_device_train_batch_size=len(train_rows), gradient_accumulation_steps=1, num_generations=1,
        max_completion_length=args.max_new_tokens, max_prompt_length=None, temperature=1.0,
        learning_rate=5e-6, lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=1.0,
        distillation_mode="sampled_token", distillation_alpha=1.0, distillation_weight=1.0,
        teacher_model_kind="live", include_environment_feedback=True, use_successful_as_teacher=False,
        gradient_checkpointing=args.trl_gradient_checkpointing, diagnostics_warning_interval=0,
    )
    trainer = SDPOTrainer(model=model, reward_funcs=zero_reward, args=config,
                          train_dataset=Dataset.from_list(train_rows), processing_class=tok)
    if args.trl_gradient_checkpointing:  # Trainer.train() turns it on; we never call train()
        model = trainer.model
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        kwargs = dict(config.gradient_checkpointing_kwargs or {"use_reentrant": True})
        try:
            enable(activation_checkpointing_kwargs=kwargs)
        except TypeError:
            enable(gradient_checkpointing_kwargs=kwargs)
    trainer.create_optimizer()
    prepared, trainer.optimizer = trainer.accelerator.prepare(trainer.model, trainer.optimizer)
    trainer.model_wrapped = prepared
    trainer.create_scheduler(num_training_steps=10**6)
    trainer.current_gradient_accumulation_steps = 1  # set per step by Trainer's inner loop
    trainer._prepare_inputs = lambda inputs: inputs  # the batch is prepared once, up front (no generation)
    return trainer, prepared


def _trl_batch(trainer, tok, contexts, responses, trl_prompts, followups, device):
    prompt_ids, prompt_mask = _left_pad(contexts, tok.pad_token_id, device)
    completion_ids, completion_mask = _right_pad(responses, tok.pad_token_id, device)
    batch = {
        "prompt_ids": prompt_ids, "prompt_mask": prompt_mask,
        "completion_ids": completion_ids, "completion_mask": completion_mask,
        "raw_completion_lengths": torch.tensor([len(r) for r in responses], device=device),
    }
    rewards = torch.zeros(len(responses), device=device)
    teacher = trainer.teacher_context_builder.build(batch, trl_prompts, rewards, feedbacks=followups)
    batch.update(teacher, rewards=rewards, advantages=torch.zeros_like(rewards))
    return batch


def _trl_step(trainer, model, batch) -> float:
    """``training_step`` + the optimizer step of ``Trainer``'s inner loop; returns the loss."""
    loss = trainer.training_step(model, batch, None)
    trainer.accelerator.clip_grad_norm_(model.parameters(), trainer.args.max_grad_norm)
    trainer.optimizer.step()
    trainer.lr_scheduler.step()
    model.zero_grad()
    return float(loss)


def run(args: argparse.Namespace) -> dict:
    import transformers
    import trl

    from sdpo.data.prompt_sources import load_prompt_rows, prepare_tldr
    from sdpo.feedback.simulators import RuleUserSimulator
    from sdpo.generation import hf_generate
    from sdpo.models import adamw_options, load_model, parameter_dtype, resolve_device
    from sdpo.templates import fit_context, get_template
    from sdpo.trainers.online import OnlineSDPOConfig
    from sdpo.trainers.update import UpdateExample, UpdateOptions, sdpo_update

    device = resolve_device(args.device)
    param_dtype, autocast = parameter_dtype(args.dtype, device)
    param_name = str(param_dtype).replace("torch.", "")
    online = OnlineSDPOConfig(style=STYLE, simulator="rule", report_to="none", progress=False)
    options = UpdateOptions.from_config(online)

    train, _, _ = prepare_tldr(load_prompt_rows("tldr", "sample"))
    if len(train) < args.prompts:
        raise SystemExit(f"--prompts {args.prompts}: the bundled TL;DR sample has {len(train)} train prompts")
    prompts = train[: args.prompts]

    ours, tok = load_model(args.model, dtype=args.dtype, device=device)  # autocast hooks where `auto` says so
    theirs, _ = load_model(args.model, dtype=param_name, device=device)  # same weights, no hooks: TRL casts
    template = get_template(online.template, system_prompt=online.system_prompt)
    contexts = [fit_context(tok, template, p.messages, options.max_context_tokens)[0] for p in prompts]

    torch.manual_seed(args.seed)
    ours.eval()
    with torch.no_grad():
        responses = hf_generate(ours, tok, contexts, max_new_tokens=args.max_new_tokens, temperature=1.0)
    ours.train()
    responses = [r or [tok.eos_token_id] for r in responses]
    texts = tok.batch_decode(responses, skip_special_tokens=True)
    followups = RuleUserSimulator(STYLE).followups([p.text for p in prompts], texts)
    teacher_contexts = [fit_context(tok, template, p.messages, options.max_context_tokens, followup=o)[0]
                        for p, o in zip(prompts, followups)]
    examples = [UpdateExample(p.messages, r, o, context=c)
                for p, r, o, c in zip(prompts, responses, followups, contexts)]

    params = [p for p in ours.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=online.learning_rate, weight_decay=online.weight_decay,
                                  **adamw_options(params))

    trl_prompts = [template.student_messages(p.messages) for p in prompts]
    train_rows = [{"prompt": m, "privileged_context": o} for m, o in zip(trl_prompts, followups)]
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer, trl_model = _build_trl(theirs, tok, train_rows, args, bf16=param_dtype == torch.bfloat16
                                        or autocast is not None, out_dir=tmp)
        tdev = trainer.accelerator.device
        batch = _trl_batch(trainer, tok, contexts, responses, trl_prompts, followups, tdev)
        trl_own_prompt_ids = trainer._tokenize_prompts(trl_prompts)

        probes = {"ours": _AutocastProbe(ours), "trl": _AutocastProbe(trl_model)}
        steps = {
            "ours": lambda: sdpo_update(ours, optimizer, tok, template, examples, options).loss,
            "trl": lambda: _trl_step(trainer, trl_model, batch),
        }
        times: dict[str, list[float]] = {k: [] for k in steps}
        losses: dict[str, list[float]] = {k: [] for k in steps}
        for r in range(args.repeats + 1):  # round 0 warms up (allocations, optimizer state)
            for name in (list(steps) if r % 2 == 0 else list(steps)[::-1]):
                start = time.perf_counter()
                loss = steps[name]()
                elapsed = time.perf_counter() - start
                if r:
                    times[name].append(elapsed)
                    losses[name].append(loss)
        for p in probes.values():
            p.handle.remove()
        split = {}
        if not args.no_split:  # one more round per side, untimed above, with the split's wrappers on
            sides = {"ours": (ours, optimizer), "trl": (trl_model, trainer.optimizer)}
            for name, (model, opt) in sides.items():
                with _Split(model, tok, opt) as profile:
                    start = time.perf_counter()
                    steps[name]()
                    split[name] = profile.result(time.perf_counter() - start)
        top_ops = {}
        if args.torch_profile:  # and one more under torch.profiler: the operators that take the time
            from torch.profiler import ProfilerActivity, profile as torch_profile

            for name in steps:
                with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
                    steps[name]()
                top_ops[name] = [
                    {"op": e.key, "self_s": round(e.self_cpu_time_total / 1e6, 4), "calls": e.count}
                    for e in sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[: args.torch_profile]]

    teacher_prompt_tokens = (batch["teacher_attention_mask"].sum(1) - batch["completion_mask"].sum(1)).tolist()
    row = {
        "benchmark": "trl_sdpo_step",
        "model": args.model,
        "device": device,
        "prompts": len(prompts),
        "max_new_tokens": args.max_new_tokens,
        "repeats": args.repeats,
        "ours_s": round(statistics.median(times["ours"]), 4),
        "trl_s": round(statistics.median(times["trl"]), 4),
    }
    row["ratio"] = round(row["ours_s"] / row["trl_s"], 3)
    row.update({
        "ours_times_s": [round(t, 4) for t in times["ours"]],
        "trl_times_s": [round(t, 4) for t in times["trl"]],
        "ours_loss": [round(x, 5) for x in losses["ours"]],
        "trl_loss": [round(x, 5) for x in losses["trl"]],
        "split": split,
        "top_ops": top_ops,
        "response_tokens": sum(len(r) for r in responses),
        "response_tokens_per_row": [len(r) for r in responses],
        "responses_ended": sum(r[-1] == tok.eos_token_id for r in responses),
        "student_context_tokens": sum(len(c) for c in contexts),
        "ours_teacher_context_tokens": sum(len(c) for c in teacher_contexts),
        "trl_teacher_context_tokens": int(sum(teacher_prompt_tokens)),
        "trl_student_forward_shape": [int(batch["prompt_ids"].shape[0]),
                                      int(batch["prompt_ids"].shape[1] + batch["completion_ids"].shape[1])],
        "trl_teacher_forward_shape": list(batch["teacher_input_ids"].shape),
        "trl_prompt_tokenization_matches": [list(x) for x in trl_own_prompt_ids] == [list(c) for c in contexts],
        "followup_words_mean": round(statistics.mean(len(o.split()) for o in followups), 1),
        "dtype_arg": args.dtype,
        "param_dtype": param_name,
        "ours_autocast": probes["ours"].result(),
        "trl_autocast": probes["trl"].result(),
        "trl_bf16": bool(trainer.args.bf16),
        "trl_optim": str(getattr(trainer.args.optim, "value", trainer.args.optim)),
        "trl_optimizer": type(getattr(trainer.optimizer, "optimizer", trainer.optimizer)).__name__,
        "trl_fused": bool(getattr(trainer.optimizer, "optimizer", trainer.optimizer).defaults.get("fused")),
        "ours_optimizer_kwargs": adamw_options(params),
        "trl_gradient_checkpointing": bool(getattr(trainer.model, "is_gradient_checkpointing", False)),
        "trl_teacher": trainer.args.teacher_model_kind,
        "trl_distillation_mode": trainer.args.distillation_mode,
        "ours_loss_kind": options.loss,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
        "machine": platform.machine(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        "command": " ".join(shlex.quote(a) for a in ["python", *_script_argv(args.argv)]),
    })
    return row


def _script_argv(given: list[str] | None) -> list[str]:
    argv = [str(Path(__file__)), *given] if given is not None else list(sys.argv)
    if argv and argv[0].endswith(".py"):
        try:
            argv[0] = str(Path(argv[0]).resolve().relative_to(ROOT))
        except ValueError:
            pass
    return argv


def main(argv=None) -> dict:
    args = _parse(argv)
    row = run(args)
    print(json.dumps(row), flush=True)
    return row


if __name__ == "__main__":
    main()
