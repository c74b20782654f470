"""The timed parts of ``benchmarks/gpu/check.py``, each run in its own process.

    python benchmarks/gpu/parts.py PART --device cuda --out rows.jsonl [--tiny]

PART is ``signal`` (the bf16 matmul peak, then the signal core's tokens/s and MFU),
``online`` (one online SDPO step: generate / simulate / score / update seconds, peak
memory), ``offline`` or ``rich`` (the trainer's tokens/s and peak memory, with and without
gradient checkpointing). Each result is appended to ``--out`` as one JSON line the moment
it is measured, so a part stopped at its time budget keeps the rows it finished.

Models are random-initialised Qwen3 shapes (``benchmarks/shapes.py``: Qwen3-1.7B and
Qwen3-4B, or a 2-layer one with ``--tiny``) with the embedded tokenizer, whose ids are
valid in Qwen3's vocabulary: speed and memory depend on the shapes, not the weights.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # benchmarks/: shapes, cases, bench_signal

import torch  # noqa: E402

from shapes import QWEN3  # noqa: E402

PARTS = ("signal", "online", "offline", "rich")
REAL_SHAPES = ("qwen3-1.7b", "qwen3-4b")
# --tiny: Qwen3's architecture at test size, with the embedded tokenizer's vocabulary
TINY_SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, tie_word_embeddings=True)
TINY_VOCAB = 49_152
QWEN3_VOCAB = 151_936


# --------------------------------------------------------------------------- helpers


class Rows:
    """Appends one JSON line per result to a file, flushed at once."""

    def __init__(self, path: str | None):
        self.path = path

    def emit(self, row: dict) -> None:
        line = json.dumps(row)
        print(line, flush=True)
        if self.path:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line + "\n")


SHAPES_OVERRIDE: list[str] = []  # --shapes


def shape_names(tiny: bool) -> list[str]:
    if SHAPES_OVERRIDE:
        return list(SHAPES_OVERRIDE)
    return ["tiny"] if tiny else list(REAL_SHAPES)


def build_model(name: str, device: str, dtype: torch.dtype, seed: int = 0):
    """A random Qwen3 model of the named shape, built directly on ``device``."""
    from transformers import AutoModelForCausalLM, Qwen3Config

    shape = TINY_SHAPE if name == "tiny" else QWEN3[name]
    vocab = TINY_VOCAB if name == "tiny" else QWEN3_VOCAB
    config = Qwen3Config(vocab_size=vocab, max_position_embeddings=32_768, **shape)
    config.eos_token_id, config.bos_token_id = 2, 1
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.config.pad_token_id = 2
    if model.generation_config is not None:
        model.generation_config.pad_token_id = 2
    return model


def tokenizer():
    from sdpo.models import load_tokenizer

    return load_tokenizer("tiny-random")  # the embedded tokenizer (49,152 ids, all valid in Qwen3's vocabulary)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def free(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def checkpointing_off(model) -> None:
    """Gradient checkpointing off again (transformers 5.x name first, then the older one)."""
    off = getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable
    off()


def params_billion(model) -> float:
    return round(sum(p.numel() for p in model.parameters()) / 1e9, 3)


def peak_total_gib(device: str) -> float | None:
    """Peak memory the CUDA allocator held since the last reset (weights included); None on CPU."""
    if device.startswith("cuda"):
        return round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return None


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def base_row(part: str, shape: str, args, dtype: torch.dtype) -> dict:
    return {"part": part, "model": shape if shape == "tiny" else f"random-{shape}", "device": args.device,
            "dtype": str(dtype).replace("torch.", "")}


def error_row(part: str, shape: str, args, dtype, err: BaseException, **extra) -> dict:
    row = base_row(part, shape, args, dtype)
    oom = isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()
    row.update(status="oom" if oom else "error", error=f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
               if str(err) else type(err).__name__, **extra)
    return row


# --------------------------------------------------------------------------- peak


def matmul_peak(device: str, dtype: torch.dtype, n: int, repeats: int = 10) -> dict:
    """FLOP/s of one large square matrix product in ``dtype`` (mean of ``repeats`` after 3 warm-ups)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    seconds = (time.perf_counter() - start) / repeats
    del a, b
    return {"part": "peak", "device": device, "dtype": str(dtype).replace("torch.", ""), "n": n, "repeats": repeats,
            "tflops": round(2 * n**3 / seconds / 1e12, 3)}


