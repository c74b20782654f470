"""Offline SDPO training throughput and memory: our trainer's path vs a straightforward one.

Side by side in one process, the same model (weights restored between runs), the same
63 interactions of uneven length (the bundled WildFeedback sample plus the signal
benchmark's longer cases), batch size 8, plain SGD so the optimizer adds no state:

* ``padded``: batches in shuffled order; student and teacher each scored by one
  right-padded forward with a float32 log-softmax over every position and the whole
  vocabulary (``sdpo.reference.naive_batched_logprobs``), the student with gradients;
* ``sdpo``: batches from the length-grouped sampler the trainer uses; the signal core
  (``hindsight_logprobs(student_grad=True)``: length-planned micro-batches, output
  head only at response positions, chunked and recomputed in backward).

Both use the same loss (``sdpo.losses.advantage_pg_loss``, first 2 tokens ignored).
Printed: one JSON line with training response tokens/s, peak memory above the loaded
model, and the ratios.

    python benchmarks/bench_offline.py [--repeats 2] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None and __name__ == "__main__":
    os.environ["MALLOC_MMAP_THRESHOLD_"] = str(1 << 20)
    os.execv(sys.executable, [sys.executable, *sys.argv])

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_signal import PeakMemory  # noqa: E402
from cases import benchmark_cases  # noqa: E402

from sdpo.data.logs import extract, sample_path  # noqa: E402
from sdpo.losses import advantage_pg_loss  # noqa: E402
from sdpo.models import load_model  # noqa: E402
from sdpo.reference import naive_batched_logprobs  # noqa: E402
from sdpo.signal import encode_examples, hindsight_logprobs  # noqa: E402


def interactions():
    rows = [json.loads(line) for line in sample_path("wildfeedback").read_text(encoding="utf-8").splitlines()]
    records, _ = extract(rows, "wildfeedback")
    examples = [(r.x, r.y, r.o) for r in records] + benchmark_cases()
    return examples


def padded_step(model, batch, pad_id):
    responses = [e.response for e in batch]
    student = naive_batched_logprobs(model, [e.student_context for e in batch], responses, pad_id)
    with torch.no_grad():
        teacher = naive_batched_logprobs(model, [e.teacher_context for e in batch], responses, pad_id)
    return student, teacher


def sdpo_step(model, batch, pad_id):
    return hindsight_logprobs(model, batch, pad_token_id=pad_id, student_grad=True)


def epoch(model, batches, step_fn, pad_id, optimizer):
    for batch in batches:
        student, teacher = step_fn(model, batch, pad_id)
        loss, _ = advantage_pg_loss(student, teacher, ignore_first=2)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    from transformers.trainer_pt_utils import LengthGroupedSampler

    model, tok = load_model(args.model, device=args.device, dtype="float32")
    model.train()
    encoded = encode_examples(tok, interactions())
    pad_id = tok.pad_token_id
    bs = args.batch_size
    order = list(range(len(encoded)))
    random.Random(0).shuffle(order)
    padded_batches = [[encoded[i] for i in order[k : k + bs]] for k in range(0, len(order), bs)]
    lengths = [len(e.teacher_context) + len(e.response) for e in encoded]
    grouped = list(LengthGroupedSampler(bs, lengths=lengths, generator=torch.Generator().manual_seed(0)))
    sdpo_batches = [[encoded[i] for i in grouped[k : k + bs]] for k in range(0, len(grouped), bs)]
    n_tokens = sum(len(e.response) for e in encoded)

    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    device = torch.device(args.device)
    runs = {"padded": (padded_batches, padded_step), "sdpo": (sdpo_batches, sdpo_step)}
    times = {m: [] for m in runs}
    peaks = {m: [] for m in runs}
    for r in range(args.repeats + 1):  # the first round warms up and is not counted
        for method in (("padded", "sdpo") if r % 2 == 0 else ("sdpo", "padded")):
            model.load_state_dict(initial)
            optimizer = torch.optim.SGD(model.parameters(), lr=1e-6)
            batches, step_fn = runs[method]
            with PeakMemory(device) as mem:
                start = time.perf_counter()
                epoch(model, batches, step_fn, pad_id, optimizer)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                elapsed = time.perf_counter() - start
            if r > 0:
                times[method].append(elapsed)
                peaks[method].append(mem.extra)
    row = {
        "benchmark": "offline_training_epoch",
        "model": args.model,
        "device": str(device),
        "examples": len(encoded),
        "batch_size": bs,
        "response_tokens": n_tokens,
        "context_tokens": sum(len(e.student_context) + len(e.teacher_context) for e in encoded),
    }
    for method in runs:
        row[f"{method}_tokens_per_s"] = round(n_tokens / statistics.median(times[method]), 1)
        row[f"{method}_peak_extra_mib"] = round(statistics.median(peaks[method]) / 2**20, 1)
    row["speedup"] = round(row["sdpo_tokens_per_s"] / row["padded_tokens_per_s"], 3)
    row["extra_memory_ratio"] = round(row["sdpo_peak_extra_mib"] / max(row["padded_peak_extra_mib"], 1e-9), 3)
    row.update(repeats=args.repeats, threads=torch.get_num_threads(), torch=torch.__version__,
               machine=platform.machine(), date=time.strftime("%Y-%m-%d"))
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
