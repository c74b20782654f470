"""The SPO pipeline on language models: generate preferences, train, β-scan evaluation,
grids of cells, and analysis. Each step is a function of a dataclass of options;
``sdpo spo <step>`` and ``scripts/<step>.py`` parse the same dataclasses.
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

BETAS = "0.5,0.75,1,1.25,1.5,2"
CSV_FIELDS = ["model_id", "ref_model_id", "reward_model_id", "link_shift", "link_temperature", "seed", "method",
              "n", "beta", "reward", "kl", "reward_se", "kl_se", "samples", "sign"]


def _floats(text: str, name: str) -> list[float]:
    try:
        return [float(v) for v in str(text).replace(" ", "").split(",") if v != ""]
    except ValueError:
        raise ValueError(f"--{name}: expected comma-separated numbers, got {text!r}") from None


# ----------------------------------------------------------------------------- models


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


class RewardModel:
    """``AutoModelForSequenceClassification`` (first logit) or ``python:module:function``
    (a callable ``f(prompts, responses) -> list[float]``)."""

    def __init__(self, spec: str, *, batch_size: int = 8, max_length: int = 2048):
        self.spec, self.batch_size, self.max_length = spec, batch_size, max_length
        if spec.startswith("python:"):
            import importlib

            try:
                module, func = spec[len("python:"):].rsplit(":", 1)
                self.func = getattr(importlib.import_module(module), func)
            except (ValueError, ImportError, AttributeError) as exc:
                raise ValueError(f"--reward_model_id {spec}: cannot import the callable ({exc})") from None
            return
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from ..models import ModelLoadError

        self.func = None
        try:
            self.tok = AutoTokenizer.from_pretrained(spec)
            self.model = AutoModelForSequenceClassification.from_pretrained(spec).to(_device()).eval()
        except OSError as exc:
            raise ModelLoadError(f"--reward_model_id {spec}: cannot load a sequence-classification model ({exc})") from None
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        self.model.config.pad_token_id = self.tok.pad_token_id

    def __call__(self, prompts: list[str], responses: list[str]) -> list[float]:
        if self.func is not None:
            return [float(v) for v in self.func(prompts, responses)]
        scores = []
        for i in range(0, len(prompts), self.batch_size):
            texts = []
            for p, r in zip(prompts[i : i + self.batch_size], responses[i : i + self.batch_size]):
                msgs = [{"role": "user", "content": p}, {"role": "assistant", "content": r}]
                if self.tok.chat_template:
                    texts.append(self.tok.apply_chat_template(msgs, tokenize=False))
                else:
                    texts.append(f"User: {p}\nAssistant: {r}")
            enc = self.tok(texts, return_tensors="pt", padding=True, truncation=True, max_length=self.max_length)
            with torch.no_grad():
                out = self.model(**{k: v.to(self.model.device) for k, v in enc.items()}).logits[:, 0]
            scores.extend(out.float().cpu().tolist())
        return scores


def _chat_ids(tok, prompt: str, max_prompt_length: int) -> list[int]:
    ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True,
                                  return_dict=True)["input_ids"]
    return list(ids)[-max_prompt_length:]


def _prompt_text(row: dict, column: str | None) -> str:
    for key in ([column] if column else []) + ["instruction", "prompt", "question", "text"]:
        if key and isinstance(row.get(key), str) and row[key].strip():
            return row[key]
    raise ValueError(f"row has no prompt column (tried {column or ''} instruction/prompt/question/text): {sorted(row)}")


# ----------------------------------------------------------------------------- generate


@dataclass
class GenerateArguments:
    dataset_id: str = field(default="openbmb/UltraFeedback", metadata={"help": "hub dataset id or local file"})
    dataset_split: str = field(default="train")
    prompt_column: str | None = field(default=None, metadata={"help": "default: instruction/prompt/question"})
    num_samples: int = field(default=2000, metadata={"help": "prompts (pairs) to generate"})
    model_id: str = field(default="Qwen/Qwen3-0.6B", metadata={"help": "reference model that samples y0, y1"})
    reward_model_id: str = field(default="Skywork/Skywork-Reward-V2-Qwen3-1.7B",
                                 metadata={"help": "sequence classifier, or python:module:function"})
    output: str = field(default="data/preferences/prefs.jsonl")
    link_shift: float = field(default=0.0, metadata={"help": "s in Psi(u) = 1/2 sig(u/tau - s) + 1/2 sig(u/tau + s)"})
    link_temperature: float = field(default=1.0, metadata={"help": "tau"})
    seed: int = field(default=123)
    gen_max_new_tokens: int = field(default=256)
    max_prompt_length: int = field(default=512)
    temperature: float = field(default=0.7, metadata={"help": "sampling temperature of y0, y1 (reference 0.7)"})
    top_p: float = field(default=0.95, metadata={"help": "nucleus sampling of y0, y1 (reference 0.95; 1 = off)"})
    batch_size: int = field(default=8)


GenerateArguments.NUMBER_RULES = {'num_samples': '>=1', 'link_temperature': '>0', 'gen_max_new_tokens': '>=1', 'max_prompt_length': '>=1', 'temperature': '>=0', 'top_p': '(0,1]', 'batch_size': '>=1', 'link_shift': '>=0', 'seed': '>=0'}  # checked by sdpo.cli.check_number_rules
GenerateArguments.OUTPUT_FILES = ('output',)


def _load_prompts(args: GenerateArguments) -> list[str]:
    import datasets

    path = Path(args.dataset_id)
    if path.suffix in (".jsonl", ".json", ".parquet", ".csv"):
        from ..data.io import load_local_table

        rows = list(load_local_table(path))
    else:
        from ..data.hub import load_hub_dataset  # one line, not a traceback, when the hub is out of reach

        rows = list(load_hub_dataset(args.dataset_id, split=args.dataset_split,
                                     hint="use --dataset_id FILE (a local .jsonl, .json, .parquet or .csv of prompts)"))
    prompts, seen = [], set()
    for i, row in enumerate(rows):
        try:
            text = _prompt_text(row, args.prompt_column)
        except ValueError as exc:
            raise ValueError(f"{args.dataset_id} row {i}: {exc}") from None
        if text not in seen:
            seen.add(text)
            prompts.append(text)
    random.Random(args.seed).shuffle(prompts)
    return prompts[: args.num_samples]


@torch.no_grad()
def sample_responses(model, tok, contexts: list[list[int]], *, max_new_tokens: int, temperature: float,
                     top_p: float) -> list[str]:
    """Sampled continuations (temperature, nucleus top-p) of left-padded contexts, cut after EOS."""
    from ..generation import left_pad

    ids, mask = left_pad(contexts, tok.pad_token_id)
    device = next(model.parameters()).device
    out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=temperature > 0,
                         temperature=temperature if temperature > 0 else None,
                         top_p=top_p if temperature > 0 and top_p < 1 else None, top_k=None,
                         max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id,
                         eos_token_id=tok.eos_token_id)[:, ids.shape[1]:].tolist()
    texts = []
    for row in out:
        if tok.eos_token_id in row:
            row = row[: row.index(tok.eos_token_id)]
        texts.append(tok.decode(row, skip_special_tokens=True))
    return texts


def generate_preferences(args: GenerateArguments) -> Path:
    from ..losses import mixture_link
    from ..models import load_model
    from ..progress import progress_bar

    if not 0 < args.top_p <= 1:
        raise ValueError(f"--top_p must be in (0, 1], got {args.top_p}")

    prompts = _load_prompts(args)
    reward = RewardModel(args.reward_model_id)
    model, tok = load_model(args.model_id, dtype="auto", device=_device(), seed=args.seed)
    torch.manual_seed(args.seed)
    rows = []
    for i in progress_bar(range(0, len(prompts), args.batch_size), desc="sampling pairs", unit="batch"):
        batch = prompts[i : i + args.batch_size]
        ctx = [_chat_ids(tok, p, args.max_prompt_length) for p in batch]
        y0 = sample_responses(model, tok, ctx, max_new_tokens=args.gen_max_new_tokens, temperature=args.temperature,
                              top_p=args.top_p)
        y1 = sample_responses(model, tok, ctx, max_new_tokens=args.gen_max_new_tokens, temperature=args.temperature,
                              top_p=args.top_p)
        r0, r1 = reward(batch, y0), reward(batch, y1)
        rows += [{"prompt": p, "y0": a, "y1": b, "r0": s0, "r1": s1} for p, a, b, s0, s1 in zip(batch, y0, y1, r0, r1)]
    diffs = torch.tensor([r["r1"] - r["r0"] for r in rows], dtype=torch.float64)
    std = float(diffs.std(unbiased=False))  # population std, as the reference (np.std)
    std = std if std > 1e-8 else 1.0
    g = torch.Generator().manual_seed(args.seed)
    probs = mixture_link(diffs / std, shift=args.link_shift, temperature=args.link_temperature)
    z = (torch.rand(len(rows), generator=g, dtype=torch.float64) < probs).long().tolist()
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r, d, p, zi in zip(rows, (diffs / std).tolist(), probs.tolist(), z):
            f.write(json.dumps({**r, "diff": d, "p_y1": p, "z": zi, "link_shift": args.link_shift,
                                "link_temperature": args.link_temperature, "seed": args.seed,
                                "model_id": args.model_id, "reward_model_id": args.reward_model_id}) + "\n")
    tmp.replace(out)
    print(f"== {len(rows)} preference pairs -> {out} (diff std before normalising {std:.3f}, "
          f"y1 preferred in {sum(z)}/{len(z)})")
    return out


# ----------------------------------------------------------------------------- train


@dataclass
class TrainArguments:
    pref_path: str = field(default="", metadata={"help": "preference JSONL from generate"})
    method: str = field(default="dpo", metadata={"help": "dpo, pspo, ospo or rspo"})
    base_model_id: str = field(default="Qwen/Qwen3-0.6B", metadata={"help": "policy init and reference"})
    output_dir: str = field(default="outputs/spo")
    max_steps: int = field(default=500, metadata={"help": "micro-batches (loss calls), as the reference counts steps; "
                                                  "the optimizer steps every grad_accum_steps of them"})
    learning_rate: float = field(default=5e-6)
    batch_size: int = field(default=4, metadata={"help": "pairs per micro-batch"})
    grad_accum_steps: int = field(default=4)
    weight_decay: float = field(default=0.0)
    lr_scheduler: str = field(default="cosine", metadata={"help": "cosine or constant (both after linear warm-up)"})
    warmup_steps: int = field(default=10, metadata={"help": "optimizer steps of linear warm-up"})
    schedule_horizon: str = field(default="max_steps", metadata={
        "help": "length of the cosine: 'max_steps' (reference: max_steps scheduler steps, although only "
                "max_steps / grad_accum_steps happen) or 'optimizer_steps' (decays to 0 at the end)"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping (0: off)"})
    scale_loss_by_accumulation: bool = field(default=False, metadata={
        "help": "divide each micro-batch loss by grad_accum_steps (off: summed, as the reference)"})
    seed: int = field(default=123)
    max_prompt_length: int = field(default=512)
    max_response_length: int = field(default=512)
    use_lora: bool = field(default=True, metadata={"help": "train LoRA adapters (the base model is the reference)"})
    lora_r: int = field(default=16)
    lora_alpha: int = field(default=32)
    lora_dropout: float = field(default=0.05)
    refit_every: int = field(default=50, metadata={"help": "PSPO: micro-batches between isotonic refits (first at 0)"})
    pspo_fit: str = field(default="dataset", metadata={"help": "PSPO: 'dataset' (all pairs, current weights) or 'memory'"})
    pspo_link: str = field(default="soft", metadata={"help": "PSPO: 'soft' (softmax read-out of PAVA blocks) or 'linear'"})
    soft_tau: float = field(default=0.1, metadata={"help": "PSPO soft link temperature"})
    link_clip: float = field(default=1e-4, metadata={"help": "PSPO/OSPO link values clipped to [c, 1-c]"})
    smoothing: float = field(default=0.0, metadata={"help": "PSPO 'linear' link: Gaussian smoothing"})
    blend: float = field(default=0.95, metadata={"help": "weight of the estimated link vs sigmoid"})
    memory_size: int = field(default=4096, metadata={"help": "OSPO (and memory-PSPO): remembered earlier (t, z) pairs"})
    bandwidth: float = field(default=0.5, metadata={"help": "OSPO kernel bandwidth (times the memory's std by default)"})
    bandwidth_rule: str = field(default="std", metadata={"help": "OSPO: std, fixed or silverman"})
    ospo_orient: bool = field(default=False, metadata={"help": "OSPO: orient the index by cov(t, z) in memory while training"})
    min_fit_points: int = field(default=0, metadata={"help": "OSPO/memory-PSPO: logistic loss until this many pairs are remembered"})
    rspo_pairs: str = field(default="all", metadata={"help": "RSPO: 'all' B^2 pairs incl. i=j, or 'upper' (i<j)"})


TrainArguments.NUMBER_RULES = {'max_steps': '>=1', 'learning_rate': '>0', 'batch_size': '>=1', 'grad_accum_steps': '>=1', 'weight_decay': '>=0', 'warmup_steps': '>=0', 'max_grad_norm': '>=0', 'max_prompt_length': '>=1', 'max_response_length': '>=1', 'lora_r': '>=1', 'lora_alpha': '>0', 'lora_dropout': '[0,1)', 'refit_every': '>=1', 'soft_tau': '>0', 'link_clip': '(0,0.5)', 'smoothing': '>=0', 'blend': '[0,1]', 'memory_size': '>=1', 'bandwidth': '>0', 'min_fit_points': '>=0', 'seed': '>=0'}  # checked by sdpo.cli.check_number_rules
TrainArguments.OUTPUT_DIRS = ('output_dir',)


def read_preferences(path: str) -> list[dict]:
    from ..data.io import iter_jsonl

    if not Path(path).is_file():
        raise ValueError(f"--pref_path {path}: no such file")
    rows = []
    for lineno, row in iter_jsonl(path):
        if isinstance(row, Exception):
            raise ValueError(str(row))
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{lineno}: expected a JSON object")
        for key in ("prompt", "y0", "y1", "z"):
            if key not in row:
                raise ValueError(f"{path}:{lineno}: missing field {key!r}")
        if row["z"] not in (0, 1):
            raise ValueError(f"{path}:{lineno}: field 'z' must be 0 or 1, got {row['z']!r}")
        rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no preference pairs")
    return rows


def _lr_lambda(args: TrainArguments):
    """LR multiplier per optimizer step: linear warm-up, then cosine to 0 over the horizon (or constant)."""
    optimizer_steps = max(1, args.max_steps // args.grad_accum_steps)
    horizon = args.max_steps if args.schedule_horizon == "max_steps" else optimizer_steps
    warm = args.warmup_steps

    def factor(step: int) -> float:
        if step < warm:
            return step / max(1, warm)
        if args.lr_scheduler == "constant":
            return 1.0
        progress = (step - warm) / max(1, horizon - warm)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))

    return factor


def _check_train_args(args: TrainArguments) -> None:
    if args.lr_scheduler not in ("cosine", "constant"):
        raise ValueError(f"--lr_scheduler must be cosine or constant, got {args.lr_scheduler!r}")
    if args.schedule_horizon not in ("max_steps", "optimizer_steps"):
        raise ValueError(f"--schedule_horizon must be max_steps or optimizer_steps, got {args.schedule_horizon!r}")
    for name in ("max_steps", "batch_size", "grad_accum_steps"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.method == "rspo" and args.rspo_pairs == "upper" and args.batch_size < 2:
        raise ValueError("--rspo_pairs upper needs --batch_size >= 2 (it ranks pairs within a batch)")


def _batches(n: int, batch_size: int, rng: random.Random, min_size: int = 1):
    """Endless epochs of shuffled batches; the last batch of an epoch may be smaller (as a
    shuffled DataLoader without drop_last); batches below min_size are skipped."""
    while True:
        order = list(range(n))
        rng.shuffle(order)
        for i in range(0, n, batch_size):
            if len(order[i : i + batch_size]) >= min_size:
                yield order[i : i + batch_size]


@torch.no_grad()
def dataset_index(model, ref, examples: list[dict], pad_id: int, batch_size: int) -> tuple[list[float], list[int]]:
    """t and z of every pair under the current weights (no dropout, no gradient); the model's
    train/eval mode is restored afterwards."""
    from ..trainers.spo import pair_index

    was_training = model.training
    model.eval()
    ts: list[float] = []
    try:
        for i in range(0, len(examples), batch_size):
            ts += pair_index(model, ref, examples[i : i + batch_size], pad_id).double().cpu().tolist()
    finally:
        model.train(was_training)
    return ts, [int(e["z"]) for e in examples]


def train_policy(args: TrainArguments) -> Path:
    import copy

    from ..models import LoraOptions, load_model
    from ..progress import progress_bar
    from ..trainers.spo import SPOObjective, SPOOptions, index_sign, pair_index

    options = SPOOptions(method=args.method, refit_every=args.refit_every, pspo_fit=args.pspo_fit,
                         pspo_link=args.pspo_link, soft_tau=args.soft_tau, link_clip=args.link_clip,
                         smoothing=args.smoothing, blend=args.blend, memory_size=args.memory_size,
                         bandwidth=args.bandwidth, bandwidth_rule=args.bandwidth_rule, ospo_orient=args.ospo_orient,
                         min_fit_points=args.min_fit_points, rspo_pairs=args.rspo_pairs)
    _check_train_args(args)
    prefs = read_preferences(args.pref_path)
    lora = LoraOptions(r=args.lora_r, alpha=args.lora_alpha, dropout=args.lora_dropout) if args.use_lora else None
    model, tok = load_model(args.base_model_id, dtype="auto", device=_device(), lora=lora, seed=args.seed)
    ref = None
    if not args.use_lora:
        ref = copy.deepcopy(model).eval().requires_grad_(False)
    eos = [tok.eos_token_id] if tok.eos_token_id is not None else []
    examples = []
    for r in prefs:
        p = _chat_ids(tok, r["prompt"], args.max_prompt_length)
        y0 = tok(r["y0"], add_special_tokens=False)["input_ids"][: args.max_response_length] + eos
        y1 = tok(r["y1"], add_special_tokens=False)["input_ids"][: args.max_response_length] + eos
        examples.append({"prompt_ids": p, "y0_ids": y0, "y1_ids": y1, "z": int(r["z"])})

    def refit_data():
        return dataset_index(model, ref, examples, tok.pad_token_id, args.batch_size)

    objective = SPOObjective(options, refit_data=refit_data if args.method == "pspo" else None)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.learning_rate, weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(args))
    batches = _batches(len(examples), args.batch_size, random.Random(args.seed),
                       min_size=2 if (args.method == "rspo" and args.rspo_pairs == "upper") else 1)
    model.train()
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / "metrics.jsonl", "w")
    skipped = 0
    opt.zero_grad(set_to_none=True)
    bar = progress_bar(range(args.max_steps), desc=f"{args.method} training", unit="step", every_percent=20.0)
    for step in bar:
        batch = [examples[i] for i in next(batches)]
        z = torch.tensor([b["z"] for b in batch], dtype=torch.float32, device=model.device)
        t = pair_index(model, ref, batch, tok.pad_token_id).float()
        loss = objective(t, z)
        if torch.isfinite(loss):
            (loss / args.grad_accum_steps if args.scale_loss_by_accumulation else loss).backward()
        else:  # as the reference: no backward for a non-finite loss, counted and reported
            skipped += 1
        rec = {"step": step + 1, "loss": loss.item(), "index_mean": float(t.detach().mean()),
               "pair_accuracy": float(((t.detach() > 0).float() == z).float().mean()), "lr": sched.get_last_lr()[0]}
        if (step + 1) % args.grad_accum_steps == 0:
            if args.max_grad_norm > 0:
                rec["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, args.max_grad_norm))
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
        log.write(json.dumps(rec) + "\n")
        log.flush()
        bar.set_postfix(loss=f"{rec['loss']:.4f}", acc=f"{rec['pair_accuracy']:.2f}")
    log.close()
    if skipped:
        print(f"warning: {skipped} micro-batches had a non-finite loss and were skipped", file=sys.stderr)
    sign = 1.0
    if args.method == "ospo":  # orientation of the index over the data, applied at evaluation as sign / beta
        sign = index_sign(*dataset_index(model, ref, examples, tok.pad_token_id, args.batch_size))
    final = out / f"{args.method}_final"
    model.save_pretrained(final)
    tok.save_pretrained(final)
    meta = {"method": args.method, "sign": sign, "base_model_id": args.base_model_id, "n": len(prefs),
            "seed": args.seed, "link_shift": prefs[0].get("link_shift"),
            "link_temperature": prefs[0].get("link_temperature"), "reward_model_id": prefs[0].get("reward_model_id"),
            "use_lora": args.use_lora, "pspo_refit_steps": objective.refits, "skipped_nonfinite": skipped,
            "train_args": asdict(args), **asdict(options)}
    (final / "spo_meta.json").write_text(json.dumps(meta, indent=2))
    print(f"== {args.method} policy -> {final}" + (f" (index sign {sign:+g})" if args.method == "ospo" else ""))
    return final


# ----------------------------------------------------------------------------- evaluate


@dataclass
class EvaluateArguments:
    model_id: str = field(default="", metadata={"help": "trained policy (a <method>_final folder)"})
    ref_model_id: str = field(default="Qwen/Qwen3-0.6B")
    reward_model_id: str = field(default="Skywork/Skywork-Reward-V2-Qwen3-1.7B")
    output: str = field(default="outputs/eval/eval.csv")
    prompts_path: str = field(default="", metadata={"help": "preference JSONL or dataset file whose prompts are used"})
    dataset_id: str = field(default="openbmb/UltraFeedback", metadata={"help": "used when prompts_path is empty"})
    betas: str = field(default=BETAS)
    eval_samples: int = field(default=256, metadata={"help": "prompts sampled per beta"})
    eval_batch_size: int = field(default=4)
    eval_max_new_tokens: int = field(default=256)
    temperature: float = field(default=0.7, metadata={
        "help": "sampling temperature applied to pi_beta (reference 0.7; 1 with top_p 1 samples pi_beta exactly)"})
    top_p: float = field(default=0.95, metadata={"help": "nucleus sampling of pi_beta (reference 0.95; 1 = off)"})
    sign: float = field(default=0.0, metadata={
        "help": "orientation of the policy in pi_beta (mixing weight sign/beta): 0 = read 'sign' from the "
                "model's spo_meta.json (OSPO stores it; 1 otherwise), or 1 / -1 to override"})
    max_prompt_length: int = field(default=512)
    seed: int = field(default=123)


import sdpo.number_rules  # noqa: E402,F401 - the 'finite' rule of `sign`

EvaluateArguments.NUMBER_RULES = {'eval_samples': '>=1', 'eval_batch_size': '>=1', 'eval_max_new_tokens': '>=1', 'temperature': '>=0', 'top_p': '(0,1]', 'max_prompt_length': '>=1', 'sign': 'finite', 'seed': '>=0'}  # checked by sdpo.cli.check_number_rules
EvaluateArguments.OUTPUT_FILES = ('output',)


def _load_policy(model_id: str):
    """A trained folder (full weights or a LoRA adapter on its base) or any model id."""
    from ..models import load_model

    adapter = Path(model_id) / "adapter_config.json"
    if adapter.is_file():
        from peft import PeftModel

        base_id = json.loads(adapter.read_text())["base_model_name_or_path"]
        meta = Path(model_id) / "spo_meta.json"
        if meta.is_file():
            base_id = json.loads(meta.read_text()).get("base_model_id", base_id)
        base, tok = load_model(base_id, dtype="auto", device=_device())
        return PeftModel.from_pretrained(base, model_id).eval(), tok
    return load_model(model_id, dtype="auto", device=_device())


def mixture_logprobs(policy_logp: torch.Tensor, ref_logp: torch.Tensor, beta: float, sign: float = 1.0) -> torch.Tensor:
    """log pi_beta, ``pi_beta ∝ pi_ref^(1 - sign/beta) pi^(sign/beta)`` over the last dim."""
    return torch.log_softmax((1 - sign / beta) * ref_logp + (sign / beta) * policy_logp, -1)


def top_p_probs(logp: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """Sampling probabilities from log-probs: temperature, then the smallest set of most likely
    tokens whose mass reaches top_p (the first token always kept), renormalised."""
    probs = torch.softmax(logp / max(temperature, 1e-6), -1)
    if top_p >= 1:
        return probs
    sorted_p, idx = torch.sort(probs, descending=True, dim=-1)
    drop = sorted_p.cumsum(-1) > top_p
    drop[..., 0] = False
    sorted_p = sorted_p.masked_fill(drop, 0.0)
    sorted_p = sorted_p / sorted_p.sum(-1, keepdim=True)
    return torch.zeros_like(probs).scatter(-1, idx, sorted_p)


@torch.no_grad()
def sample_mixture(policy, ref, tok, prompt_ids: list[list[int]], beta: float, max_new_tokens: int, generator,
                   *, sign: float = 1.0, temperature: float = 1.0, top_p: float = 1.0):
    """Sample from pi_beta ∝ pi_ref^(1 - sign/beta) pi^(sign/beta), token by token; returns texts and
    sum_t [log pi_beta(y_t) - log pi_ref(y_t)] (the per-sample KL estimate) up to and including EOS.
    With temperature / top_p the tokens are drawn from the tempered nucleus of pi_beta while the
    KL terms still use pi_beta itself (as the reference's evaluation)."""
    device = next(policy.parameters()).device
    n = len(prompt_ids)
    width = max(len(p) for p in prompt_ids)
    ids = torch.full((n, width), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    for i, p in enumerate(prompt_ids):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    ids, mask = ids.to(device), mask.to(device)
    done = torch.zeros(n, dtype=torch.bool, device=device)
    kl = torch.zeros(n, dtype=torch.float64, device=device)
    out: list[list[int]] = [[] for _ in range(n)]
    past_p = past_r = None
    step_ids = ids
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    step_pos = pos
    for _ in range(max_new_tokens):
        op = policy(input_ids=step_ids, attention_mask=mask, position_ids=step_pos, past_key_values=past_p, use_cache=True)
        orf = ref(input_ids=step_ids, attention_mask=mask, position_ids=step_pos, past_key_values=past_r, use_cache=True)
        past_p, past_r = op.past_key_values, orf.past_key_values
        lp = torch.log_softmax(op.logits[:, -1].double(), -1)
        lr = torch.log_softmax(orf.logits[:, -1].double(), -1)
        lb = mixture_logprobs(lp, lr, beta, sign)
        nxt = torch.multinomial(top_p_probs(lb, temperature, top_p).float(), 1, generator=generator).squeeze(1)
        nxt = torch.where(done, torch.full_like(nxt, tok.pad_token_id), nxt)
        step_kl = (lb.gather(1, nxt[:, None]) - lr.gather(1, nxt[:, None])).squeeze(1)
        kl += torch.where(done, torch.zeros_like(step_kl), step_kl)
        for i in range(n):
            if not done[i]:
                out[i].append(int(nxt[i]))
        done |= nxt == tok.eos_token_id
        if bool(done.all()):
            break
        step_ids = nxt[:, None]
        mask = torch.cat([mask, torch.ones((n, 1), dtype=mask.dtype, device=device)], 1)
        step_pos = step_pos[:, -1:] + 1
    texts = [tok.decode(o, skip_special_tokens=True) for o in out]
    return texts, kl.cpu().tolist()


def evaluate_policy(args: EvaluateArguments) -> Path:
    from ..models import load_model
    from ..progress import progress_bar

    betas = _floats(args.betas, "betas")
    if any(b <= 0 for b in betas):
        raise ValueError("--betas must all be > 0")
    if args.sign not in (0.0, 1.0, -1.0):
        raise ValueError(f"--sign must be 0 (from spo_meta.json), 1 or -1, got {args.sign}")
    if not 0 < args.top_p <= 1 or args.temperature <= 0:
        raise ValueError(f"--top_p must be in (0, 1] and --temperature > 0, got {args.top_p} and {args.temperature}")
    if args.prompts_path:
        from ..data.io import iter_jsonl

        if not Path(args.prompts_path).is_file():
            raise ValueError(f"--prompts_path {args.prompts_path}: no such file")
        rows = []
        for lineno, row in iter_jsonl(args.prompts_path):
            if isinstance(row, Exception):  # names the file and line
                raise ValueError(str(row))
            rows.append(row)
        prompts = list(dict.fromkeys(_prompt_text(r, None) for r in rows))
    else:
        prompts = _load_prompts(GenerateArguments(dataset_id=args.dataset_id, num_samples=10**9, seed=args.seed))
    random.Random(args.seed).shuffle(prompts)
    prompts = prompts[: args.eval_samples]
    policy, tok = _load_policy(args.model_id)
    ref, _ = load_model(args.ref_model_id, dtype="auto", device=_device())
    policy.eval(), ref.eval()
    reward = RewardModel(args.reward_model_id)
    meta_path = Path(args.model_id) / "spo_meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    sign = args.sign or float(meta.get("sign", 1.0))
    if sign < 0:
        print(f"   {args.model_id}: index sign -1 from training, sampling with sign/beta")
    ctx = [_chat_ids(tok, p, args.max_prompt_length) for p in prompts]
    g = torch.Generator(device=next(policy.parameters()).device).manual_seed(args.seed)
    rows = []
    for beta in progress_bar(betas, desc="beta scan", unit="beta"):
        texts, kls = [], []
        for i in range(0, len(ctx), args.eval_batch_size):
            t, k = sample_mixture(policy, ref, tok, ctx[i : i + args.eval_batch_size], beta, args.eval_max_new_tokens, g,
                                  sign=sign, temperature=args.temperature, top_p=args.top_p)
            texts += t
            kls += k
        scores = reward(prompts, texts)
        n = len(scores)
        mean_r, mean_k = sum(scores) / n, sum(kls) / n
        se = lambda v, m: math.sqrt(sum((x - m) ** 2 for x in v) / max(1, n - 1) / n)  # noqa: E731
        rows.append({"model_id": args.model_id, "ref_model_id": args.ref_model_id,
                     "reward_model_id": args.reward_model_id, "link_shift": meta.get("link_shift"),
                     "link_temperature": meta.get("link_temperature"), "seed": meta.get("seed"),
                     "method": meta.get("method"), "n": meta.get("n"), "beta": beta, "reward": mean_r, "kl": mean_k,
                     "reward_se": se(scores, mean_r), "kl_se": se(kls, mean_k), "samples": n, "sign": sign})
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        w.writerows(rows)
    tmp.replace(out)  # a finished cell is exactly one whose CSV exists
    for r in rows:
        print(f"   beta {r['beta']:<5g} reward {r['reward']:+.4f} ± {r['reward_se']:.4f}  KL {r['kl']:.4f}")
    print(f"== {out}")
    return out


# ----------------------------------------------------------------------------- grid


@dataclass
class GridArguments:
    seeds: str = field(default="123")
    link_shifts: str = field(default="0.0,0.5,1.0,2.0")
    n_list: str = field(default="500,2000,5000")
    methods: str = field(default="dpo,pspo,ospo,rspo")
    gpus: str = field(default="0", metadata={"help": "devices to spread cells over ('cpu' for none)"})
    workers_per_gpu: int = field(default=1)
    grid_dir: str = field(default="outputs/grid")
    dataset_id: str = field(default="openbmb/UltraFeedback")
    model_id: str = field(default="Qwen/Qwen3-0.6B")
    reward_model_id: str = field(default="Skywork/Skywork-Reward-V2-Qwen3-1.7B")
    link_temperature: float = field(default=1.0)
    max_steps: int = field(default=500)
    learning_rate: float = field(default=5e-6)
    batch_size: int = field(default=4)
    grad_accum_steps: int = field(default=4)
    use_lora: bool = field(default=True)
    max_prompt_length: int = field(default=512)
    max_response_length: int = field(default=512)
    gen_max_new_tokens: int = field(default=128)
    gen_batch_size: int = field(default=4)
    eval_max_new_tokens: int = field(default=128)
    eval_samples: int = field(default=64)
    eval_batch_size: int = field(default=2)
    betas: str = field(default=BETAS)
    dry_run: bool = field(default=False, metadata={"help": "print the cells and their commands; run nothing"})


GridArguments.NUMBER_RULES = {'workers_per_gpu': '>=1', 'link_temperature': '>0', 'max_steps': '>=1', 'learning_rate': '>0', 'batch_size': '>=1', 'grad_accum_steps': '>=1', 'max_prompt_length': '>=1', 'max_response_length': '>=1', 'gen_max_new_tokens': '>=1', 'gen_batch_size': '>=1', 'eval_max_new_tokens': '>=1', 'eval_samples': '>=1', 'eval_batch_size': '>=1'}  # checked by sdpo.cli.check_number_rules
GridArguments.OUTPUT_DIRS = ('grid_dir',)


def _cell_commands(a: GridArguments, seed: int, shift: float, n: int, method: str) -> tuple[Path, list[list[str]]]:
    root = Path(a.grid_dir)
    prefs = root / "preferences" / f"prefs_seed{seed}_shift{shift:g}_n{n}.jsonl"
    name = f"{method}_seed{seed}_shift{shift:g}_n{n}"
    csv_path = root / "eval" / f"{name}.csv"
    sdpo = [sys.executable, "-m", "sdpo.cli", "spo"]
    cmds = []
    if not prefs.exists():
        cmds.append(sdpo + ["generate", "--dataset_id", a.dataset_id, "--num_samples", str(n), "--model_id", a.model_id,
                            "--reward_model_id", a.reward_model_id, "--output", str(prefs), "--link_shift", str(shift),
                            "--link_temperature", str(a.link_temperature), "--seed", str(seed),
                            "--gen_max_new_tokens", str(a.gen_max_new_tokens), "--batch_size", str(a.gen_batch_size),
                            "--max_prompt_length", str(a.max_prompt_length)])
    cmds.append(sdpo + ["train", "--pref_path", str(prefs), "--method", method, "--base_model_id", a.model_id,
                        "--output_dir", str(root / "models" / name), "--max_steps", str(a.max_steps),
                        "--learning_rate", str(a.learning_rate), "--batch_size", str(a.batch_size),
                        "--grad_accum_steps", str(a.grad_accum_steps),
                        "--seed", str(seed), "--use_lora", str(a.use_lora),
                        "--max_prompt_length", str(a.max_prompt_length),
                        "--max_response_length", str(a.max_response_length)])
    cmds.append(sdpo + ["evaluate", "--model_id", str(root / "models" / name / f"{method}_final"),
                        "--ref_model_id", a.model_id, "--reward_model_id", a.reward_model_id, "--output", str(csv_path),
                        "--prompts_path", str(prefs), "--betas", a.betas, "--eval_samples", str(a.eval_samples),
                        "--eval_batch_size", str(a.eval_batch_size), "--eval_max_new_tokens", str(a.eval_max_new_tokens),
                        "--seed", str(seed)])
    return csv_path, cmds


def run_grid(a: GridArguments) -> int:
    """Every (seed, shift, n, method) cell as worker processes over the devices; cells whose
    evaluation CSV exists are skipped, so a killed grid resumes where it stopped. Preferences
    are shared by the methods of a (seed, shift, n); their generation runs first."""
    from concurrent.futures import ThreadPoolExecutor
    from threading import Lock

    seeds = [int(s) for s in _floats(a.seeds, "seeds")]
    shifts, ns = _floats(a.link_shifts, "link_shifts"), [int(v) for v in _floats(a.n_list, "n_list")]
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    from ..trainers.spo import METHODS

    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ValueError(f"--methods: unknown {bad}; choose from {', '.join(METHODS)}")
    devices = [d.strip() for d in a.gpus.split(",") if d.strip()] * max(1, a.workers_per_gpu)
    root = Path(a.grid_dir)
    (root / "logs").mkdir(parents=True, exist_ok=True)
    todo, done = [], 0
    for seed in seeds:
        for shift in shifts:
            for n in ns:
                for method in methods:
                    csv_path, _ = _cell_commands(a, seed, shift, n, method)
                    if csv_path.exists():
                        done += 1
                    else:
                        todo.append((seed, shift, n, method))
    print(f"== grid: {done + len(todo)} cells, {done} already finished, {len(todo)} to run on {devices}")
    if a.dry_run:
        for cell in todo:
            for cmd in _cell_commands(a, *cell)[1]:
                print("   " + " ".join(cmd[2:]))
        return 0
    free = list(devices)
    lock = Lock()
    pref_locks: dict = {}
    failures = []

    def work(cell):
        seed, shift, n, method = cell
        with lock:
            device = free.pop()
            plock = pref_locks.setdefault((seed, shift, n), Lock())
        name = f"{method}_seed{seed}_shift{shift:g}_n{n}"
        env = dict(os.environ)
        if device != "cpu":
            env["CUDA_VISIBLE_DEVICES"] = device
        else:
            env["CUDA_VISIBLE_DEVICES"] = ""
        try:
            with open(root / "logs" / f"{name}.log", "a") as logf:
                with plock:  # one generation per preference file, the other methods wait for it
                    _, cmds = _cell_commands(a, seed, shift, n, method)
                    if cmds[0][4] == "generate":
                        if subprocess.run(cmds[0], stdout=logf, stderr=subprocess.STDOUT, env=env).returncode:
                            failures.append((name, "generate"))
                            return
                        cmds = cmds[1:]
                for cmd in cmds:
                    if subprocess.run(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env).returncode:
                        failures.append((name, cmd[4]))
                        return
            print(f"   done {name}")
        finally:
            with lock:
                free.append(device)

    with ThreadPoolExecutor(max_workers=len(devices)) as pool:
        list(pool.map(work, todo))
    if failures:
        print(f"== {len(failures)} cells failed: " + ", ".join(f"{n} ({s})" for n, s in failures)
              + f"; logs in {root / 'logs'}; run the grid again to retry them", file=sys.stderr)
        return 1
    print(f"== all cells finished; analyse with: sdpo spo analyze --results_dir {root / 'eval'}")
    return 0


# ----------------------------------------------------------------------------- analyze


@dataclass
class AnalyzeArguments:
    results_dir: str = field(default="outputs/grid/eval", metadata={"help": "folder of evaluation CSVs"})
    output_dir: str = field(default="", metadata={"help": "default <results_dir>/analysis"})
    kl_budget: float = field(default=0.5, metadata={"help": "KL at which rewards are compared (reference kappa 0.5; "
                                                              "0: the median KL of all rows)"})
    ci_z: float = field(default=1.64, metadata={"help": "interval half-width in standard errors (1.64: 90%, as the reference)"})


AnalyzeArguments.NUMBER_RULES = {'kl_budget': '>=0', 'ci_z': '>0'}  # checked by sdpo.cli.check_number_rules
AnalyzeArguments.OUTPUT_DIRS = ('output_dir',)


def _interp(points: list[tuple[float, float]], x: float) -> float:
    import numpy as np

    pts = sorted(points)
    return float(np.interp(x, [p[0] for p in pts], [p[1] for p in pts]))


def analyze_results(a: AnalyzeArguments) -> Path:
    import numpy as np

    from .synthetic import _mean_ci

    files = sorted(Path(a.results_dir).glob("*.csv"))
    if not files:
        raise ValueError(f"--results_dir {a.results_dir}: no CSV files")
    rows = []
    for f in files:
        with open(f, newline="") as handle:
            for i, r in enumerate(csv.DictReader(handle), start=2):
                try:
                    rows.append({**r, "beta": float(r["beta"]), "reward": float(r["reward"]), "kl": float(r["kl"]),
                                 "link_shift": float(r["link_shift"] or 0), "seed": r["seed"], "method": r["method"]})
                except (KeyError, ValueError) as exc:
                    raise ValueError(f"{f}:{i}: bad row ({exc})") from None
    budget = a.kl_budget or float(np.median([r["kl"] for r in rows]))
    out = Path(a.output_dir or Path(a.results_dir) / "analysis")
    out.mkdir(parents=True, exist_ok=True)
    cells: dict = {}
    for r in rows:
        cells.setdefault((r["method"], r["link_shift"], r["seed"]), []).append((r["kl"], r["reward"]))
    at_budget = {k: _interp(v, budget) for k, v in cells.items()}
    methods = sorted({k[0] for k in cells}, key=lambda m: (m != "dpo", m))
    shifts = sorted({k[1] for k in cells})
    summary = []
    for s in shifts:
        for m in methods:
            vals = [v for (mm, ss, _), v in at_budget.items() if mm == m and ss == s]
            mean, ci = _mean_ci(vals, a.ci_z)
            row = {"method": m, "shift": s, "reward_at_budget": mean, "seeds": len(vals), "ci": ci}
            if m != "dpo" and "dpo" in methods:
                diffs = [v - at_budget[("dpo", s, seed)] for (mm, ss, seed), v in at_budget.items()
                         if mm == m and ss == s and ("dpo", s, seed) in at_budget]
                if diffs:
                    row["diff_vs_dpo"], row["diff_ci"] = _mean_ci(diffs, a.ci_z)
            summary.append(row)
    (out / "summary.json").write_text(json.dumps({"kl_budget": budget, "ci_z": a.ci_z, "rows": summary}, indent=2))
    _plots(rows, summary, methods, shifts, budget, out)
    print(f"reward at KL = {budget:.4g} (mean over seeds ± {a.ci_z:g} SE; paired difference vs DPO)")
    for r in summary:
        extra = f"   Δ vs dpo {r['diff_vs_dpo']:+.4f} ± {r['diff_ci']:.4f}" if "diff_vs_dpo" in r else ""
        print(f"  shift {r['shift']:<4g} {r['method']:<5} {r['reward_at_budget']:+.4f} ± {r['ci']:.4f}{extra}")
    print(f"== {out}")
    return out


def _plots(rows, summary, methods, shifts, budget, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, len(shifts), figsize=(4 * len(shifts), 3.5), squeeze=False, sharey=True)
    for ax, s in zip(axes[0], shifts):
        for m in methods:
            rs = [r for r in rows if r["method"] == m and r["link_shift"] == s]
            betas = sorted({r["beta"] for r in rs})
            ax.plot([np.mean([r["kl"] for r in rs if r["beta"] == b]) for b in betas],
                    [np.mean([r["reward"] for r in rs if r["beta"] == b]) for b in betas], marker="o", label=m)
        ax.axvline(budget, color="grey", ls="--", lw=0.8)
        ax.set_title(f"shift {s:g}")
        ax.set_xlabel("KL to reference")
    axes[0][0].set_ylabel("reward")
    axes[0][-1].legend()
    fig.tight_layout()
    fig.savefig(out / "pareto.png", dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for m in methods:
        rs = [r for r in summary if r["method"] == m]
        ax.errorbar([r["shift"] for r in rs], [r["reward_at_budget"] for r in rs],
                    yerr=[0 if math.isnan(r["ci"]) else r["ci"] for r in rs], marker="o", capsize=3, label=m)
    ax.set_xlabel("link shift")
    ax.set_ylabel(f"reward at KL = {budget:.3g}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "reward_vs_shift.png", dpi=120)
    plt.close(fig)