# --------------------------------------------------------------------------- signal


def forward_flops(config, sequences: list[tuple[int, int]]) -> float:
    """Matrix-product FLOPs of no-grad forwards over (context, response) sequences, head applied
    at response positions only (what the signal core computes): 2 x non-embedding parameters per
    token, causal attention scores and values, and the output head per response token."""
    h, v = config.hidden_size, config.vocab_size
    layers = config.num_hidden_layers
    head_dim = getattr(config, "head_dim", None) or h // config.num_attention_heads
    q = config.num_attention_heads * head_dim
    kv = config.num_key_value_heads * head_dim
    per_layer = h * q + 2 * h * kv + q * h + 3 * h * config.intermediate_size  # q, k, v, o, gate, up, down
    flops = 0.0
    for context, response in sequences:
        n = context + response
        flops += 2 * layers * per_layer * n
        flops += 2 * 2 * layers * q * n * (n + 1) / 2  # QK^T and AV, causal
        flops += 2 * h * v * response
    return flops


def part_signal(args, rows: Rows) -> None:
    from bench_signal import bench
    from cases import benchmark_cases

    from sdpo.signal import encode_examples

    dtype = getattr(torch, args.dtype)
    peak = matmul_peak(args.device, dtype, 1024 if args.tiny else 8192)
    rows.emit(peak)
    tok = tokenizer()
    encoded = encode_examples(tok, benchmark_cases())
    sequences = [(len(e.student_context), len(e.response)) for e in encoded]
    sequences += [(len(e.teacher_context), len(e.response)) for e in encoded]
    for shape in shape_names(args.tiny):
        try:
            model = build_model(shape, args.device, dtype).eval()
            row = base_row("signal", shape, args, dtype)
            row["params_b"] = params_billion(model)
            row.update(bench(model, tok, row["model"], repeats=args.repeats))
            flops = forward_flops(model.config, sequences)
            seconds = row["response_tokens"] / row["sdpo_tokens_per_s"]
            row["flops_per_pass"] = flops
            row["tflops"] = round(flops / seconds / 1e12, 3)
            row["peak_tflops"] = peak["tflops"]
            row["mfu"] = round(row["tflops"] / peak["tflops"], 4)
            row["status"] = "ok"
        except Exception as err:  # noqa: BLE001 - recorded, and the next shape still runs
            row = error_row("signal", shape, args, dtype, err)
        rows.emit(row)
        model = None
        free(args.device)


# --------------------------------------------------------------------------- online


