"""Signal throughput and memory: sdpo's signal core vs the naive batched reference.

Both run side by side in one process on the same 16 uneven cases at batch size 16:

* ``naive``: pad every context+response to the batch maximum, one forward for the
  student batch and one for the teacher batch, float32 log-softmax over every
  position and the whole vocabulary, gather (``sdpo.reference.naive_hindsight_logprobs``);
* ``sdpo``: ``sdpo.signal.hindsight_logprobs`` (length-planned micro-batches, both
  contexts fused, output head only at response positions in bounded chunks).

Printed: one JSON line per model with response tokens/s, peak memory above the loaded
model (activations + logits) for both, and the ratios; on CPU also the CPU model, its
AMX / avx512_bf16 flags, the float32 and bf16 matmul peaks measured in the same run and
what ``--dtype auto`` picks on this machine kind (``sdpo.models.cpu_bf16_measurement``). On CPU, peak memory is the
process's resident set sampled every millisecond, with glibc's mmap threshold fixed
so freed tensors go back to the system; on CUDA it is ``max_memory_allocated``.

    python benchmarks/bench_signal.py                 # embedded model + Qwen3-vocab model
    python benchmarks/bench_signal.py --models embedded --repeats 5
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

# Fixed mmap threshold: large tensors are mmapped and returned to the OS on free,
# so the resident set tracks live tensors (set before the allocator starts).
if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None and __name__ == "__main__":
    os.environ["MALLOC_MMAP_THRESHOLD_"] = str(1 << 20)
    os.execv(sys.executable, [sys.executable, *sys.argv])

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cases import benchmark_cases  # noqa: E402
from shapes import random_qwen3  # noqa: E402

from sdpo.models import load_model, load_tokenizer  # noqa: E402
from sdpo.reference import naive_hindsight_logprobs  # noqa: E402
from sdpo.signal import encode_examples, hindsight_logprobs  # noqa: E402


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak extra memory of a block: CUDA allocator stats, or sampled RSS on CPU."""

    def __init__(self, device: torch.device):
        self.device = device

    def __enter__(self):
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            try:
                ctypes.CDLL("libc.so.6").malloc_trim(0)
            except OSError:
                pass
            self.base = self.peak = _rss()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss())
            time.sleep(0.001)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.extra = torch.cuda.max_memory_allocated() - self.base
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, _rss())
            self.extra = self.peak - self.base


# Variants of the sdpo path that switch one optimisation off, to see where the gain comes from.
ABLATIONS = {
    "sdpo_unfused": dict(fuse=False),  # student and teacher in separate forwards
    "sdpo_one_microbatch": dict(overhead_tokens=10**9),  # no length planning: one padded batch
    "sdpo_full_head": dict(head_mode="logits"),  # model forward with logits_to_keep, no head chunking
}


def _run(method, model, encoded, pad_id):
    with torch.no_grad():
        if method == "naive":
            return naive_hindsight_logprobs(model, encoded, pad_id)
        return hindsight_logprobs(model, encoded, pad_token_id=pad_id, **ABLATIONS.get(method, {}))


def bench(model, tokenizer, label: str, repeats: int, ablations: bool = False) -> dict:
    device = next(model.parameters()).device
    encoded = encode_examples(tokenizer, benchmark_cases())
    pad_id = tokenizer.pad_token_id
    n_tokens = sum(len(e.response) for e in encoded)
    # agreement check + warm-up
    s_ref, t_ref = _run("naive", model, encoded, pad_id)
    s_new, t_new = _run("sdpo", model, encoded, pad_id)
    max_diff = max(
        (a - b).abs().max().item() for xs, ys in ((s_ref, s_new), (t_ref, t_new)) for a, b in zip(xs, ys)
    )
    del s_ref, t_ref, s_new, t_new
    methods = ["naive", "sdpo"] + (list(ABLATIONS) if ablations else [])
    times = {m: [] for m in methods}
    peaks = {m: [] for m in methods}
    for r in range(repeats):
        order = methods if r % 2 == 0 else methods[::-1]
        for method in order:
            with PeakMemory(device) as mem:
                start = time.perf_counter()
                out = _run(method, model, encoded, pad_id)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                elapsed = time.perf_counter() - start
                del out
            times[method].append(elapsed)
            peaks[method].append(mem.extra)
    row = {"model": label, "device": str(device), "cases": len(encoded), "batch_size": len(encoded)}
    row["response_tokens"] = n_tokens
    row["context_tokens"] = sum(len(e.student_context) + len(e.teacher_context) for e in encoded)
    row["vocab_size"] = model.config.vocab_size
    row["max_abs_diff"] = max_diff
    for method in methods:
        t = statistics.median(times[method])
        row[f"{method}_tokens_per_s"] = round(n_tokens / t, 1)
        row[f"{method}_peak_extra_mib"] = round(statistics.median(peaks[method]) / 2**20, 1)
    row["speedup"] = round(row["sdpo_tokens_per_s"] / row["naive_tokens_per_s"], 3)
    row["extra_memory_ratio"] = round(row["sdpo_peak_extra_mib"] / max(row["naive_peak_extra_mib"], 1e-9), 3)
    for method in methods[2:]:
        row[f"{method}_speedup"] = round(row[f"{method}_tokens_per_s"] / row["naive_tokens_per_s"], 3)
    return row


def cpu_report() -> dict:
    """The CPU, its bf16-relevant flags, fp32 vs bf16 matmul peaks measured now (in this run, so
    they compare with this run's figures) and what ``--dtype auto`` picks here (its cached
    per-machine-kind measurement, :func:`sdpo.models.cpu_bf16_measurement`)."""
    from sdpo.models import BF16_CPU_FLAGS, cpu_bf16_measurement, cpu_bf16_pays, cpu_flags, cpu_model_name, matmul_peaks

    flags = cpu_flags()
    peaks = matmul_peaks()
    cached = cpu_bf16_measurement() if any(f in flags for f in BF16_CPU_FLAGS) else None
    return {
        "cpu": cpu_model_name(),
        "cpu_flags": sorted(f for f in flags if f.startswith("amx") or f in ("avx512_bf16", "avx512f", "avx2")),
        "matmul_fp32_gflops": round(peaks["float32"], 1), "matmul_bf16_gflops": round(peaks["bfloat16"], 1),
        "matmul_bf16_speedup": round(peaks["bfloat16"] / peaks["float32"], 2),
        "auto_dtype": "bfloat16 (mixed)" if cpu_bf16_pays() else "float32",
        "auto_measurement": cached,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="embedded,qwen3-vocab", help="comma list: embedded, qwen3-vocab")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--ablations", action="store_true", help="also time variants with one optimisation off")
    args = parser.parse_args()
    machine = cpu_report() if args.device == "cpu" else {}
    rows = []
    for name in args.models.split(","):
        if name == "embedded":
            model, tok = load_model("smollm2-135m", device=args.device, dtype=args.dtype)
            label = "smollm2-135m"
        elif name == "qwen3-vocab":
            tok = load_tokenizer("tiny-random")
            model = random_qwen3("qwen3-vocab", args.device, getattr(torch, args.dtype))
            label = "random-qwen3-vocab-151936"
        else:
            raise SystemExit(f"unknown model {name!r}")
        model.eval()
        row = bench(model, tok, label, args.repeats, args.ablations)
        row.update(dtype=args.dtype, threads=torch.get_num_threads(), torch=torch.__version__,
                   machine=platform.machine(), date=time.strftime("%Y-%m-%d"), **machine)
        print(json.dumps(row), flush=True)
        rows.append(row)
        del model
        gc.collect()


if __name__ == "__main__":
    main()
