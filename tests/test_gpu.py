"""GPU-only tests (marker ``gpu``): sdpo's first CUDA run.

bf16 signal vs the float32 reference, every trainer (online, offline, rich SDPOTrainer,
SPO, the chat's update) for two steps on the device, and a checkpoint save / load / resume.
``benchmarks/gpu/check.py`` runs them on a lent GPU (``pytest -m gpu tests/test_gpu.py``);
without CUDA they are skipped with one reason. ``SDPO_TEST_DEVICE=cpu`` runs them on the CPU,
to check the tests themselves.

They use the tiny random model (``tiny-random``: the embedded tokenizer, which
``make gpu-wheels`` carries to the GPU machine; the embedded model itself does not fit
the 64 MiB a call may carry).
"""

from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path

import pytest
import torch

DEVICE = os.environ.get("SDPO_TEST_DEVICE", "cuda")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(DEVICE.startswith("cuda") and not torch.cuda.is_available(),
                       reason="needs CUDA: benchmarks/gpu/check.py runs it on a GPU (SDPO_TEST_DEVICE=cpu: here)"),
]

EXAMPLES = [
    ("How does a hash map work?", "It hashes each key to a bucket.", "Too short, give an example."),
    ([{"role": "user", "content": "Explain recursion."},
      {"role": "assistant", "content": "A function that calls itself."},
      {"role": "user", "content": "Give me a Python example, please."}],
     "def fact(n):\n    return 1 if n <= 1 else n * fact(n - 1)\n\nThis computes n! by calling itself on n - 1.",
     "Thanks, that's exactly what I wanted."),
    ("Summarise: the meeting moved to Friday because the room was booked.",
     "The meeting is now on Friday since the room was taken on the original day, so plan accordingly.",
     "Way too long. One line please."),
    ("What is 12 + 30?", "42", "Correct, but show your working next time."),
]


def _device_type(module) -> str:
    return next(module.parameters()).device.type


def _expected_type() -> str:
    return torch.device(DEVICE).type


# ---------------------------------------------------------------------------- signal


@pytest.mark.parametrize("precision", ["bf16_weights", "fp32_weights_bf16_autocast"])
def test_bf16_signal_matches_float32_reference(tokenizer, precision):
    from sdpo.models import enable_autocast, tiny_random_model
    from sdpo.reference import reference_logprobs
    from sdpo.signal import encode_examples, hindsight_logprobs

    reference = tiny_random_model(len(tokenizer), seed=0, hidden_size=128).to(DEVICE).eval()
    with torch.no_grad():  # log-probs spread over ~10 nats (not near-uniform), so bf16's rounding shows
        reference.get_input_embeddings().weight.mul_(4.0)
    encoded = encode_examples(tokenizer, EXAMPLES)
    with torch.no_grad():
        ref_s = [reference_logprobs(reference, e.student_context, e.response).float() for e in encoded]
        ref_t = [reference_logprobs(reference, e.teacher_context, e.response).float() for e in encoded]
    model = copy.deepcopy(reference)
    if precision == "bf16_weights":
        model = model.to(torch.bfloat16)
    else:
        enable_autocast(model, torch.bfloat16)
    student, teacher = hindsight_logprobs(model, encoded, pad_token_id=tokenizer.pad_token_id)
    assert all(s.device.type == _expected_type() and s.dtype == torch.float32 for s in student + teacher)
    spread = max((r.max() - r.min()).item() for r in ref_s)
    assert spread > 3.0  # the reference's log-probs do vary: the comparison means something
    lp_err = max((a - b).abs().max().item() for xs, ys in ((student, ref_s), (teacher, ref_t)) for a, b in zip(xs, ys))
    sig_err = [((t - s) - (rt - rs)).abs().mean().item() for s, t, rs, rt in zip(student, teacher, ref_s, ref_t)]
    # measured on CPU (bf16 weights / autocast): log-probs within 0.03 and 0.024, signal within 0.008 and 0.007
    assert lp_err < 0.1, lp_err
    assert max(sig_err) < 0.03, sig_err


# ---------------------------------------------------------------------------- trainers


