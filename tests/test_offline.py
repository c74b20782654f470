import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sdpo.cli import main
from tests.conftest import SHARDED_LAUNCH, SHARDED_SCRIPT, launch_two_processes, max_weight_diff
from sdpo.data.interactions import write_interactions
from sdpo.data.logs import extract, sample_path
from sdpo.losses import advantage_pg_loss
from sdpo.reference import reference_logprobs
from sdpo.signal import encode_examples, hindsight_logprobs

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def records_file(tmp_path_factory):
    rows = [json.loads(line) for line in sample_path("wildfeedback").read_text(encoding="utf-8").splitlines()]
    records, _ = extract(rows, "wildfeedback")
    return write_interactions(records[:24], tmp_path_factory.mktemp("data") / "records.jsonl")


def _args(records_file, out, *extra):
    return [
        "train-offline", "--train_jsonl", str(records_file), "--model_name_or_path", "tiny-random",
        "--output_dir", str(out), "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "2",
        "--learning_rate", "1e-3", "--disable_tqdm", "true", "--seed", "0", *extra,
    ]


def test_training_loss_gradient_matches_float64_reference(tokenizer):
    from sdpo.models import tiny_random_model

    examples = [
        ("Name a fruit.", "Apple, obviously.", "Pick something more exotic."),
        ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
          {"role": "user", "content": "tell me a fact"}], "Octopuses have three hearts 🐙", "cool, another"),
    ]
    enc = encode_examples(tokenizer, examples)
    model = tiny_random_model(len(tokenizer), seed=2).train()
    model64 = tiny_random_model(len(tokenizer), seed=2).double().train()
    s, q = hindsight_logprobs(model, enc, pad_token_id=tokenizer.pad_token_id, student_grad=True)
    loss, _ = advantage_pg_loss(s, q, ignore_first=2)
    loss.backward()
    per_seq = []
    for e in enc:
        s64 = reference_logprobs(model64, e.student_context, e.response)
        with torch.no_grad():
            q64 = reference_logprobs(model64, e.teacher_context, e.response)
        adv = (q64 - s64.detach())[2:]
        per_seq.append(-(adv * s64[2:]).sum() / len(adv))
    ref = torch.stack(per_seq).mean()
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), abs=1e-5)
    grads = dict(model.named_parameters())
    for name, p in model64.named_parameters():
        scale = p.grad.abs().max().item() + 1e-12
        assert (grads[name].grad.double() - p.grad).abs().max().item() / scale < 1e-4, name


def test_two_step_run_writes_checkpoints_and_metrics(records_file, tmp_path, capsys):
    import uuid

    out = tmp_path / f"offline-{uuid.uuid4().hex[:8]}"
    assert main(_args(records_file, out, "--max_steps", "2", "--save_steps", "1")) == 0
    for name in ("checkpoint-1", "checkpoint-2", "model.safetensors", "sdpo_config.json", "tokenizer.json"):
        assert (out / name).exists(), name
    logs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [entry for entry in logs if "loss" in entry]
    assert [entry["step"] for entry in steps] == [1, 2]
    assert all(entry["signal_abs_mean"] > 0 and entry["response_tokens"] > 0 for entry in steps)
    import sqlite3

    db = Path(os.environ["TRACKIO_DIR"]) / "sdpo.db"  # trackio is the default tracker
    tracked = sqlite3.connect(db).execute("select count(*) from metrics where run_name = ?", (out.name,)).fetchone()
    assert tracked[0] >= 2
    config = json.loads((out / "sdpo_config.json").read_text())
    assert config["ignore_first_tokens"] == 2 and config["template"] == "hindsight-revise"


KILLED_RUN = textwrap.dedent(
    """
    import os, signal, sys
    from transformers import TrainerCallback
    from sdpo.trainers.offline import OfflineSDPOConfig, train_offline

    class KillAfterFirstCheckpoint(TrainerCallback):
        def on_save(self, args, state, control, **kw):
            if state.global_step == 2:
                os.kill(os.getpid(), signal.SIGKILL)

    config = OfflineSDPOConfig(**__import__("json").loads(sys.argv[1]))
    train_offline(config, callbacks=[KillAfterFirstCheckpoint()])
    """
)