def part_online(args, rows: Rows) -> None:
    from bench_signal import PeakMemory

    from sdpo.data.prompt_sources import load_prompt_rows, prepare_tldr
    from sdpo.trainers.online import OnlineSDPOConfig, OnlineSDPOTrainer

    dtype = getattr(torch, args.dtype)
    train, _, _ = prepare_tldr(load_prompt_rows("tldr", "sample"))
    tok = tokenizer()
    batch, new_tokens = (2, 8) if args.tiny else (8, 128)
    for shape in shape_names(args.tiny):
        model = None
        try:
            model = build_model(shape, args.device, dtype)
            row = base_row("online", shape, args, dtype)
            row.update(params_b=params_billion(model), batch=batch, max_new_tokens=new_tokens, simulator="rule")
            with tempfile.TemporaryDirectory() as tmp:
                cfg = OnlineSDPOConfig(train_jsonl="(in memory)", simulator="rule", style="concise_casual_beginner",
                                       max_steps=2, save_steps=10**6, per_device_train_batch_size=batch,
                                       max_new_tokens=new_tokens, output_dir=str(Path(tmp) / "run"),
                                       summary_prompts=0, progress=False, report_to="none", learning_rate=1e-6)
                reset_peak(args.device)
                with PeakMemory(torch.device(args.device)) as mem:
                    trainer = OnlineSDPOTrainer(cfg, model=model, tokenizer=tok, prompts=train)
                    trainer.save_checkpoint = lambda *a, **k: None  # timing only
                    trainer.train()
                    sync(args.device)
                steps = [json.loads(x) for x in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
                trainer = None
            last = steps[-1]  # the first step warms up
            for key in ("generate", "simulate", "score", "update"):
                row[f"{key}_s"] = round(last[f"time/{key}"], 3)
            row["step_s"] = round(sum(row[f"{k}_s"] for k in ("generate", "simulate", "score", "update")), 3)
            row["response_tokens_mean"] = last.get("response_tokens_mean")
            if row["response_tokens_mean"]:
                generated = batch * row["response_tokens_mean"]
                row["generated_tokens_per_s"] = round(generated / max(row["generate_s"], 1e-9), 1)
            row["peak_extra_gib"] = round(mem.extra / 2**30, 3)
            row["peak_total_gib"] = peak_total_gib(args.device)
            row["steps"] = len(steps)
            row["status"] = "ok"
        except Exception as err:  # noqa: BLE001
            row = error_row("online", shape, args, dtype, err)
        rows.emit(row)
        model = None
        free(args.device)


# --------------------------------------------------------------------------- offline


class StepTimer:
    """A TrainerCallback that times each optimizer step (device synchronised)."""

    def __new__(cls, device: str):
        from transformers import TrainerCallback

        class _Timer(TrainerCallback):
            def __init__(self):
                self.seconds: list[float] = []

            def on_step_begin(self, args, state, control, **kw):
                sync(device)
                self._start = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                sync(device)
                self.seconds.append(time.perf_counter() - self._start)

        return _Timer()


def _records():
    from sdpo.data.logs import extract, sample_path

    rows = [json.loads(line) for line in sample_path("wildfeedback").read_text(encoding="utf-8").splitlines()]
    records, _ = extract(rows, "wildfeedback")
    return records


def part_offline(args, rows: Rows) -> None:
    from bench_signal import PeakMemory

    from sdpo.trainers.offline import OfflineSDPOConfig, build_trainer

    dtype = getattr(torch, args.dtype)
    records = _records()
    tok = tokenizer()
    batch, steps = (2, 3) if args.tiny else (8, 4)
    for shape in shape_names(args.tiny):
        model = None
        for checkpointing in (False, True):
            try:
                if model is None:
                    model = build_model(shape, args.device, dtype)
                row = base_row("offline", shape, args, dtype)
                row.update(params_b=params_billion(model), batch=batch, gradient_checkpointing=checkpointing)
                with tempfile.TemporaryDirectory() as tmp:
                    config = OfflineSDPOConfig(
                        output_dir=tmp, max_steps=steps, per_device_train_batch_size=batch, learning_rate=1e-6,
                        logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True, seed=0,
                        gradient_checkpointing=checkpointing, use_cpu=args.device == "cpu",
                        max_context_tokens=2048)
                    timer = StepTimer(args.device)
                    reset_peak(args.device)
                    with PeakMemory(torch.device(args.device)) as mem:
                        trainer = build_trainer(config, model=model, tokenizer=tok, records=records, callbacks=[timer])
                        trainer.train()
                        sync(args.device)
                    logs = [h for h in trainer.state.log_history if "response_tokens" in h]
                    trainer = None
                if checkpointing:
                    checkpointing_off(model)
                tokens = [h["response_tokens"] for h in logs][1:]  # step 1 warms up
                seconds = timer.seconds[1:]
                row["steps_timed"] = len(seconds)
                row["response_tokens_per_s"] = round(sum(tokens) / sum(seconds), 1) if seconds else None
                row["step_s"] = round(statistics.mean(seconds), 3) if seconds else None
                row["peak_extra_gib"] = round(mem.extra / 2**30, 3)
                row["peak_total_gib"] = peak_total_gib(args.device)
                row["status"] = "ok"
            except Exception as err:  # noqa: BLE001
                row = error_row("offline", shape, args, dtype, err, gradient_checkpointing=checkpointing)
                model = None  # rebuilt clean for the next setting
            rows.emit(row)
            free(args.device)
        model = None
        free(args.device)


# --------------------------------------------------------------------------- rich


def part_rich(args, rows: Rows) -> None:
    from datasets import Dataset
    from trl import GRPOConfig

    from bench_signal import PeakMemory

    from sdpo import SDPOTrainer
    from sdpo.trainers.rich import SDPOConfig

    dtype = getattr(torch, args.dtype)
    tok = tokenizer()
    batch, generations, completion, steps = (4, 4, 8, 3) if args.tiny else (8, 4, 128, 3)
    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": f"What is {a} + {b}?"}], "answer": a + b}
                            for a in range(8) for b in range(4)])

    def reward(prompts, completions, **_):
        # half the rollouts of each group succeed, the rest get text feedback: every teacher context is used
        return [{"score": float(k % 2), "feedback": "The sum is wrong."} for k in range(len(completions))]

    for shape in shape_names(args.tiny):
        model = None
        for checkpointing in (False, True):
            try:
                if model is None:
                    model = build_model(shape, args.device, dtype)
                row = base_row("rich", shape, args, dtype)
                row.update(params_b=params_billion(model), batch=batch, num_generations=generations,
                           max_completion_length=completion, gradient_checkpointing=checkpointing)
                with tempfile.TemporaryDirectory() as tmp:
                    config = GRPOConfig(
                        output_dir=tmp, per_device_train_batch_size=batch, num_generations=generations,
                        max_completion_length=completion, max_steps=steps, learning_rate=1e-6, logging_steps=1,
                        report_to=[], use_cpu=args.device == "cpu", save_strategy="no", seed=0,
                        bf16=False, gradient_checkpointing=checkpointing, disable_tqdm=True)
                    timer = StepTimer(args.device)
                    reset_peak(args.device)
                    with PeakMemory(torch.device(args.device)) as mem:
                        trainer = SDPOTrainer(model=model, args=config, sdpo_config=SDPOConfig(),
                                              processing_class=tok, reward_funcs=[reward], train_dataset=ds,
                                              callbacks=[timer])
                        trainer.train()
                        sync(args.device)
                    logs = [h for h in trainer.state.log_history if "loss" in h]
                    trainer = None
                if checkpointing:
                    checkpointing_off(model)
                seconds = timer.seconds[1:]  # step 1 warms up
                lengths = [h.get("completions/mean_length") for h in logs][1:]
                row["steps_timed"] = len(seconds)
                row["step_s"] = round(statistics.mean(seconds), 3) if seconds else None
                if seconds and all(x is not None for x in lengths):
                    row["completion_tokens_per_s"] = round(batch * sum(lengths) / sum(seconds), 1)
                row["loss_finite"] = all(math.isfinite(h["loss"]) for h in logs)
                row["peak_extra_gib"] = round(mem.extra / 2**30, 3)
                row["peak_total_gib"] = peak_total_gib(args.device)
                row["status"] = "ok"
            except Exception as err:  # noqa: BLE001
                row = error_row("rich", shape, args, dtype, err, gradient_checkpointing=checkpointing)
                model = None
            rows.emit(row)
            free(args.device)
        model = None
        free(args.device)


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=PARTS)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on cuda, float32 on cpu")
    parser.add_argument("--tiny", action="store_true", help="a 2-layer model instead of Qwen3-1.7B and Qwen3-4B")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shapes", default=None,
                        help=f"comma list of shapes instead (tiny, {', '.join(QWEN3)}); batch sizes follow --tiny")
    parser.add_argument("--out", default=None, help="append each result here as a JSON line")
    args = parser.parse_args(argv)
    if args.dtype is None:
        args.dtype = "bfloat16" if args.device.startswith("cuda") else "float32"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: torch sees no CUDA device")
    if args.shapes:
        unknown = [n for n in args.shapes.split(",") if n != "tiny" and n not in QWEN3]
        if unknown:
            raise SystemExit(f"--shapes: unknown {', '.join(unknown)}; choose from tiny, {', '.join(QWEN3)}")
        SHAPES_OVERRIDE[:] = args.shapes.split(",")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    {"signal": part_signal, "online": part_online, "offline": part_offline, "rich": part_rich}[args.part](
        args, Rows(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