def test_online_trainer_two_steps(prompts_file, tmp_path):
    from sdpo.trainers.online import OnlineSDPOConfig, OnlineSDPOTrainer

    cfg = OnlineSDPOConfig(train_jsonl=str(prompts_file), model_name_or_path="tiny-random", simulator="rule",
                           style="no_emojis", per_device_train_batch_size=2, max_new_tokens=8, learning_rate=1e-3,
                           max_steps=2, save_steps=2, summary_prompts=0, progress=False, report_to="none",
                           output_dir=str(tmp_path / "online"))
    trainer = OnlineSDPOTrainer(cfg)
    assert _device_type(trainer.model) == _expected_type()
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    steps = [json.loads(line) for line in (tmp_path / "online" / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2]
    assert all(math.isfinite(s["loss"]) and s["response_tokens_mean"] > 0 for s in steps)
    assert (tmp_path / "online" / "checkpoint-2" / "model.safetensors").exists()
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))


@pytest.fixture(scope="module")
def records_file(tmp_path_factory):
    from sdpo.data.interactions import write_interactions
    from sdpo.data.logs import extract, sample_path

    rows = [json.loads(line) for line in sample_path("wildfeedback").read_text(encoding="utf-8").splitlines()]
    records, _ = extract(rows, "wildfeedback")
    return write_interactions(records[:16], tmp_path_factory.mktemp("gpu-data") / "records.jsonl")


def _offline_config(records_file, out, **extra):
    from sdpo.trainers.offline import OfflineSDPOConfig

    return OfflineSDPOConfig(train_jsonl=str(records_file), model_name_or_path="tiny-random", output_dir=str(out),
                             per_device_train_batch_size=2, learning_rate=1e-3, max_steps=2, save_steps=1, seed=0,
                             disable_tqdm=True, report_to="none", use_cpu=_expected_type() == "cpu", **extra)


def test_offline_trainer_two_steps_and_checkpoint_loads(records_file, tmp_path):
    from sdpo.models import load_model
    from sdpo.trainers.offline import build_trainer

    trainer = build_trainer(_offline_config(records_file, tmp_path / "offline"))
    assert trainer.args.device.type == _expected_type()
    trainer.train()
    assert _device_type(trainer.model) == _expected_type()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    # save / load: the checkpoint holds exactly the trained weights
    trained = {k: v.detach() for k, v in trainer.model.state_dict().items()}
    dtype = next(trainer.model.parameters()).dtype
    loaded, _ = load_model(str(tmp_path / "offline" / "checkpoint-2"), device=DEVICE, dtype=dtype)
    assert _device_type(loaded) == _expected_type()
    for name, value in loaded.state_dict().items():
        assert torch.equal(value, trained[name]), name