def test_killed_run_resumes_to_the_same_weights(records_file, tmp_path):
    common = dict(train_jsonl=str(records_file), model_name_or_path="tiny-random", per_device_train_batch_size=2,
                  gradient_accumulation_steps=1, learning_rate=1e-3, max_steps=4, save_steps=2, seed=0,
                  disable_tqdm=True, report_to="none")
    straight = tmp_path / "straight"
    from sdpo.trainers.offline import OfflineSDPOConfig, train_offline

    train_offline(OfflineSDPOConfig(output_dir=str(straight), **common))

    killed = tmp_path / "killed"
    done = subprocess.run([sys.executable, "-c", KILLED_RUN, json.dumps({"output_dir": str(killed), **common})],
                          capture_output=True, text=True, timeout=300, env=os.environ.copy())
    assert done.returncode == -9, done.stderr[-3000:]  # really killed
    assert (killed / "checkpoint-2").is_dir() and not (killed / "checkpoint-4").exists()

    train_offline(OfflineSDPOConfig(output_dir=str(killed), resume_from_checkpoint="last", **common))
    state = json.loads((killed / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    a = load_file(straight / "model.safetensors")
    b = load_file(killed / "model.safetensors")
    initial = load_file(killed / "checkpoint-2" / "model.safetensors")
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    assert max((a[k] - initial[k]).abs().max().item() for k in a) > 1e-4  # steps 3-4 did change the weights


def _launch(launcher_args, records_file, tiny_dir, out, port, script=("-m", "sdpo.cli")):
    # float32: on this CPU `auto` means bf16 autocast, which the CPU-only DeepSpeed/FSDP shim does not apply the
    # same way as DDP (measured 1.3e-3 apart); these launches check the sharding (real sharded runs need GPUs)
    args = _args(records_file, out, "--max_steps", "2", "--save_steps", "2", "--model_dtype", "float32")
    args[args.index("--model_name_or_path") + 1] = str(tiny_dir)
    done = launch_two_processes(launcher_args, [*script, *args], port)
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    # 24 records / (2 per device x 2 processes) = 6 batches = 3 optimizer steps (GA 2) per epoch;
    # a lone process would have made 6 steps per epoch (epoch 1/3 after 2 steps)
    assert state["epoch"] == pytest.approx(2 / 3)
    assert done.stdout.count("done: 2 steps") == 1  # one job, reported once
    return done


@pytest.fixture(scope="module")
def ddp_run(records_file, tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("offline-ddp") / "run"
    _launch(["--multi_gpu"], records_file, tiny_dir, out, 29533)
    return out


def test_two_process_accelerate_run(ddp_run, tiny_dir):
    assert max_weight_diff(ddp_run, tiny_dir) > 1e-4  # the saved final model is the trained one


@pytest.mark.parametrize("mode", ["zero3", "fsdp2"])
def test_sharded_offline_run_saves_the_same_model_as_ddp(records_file, tiny_dir, ddp_run, tmp_path, mode):
    """DeepSpeed ZeRO-3 and FSDP2 (gloo on CPU): the final model is one loadable file equal to DDP's."""
    import deepspeed  # noqa: F401  (a dev dependency: the test must not silently skip)

    out = tmp_path / mode
    _launch(SHARDED_LAUNCH[mode], records_file, tiny_dir, out, 29535 + (mode == "fsdp2"), script=(SHARDED_SCRIPT,))
    assert max_weight_diff(out, ddp_run) <= 5e-5  # steps move weights ~1e-3


def test_cli_errors(records_file, tmp_path, capsys):
    assert main(["train-offline", "--model_name_or_path", "tiny-random"]) == 2
    assert "--train_jsonl is required" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text(records_file.read_text().splitlines()[0] + '\n{"x": [], "y": "a", "o": "b"}\n')
    assert main(_args(bad, tmp_path / "o", "--max_steps", "1")) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl:2: field 'x' must be a non-empty list" in err and "--skip_invalid" in err
    assert main(_args(bad, tmp_path / "o2", "--max_steps", "1", "--skip_invalid", "true")) == 0
    assert "1 invalid skipped" in capsys.readouterr().out


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("SCRATCH", "WORLD_SIZE")}
    env["SDPO_BIN"] = str(Path(sys.executable).parent / "sdpo")  # the sdpo of the environment under test
    env.update(extra)
    return env


def test_scripts_dry_run_and_defaults():
    done = subprocess.run(["bash", "scripts/train_offline_sdpo.sh", "--dry-run"], capture_output=True, text=True,
                          cwd=ROOT, env=_env(TRAIN_JSONL="x.jsonl", CUDA_VISIBLE_DEVICES="0,1,2,3"))
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "launch --config_file" in out and "configs/accelerate/multi_gpu.yaml --num_processes 4" in out
    for flag in ("--model_name_or_path Qwen/Qwen3-8B", "--learning_rate 2e-6", "--per_device_train_batch_size 4",
                 "--gradient_accumulation_steps 8", "--output_dir ./runs/sdpo-offline-runs/"):
        assert flag in out, flag
    done = subprocess.run(["bash", "scripts/train_offline_sdpo.sh", "--dry-run"], capture_output=True, text=True,
                          cwd=ROOT, env=_env(TRAIN_JSONL="x.jsonl", WORLD_SIZE="1", SCRATCH="/scratch/u",
                                             ACCELERATE_CONFIG="my.yaml", LR="1e-5"))
    assert "accelerate" not in done.stdout and "--output_dir /scratch/u/sdpo-offline-runs/" in done.stdout
    assert "--learning_rate 1e-5" in done.stdout
    done = subprocess.run(["bash", "scripts/train_offline_sdpo.sh"], capture_output=True, text=True, cwd=ROOT,
                          env=_env())
    assert done.returncode == 2 and "set TRAIN_JSONL" in done.stderr


def test_scripts_run_the_pipeline(tmp_path):
    """prepare (bundled sample) -> train, through the shell scripts, as a user would."""
    data = tmp_path / "wf.jsonl"
    done = subprocess.run(["bash", "scripts/prepare_data_wildfeedback.sh"], capture_output=True, text=True, cwd=ROOT,
                          env=_env(INPUT_FILE="sample", OUTPUT=str(data)), timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(data.read_text().splitlines()) == 48
    out = tmp_path / "run"
    done = subprocess.run(
        ["bash", "scripts/train_offline_sdpo.sh", "--max_steps", "1", "--disable_tqdm", "true"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
        env=_env(TRAIN_JSONL=str(data), WORLD_SIZE="1", BASE_MODEL="tiny-random", OUTPUT_DIR=str(out), BS="2", GA="1"),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "model.safetensors").is_file() and "done: 1 steps" in done.stdout