def test_offline_run_stopped_after_a_checkpoint_resumes_to_the_same_weights(records_file, tmp_path):
    from safetensors.torch import load_file
    from transformers import TrainerCallback

    from sdpo.trainers.offline import train_offline

    class StopAfterFirstStep(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 1:
                control.should_training_stop = True  # checkpoint-1 is saved first (save_steps=1)

    train_offline(_offline_config(records_file, tmp_path / "straight", model_dtype="float32"))
    stopped = tmp_path / "stopped"
    train_offline(_offline_config(records_file, stopped, model_dtype="float32"), callbacks=[StopAfterFirstStep()])
    assert (stopped / "checkpoint-1").is_dir() and not (stopped / "checkpoint-2").exists()
    train_offline(_offline_config(records_file, stopped, model_dtype="float32", resume_from_checkpoint="last"))
    a = load_file(tmp_path / "straight" / "checkpoint-2" / "model.safetensors")
    b = load_file(stopped / "checkpoint-2" / "model.safetensors")
    start = load_file(stopped / "checkpoint-1" / "model.safetensors")
    assert a.keys() == b.keys()
    # CUDA kernels may sum in another order (atomics), and AdamW turns a near-zero gradient's flipped sign
    # into a full step (lr 1e-3): a few weights may differ. A resume that lost the optimizer's moments or
    # the data order changes most of them.
    diff = torch.cat([(a[k] - b[k]).abs().flatten() for k in a])
    assert (diff > 1e-5).float().mean().item() < 1e-3, (diff > 1e-5).float().mean().item()
    assert diff.max().item() <= 5e-3
    assert max((a[k] - start[k]).abs().max().item() for k in a) > 1e-4  # step 2 did move the weights


def test_rich_sdpo_trainer_two_steps(tokenizer, tmp_path):
    from datasets import Dataset
    from trl import GRPOConfig

    from sdpo import SDPOTrainer
    from sdpo.models import tiny_random_model
    from sdpo.trainers.rich import SDPOConfig

    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": f"What is {a} + {b}?"}], "answer": a + b}
                            for a, b in [(1, 2), (3, 4), (5, 6), (7, 8)]])

    def reward(prompts, completions, answer, **_):
        return [{"score": float(k % 2), "feedback": f"attempt {k} is wrong"} for k in range(len(completions))]

    args = GRPOConfig(output_dir=str(tmp_path / "rich"), per_device_train_batch_size=4, num_generations=4,
                      max_completion_length=6, max_steps=2, learning_rate=1e-3, logging_steps=1, report_to=[],
                      use_cpu=_expected_type() == "cpu", save_strategy="no", seed=0)
    trainer = SDPOTrainer(model=tiny_random_model(len(tokenizer)), args=args, sdpo_config=SDPOConfig(),
                          processing_class=tokenizer, reward_funcs=[reward], train_dataset=ds)
    trainer.train()
    assert _device_type(trainer.model) == _expected_type()
    assert _device_type(trainer.teacher_model) == _expected_type()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 2 and all(math.isfinite(h["loss"]) for h in logs)
    assert logs[-1]["self_distillation/reprompt_sample_fraction"] > 0


@pytest.mark.parametrize("method", ["dpo", "pspo", "ospo", "rspo"])
def test_spo_trainer_two_steps(method, tmp_path):
    from sdpo.spo.pipeline import TrainArguments, train_policy

    prefs = tmp_path / "prefs.jsonl"
    prefs.write_text("".join(json.dumps({"prompt": f"Tell me about topic {i}.", "y0": f"Topic {i} is dull.",
                                         "y1": f"Topic {i} is a fine subject with a long history.", "z": i % 2})
                             + "\n" for i in range(8)))
    args = TrainArguments(pref_path=str(prefs), method=method, base_model_id="tiny-random",
                          output_dir=str(tmp_path / method), max_steps=2, batch_size=4, grad_accum_steps=1,
                          learning_rate=1e-3, refit_every=1, lora_r=4, warmup_steps=0)
    final = train_policy(args)
    logs = [json.loads(line) for line in (tmp_path / method / "metrics.jsonl").read_text().splitlines()]
    assert len(logs) == 2 and all(math.isfinite(r["loss"]) for r in logs)
    assert (Path(final) / "spo_meta.json").exists()
    meta = json.loads((Path(final) / "spo_meta.json").read_text())
    assert meta["method"] == method and meta["skipped_nonfinite"] == 0


@pytest.mark.parametrize("loss", ["policy_gradient", "topk_distillation"])
def test_chat_update_two_steps(tokenizer, loss):
    from sdpo.models import tiny_random_model
    from sdpo.templates import get_template
    from sdpo.trainers.update import UpdateExample, UpdateOptions, sdpo_update

    model = tiny_random_model(len(tokenizer), seed=3).to(DEVICE)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    template = get_template("hindsight")
    gen = torch.Generator().manual_seed(1)
    examples = [UpdateExample([{"role": "user", "content": f"Question {i}: what is {i} plus {i}?"}],
                              torch.randint(5, len(tokenizer) - 1, (4 + 3 * i,), generator=gen).tolist(),
                              ["Shorter.", "No lists.", "Use French."][i]) for i in range(3)]
    start = [p.detach().clone() for p in model.parameters()]
    for _ in range(2):
        result = sdpo_update(model, optimizer, tokenizer, template, examples,
                             UpdateOptions(loss=loss, distillation_topk=7))
        assert math.isfinite(result.loss) and result.stats["response_tokens"] > 0
    assert _device_type(model) == _expected_type()
    assert any(not torch.equal(a, b) for a, b in zip(start, model.parameters()))
