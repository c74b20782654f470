import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sdpo.cli import main
from tests.conftest import SHARDED_LAUNCH, SHARDED_SCRIPT, launch_two_processes, max_weight_diff
from sdpo.data.prompt_sources import load_prompt_rows, prepare_helpsteer2, prepare_tldr
from sdpo.losses import advantage_pg_loss
from sdpo.reference import reference_logprobs
from sdpo.signal import encode_examples, hindsight_logprobs

ROOT = Path(__file__).resolve().parents[1]


def _args(prompts_file, out, *extra):
    return ["train-online", "--train_jsonl", str(prompts_file), "--model_name_or_path", "tiny-random",
            "--simulator", "rule", "--style", "no_emojis", "--per_device_train_batch_size", "2",
            "--max_new_tokens", "8", "--learning_rate", "1e-3", "--output_dir", str(out), "--summary_prompts", "2",
            "--summary_max_new_tokens", "4", "--progress", "false", *extra]


def test_prepare_tldr_and_helpsteer2_samples():
    train, val, stats = prepare_tldr(load_prompt_rows("tldr", "sample"))
    assert (len(train), len(val)) == (37, 5)
    assert stats["dropped: duplicate post within its split"] == 14
    assert stats["dropped: prompt of 1024+ characters"] == 1
    assert stats["dropped: validation post also in train (kept in train)"] == 1
    assert not {r.text for r in train} & {r.text for r in val}
    assert all(r.text.endswith("\nTL;DR:\n") and len(r.text) < 1024 for r in train + val)
    train, val, stats = prepare_helpsteer2(load_prompt_rows("helpsteer2", "sample"))
    assert (len(train), len(val)) == (37, 5)
    assert stats["dropped: multi-turn prompt"] == 1 and stats["dropped: duplicate prompt"] == 11
    assert stats["dropped: prompt or response over 2048 characters"] == 1


def _tldr_row(post, split, id_):
    return {"info": {"id": id_, "post": post}, "split": split}


def test_tldr_split_rule_as_the_reference():
    """process_tldr_dataset.py: cue appended, 1,024+ characters dropped (cue counted), duplicates dropped
    within a split (normalised: case, whitespace), a post in both splits kept in train only."""
    rows = [_tldr_row("Cats nap.", "train", "a"), _tldr_row("  cats   NAP. ", "train", "b"),
            _tldr_row("Cats nap.", "validation", "c"), _tldr_row("Dogs bark.", "validation", "d"),
            _tldr_row("dogs  bark.", "validation", "e"), _tldr_row("x" * 1016, "train", "f"),
            _tldr_row("x" * 1015, "train", "g")]
    train, val, stats = prepare_tldr(rows)
    assert [r.id for r in train] == ["a", "g"] and [r.id for r in val] == ["d"]
    assert train[0].text == "Cats nap.\nTL;DR:\n" and len(train[1].text) == 1023
    assert stats["dropped: duplicate post within its split"] == 2
    assert stats["dropped: validation post also in train (kept in train)"] == 1
    assert stats["dropped: prompt of 1024+ characters"] == 1


def test_one_pass_step_count_and_prompt_cap(tokenizer):
    from sdpo.templates import get_template
    from sdpo.trainers.online import select_prompts, steps_for_one_pass
    from sdpo.data.prompts import PromptRecord

    for n, bs, ga, world, want in ((16, 4, 1, 1, 4), (16, 2, 4, 1, 2), (17, 2, 4, 1, 3), (256, 4, 1, 4, 16),
                                   (512, 2, 4, 4, 16), (3, 4, 2, 2, 1), (100, 3, 1, 1, 34)):
        assert steps_for_one_pass(n, bs, ga, world) == want, (n, bs, ga, world)
        import math
        assert want == math.ceil(n / (bs * ga * world))
    prompts = [PromptRecord([{"role": "user", "content": f"prompt {i} " + "word " * (i % 7) * 20}]) for i in range(40)]
    t = get_template("hindsight", system_prompt="general")
    kept, counts = select_prompts(prompts, tokenizer, t, max_prompt_tokens=60, max_prompts=10, seed=42)
    assert counts["prompts_given"] == 40 and counts["prompts_used"] == len(kept) == 10
    assert counts["prompts_too_long"] == sum(
        len(__import__("sdpo.templates", fromlist=["x"]).render_context(tokenizer, t.student_messages(p.messages))) > 60
        for p in prompts) > 0
    again, _ = select_prompts(prompts, tokenizer, t, max_prompt_tokens=60, max_prompts=10, seed=42)
    other, _ = select_prompts(prompts, tokenizer, t, max_prompt_tokens=60, max_prompts=10, seed=1)
    assert [p.text for p in kept] == [p.text for p in again] != [p.text for p in other]
    everything, counts = select_prompts(prompts, tokenizer, t, max_prompt_tokens=0, max_prompts=0, seed=42)
    assert len(everything) == 40 and counts["prompts_too_long"] == 0
    with pytest.raises(ValueError, match="max_prompt_tokens"):
        select_prompts(prompts, tokenizer, t, max_prompt_tokens=3, max_prompts=None, seed=42)


def test_online_defaults_are_the_reference():
    from sdpo.trainers.online import OnlineSDPOConfig

    cfg = OnlineSDPOConfig(train_jsonl="x")
    assert cfg.advantage_centering == "sequence" and cfg.template == "hindsight"
    assert cfg.system_prompt == "general" and cfg.learning_rate == 5e-6 and cfg.ppo_clip == 0.2
    assert cfg.temperature == 1.0 and cfg.save_steps == 3 and cfg.max_train_prompts == 512
    assert cfg.max_prompt_tokens == 512 and cfg.max_grad_norm == 1.0 and cfg.seed == 42


def test_centred_online_loss_matches_float64_reference():
    """The reference online loss (online_sdpo_trainer.py _compute_loss): per-token advantages minus their
    per-sequence mean, PPO-clipped surrogate, token mean per sequence, mean over sequences."""
    torch.manual_seed(0)
    lengths = [5, 9, 1, 13]
    student = [torch.randn(n, dtype=torch.float32, requires_grad=True) for n in lengths]
    teacher = [torch.randn(n) for n in lengths]
    old = [s.detach() + 0.3 * torch.randn(len(s)) for s in student]  # off-policy: ratios away from 1
    loss, _ = advantage_pg_loss(student, teacher, centering="sequence", old=old, ppo_clip=0.2)
    loss.backward()
    # float64, padded batch as the reference lays it out
    T = max(lengths)
    mask = torch.zeros(len(lengths), T, dtype=torch.float64)
    s64 = torch.zeros(len(lengths), T, dtype=torch.float64)
    q64 = torch.zeros(len(lengths), T, dtype=torch.float64)
    o64 = torch.zeros(len(lengths), T, dtype=torch.float64)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
        s64[i, :n] = student[i].detach().double()
        q64[i, :n] = teacher[i].double()
        o64[i, :n] = old[i].double()
    s64.requires_grad_(True)
    adv = (q64 - s64.detach()) * mask
    mean = (adv * mask).sum(1, keepdim=True) / mask.sum(1, keepdim=True).clamp(min=1)
    adv = (adv - mean) * mask
    ratio = torch.exp(s64 - o64)
    per_token = -torch.min(ratio * adv, ratio.clamp(0.8, 1.2) * adv) * mask
    ref = (per_token.sum(1) / mask.sum(1).clamp(min=1)).mean()
    ref.backward()
    assert abs(loss.item() - ref.item()) < 1e-5
    for i, n in enumerate(lengths):
        assert torch.allclose(student[i].grad.double(), s64.grad[i, :n], atol=1e-6)


def test_policy_gradient_matches_float64_reference(tokenizer):
    """-sum_t A_t grad log p(y_t) / T with A fixed, through the PPO-clipped surrogate at ratio 1."""
    from sdpo.models import tiny_random_model

    enc = encode_examples(tokenizer, [("Summarize: cats nap a lot.", "Cats sleep.", "Too short!"),
                                      ("Name a color", "Blue 💙", "no emojis")])
    model = tiny_random_model(len(tokenizer), seed=5)
    model64 = tiny_random_model(len(tokenizer), seed=5).double()
    s, q = hindsight_logprobs(model, enc, pad_token_id=tokenizer.pad_token_id, student_grad=True)
    loss, _ = advantage_pg_loss(s, q, old=[x.detach() for x in s], ppo_clip=0.2)
    loss.backward()
    terms = []
    for e in enc:
        s64 = reference_logprobs(model64, e.student_context, e.response)
        with torch.no_grad():
            q64 = reference_logprobs(model64, e.teacher_context, e.response)
        terms.append(-((q64 - s64.detach()) * s64).sum() / len(s64))
    torch.stack(terms).mean().backward()
    got = dict(model.named_parameters())
    for name, p in model64.named_parameters():
        scale = p.grad.abs().max().item() + 1e-12
        assert (got[name].grad.double() - p.grad).abs().max().item() / scale < 1e-4, name


def test_two_step_run_checkpoints_and_resume(prompts_file, tmp_path, capsys):
    straight = tmp_path / "straight"
    assert main(_args(prompts_file, straight, "--max_steps", "2", "--save_steps", "1")) == 0
    out = capsys.readouterr().out
    assert "online SDPO: 2 steps" in out
    for name in ("checkpoint-1/model.safetensors", "checkpoint-1/accelerate_state", "checkpoint-2/tokenizer.json",
                 "metrics.jsonl", "summary.json", "summary_answers.jsonl"):
        assert (straight / name).exists(), name
    answers = [json.loads(line) for line in (straight / "summary_answers.jsonl").read_text().splitlines()]
    summary = json.loads((straight / "summary.json").read_text())
    assert len(answers) == summary["rule_judge_wins"] + summary["rule_judge_losses"] + summary["rule_judge_ties"]
    assert [a["rule_judge_after_vs_before"] for a in answers].count("win") == summary["rule_judge_wins"]
    assert {"prompt", "before", "after", "nonanswer_before", "nonanswer_after"} <= set(answers[0])
    assert "every held-out answer before/after" in out
    steps = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in steps] == [1, 2]
    for key in ("loss", "signal_abs_mean", "response_tokens_mean", "followup_words_mean", "simulator/seconds",
                "time/generate", "time/simulate", "time/score", "time/update", "persona_rule_score",
                "echo_rate", "simulator/truncated", "eos_signal_mean"):
        assert key in steps[0], key

    # stop after step 1, then resume from its checkpoint: same end point as the straight run
    resumed = tmp_path / "resumed"
    assert main(_args(prompts_file, resumed, "--max_steps", "1", "--save_steps", "1")) == 0
    assert main(_args(prompts_file, resumed, "--max_steps", "2", "--save_steps", "1",
                      "--resume_from_checkpoint", str(resumed / "checkpoint-1"))) == 0
    assert "resumed from" in capsys.readouterr().out
    a = load_file(straight / "checkpoint-2" / "model.safetensors")
    b = load_file(resumed / "checkpoint-2" / "model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    assert len((resumed / "metrics.jsonl").read_text().splitlines()) == 2


def _launch(launcher_args, prompts_file, tiny_dir, out, port, *extra, script=("-m", "sdpo.cli")):
    # Seed 0 (the runs whose DDP/ZeRO-3 gap was measured): with the default seed 42 ZeRO-3 ended 5.7e-5 to
    # 7.5e-5 from DDP after 2 steps of lr 1e-3 (seed 0: within 5e-5); Adam turns float-order noise in
    # near-zero gradients into visible steps, so the gap depends on the sampled data.
    args = _args(prompts_file, out, "--max_steps", "2", "--save_steps", "1", "--seed", "0", *extra)
    args[args.index("--model_name_or_path") + 1] = str(tiny_dir)
    done = launch_two_processes(launcher_args, [*script, *args], port)
    sums = dict(re.findall(r"rank (\d)/2: parameter checksum (\S+e[+-]\d\d)", done.stdout))
    assert sorted(sums) == ["0", "1"], done.stdout[-2000:]
    assert sums["0"] == sums["1"]  # the ranks agree
    return done


@pytest.fixture(scope="module")
def ddp_run(prompts_file, tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "run"
    _launch(["--multi_gpu"], prompts_file, tiny_dir, out, 29541)
    return out


def test_two_processes_hold_identical_weights(ddp_run, tiny_dir):
    assert max_weight_diff(ddp_run / "checkpoint-2", tiny_dir) > 1e-4  # it trained


@pytest.mark.parametrize("mode", list(SHARDED_LAUNCH))
def test_sharded_runs_match_ddp_and_resume(prompts_file, tiny_dir, ddp_run, tmp_path, mode):
    """The same run under DeepSpeed ZeRO-2/3 and FSDP2 (gloo on CPU) ends where DDP ends.

    This exercises what sharding changes: DeepSpeed config filling, generation with
    gathered parameters, the same number of forwards on every rank, consolidated saves,
    sharded optimizer state on resume.
    """
    import deepspeed  # noqa: F401  (a dev dependency: the test must not silently skip)

    port = 29550 + 10 * list(SHARDED_LAUNCH).index(mode)
    script = (SHARDED_SCRIPT,)
    out = tmp_path / "straight"
    _launch(SHARDED_LAUNCH[mode], prompts_file, tiny_dir, out, port, script=script)
    assert max_weight_diff(out / "checkpoint-2", ddp_run / "checkpoint-2") <= 5e-5  # steps move weights ~1e-3
    if mode != "zero2":
        resumed = tmp_path / "resumed"
        _launch(SHARDED_LAUNCH[mode], prompts_file, tiny_dir, resumed, port + 1, "--max_steps", "1", script=script)
        done = _launch(SHARDED_LAUNCH[mode], prompts_file, tiny_dir, resumed, port + 2, "--resume_from_checkpoint",
                       str(resumed / "checkpoint-1"), script=script)
        assert "resumed from" in done.stdout
        assert max_weight_diff(resumed / "checkpoint-2", out / "checkpoint-2") <= 1e-6
    if mode == "zero3":  # the local simulator is loaded whole although the policy loads partitioned
        local = tmp_path / "local-simulator"
        _launch(SHARDED_LAUNCH[mode], prompts_file, tiny_dir, local, port + 3, "--max_steps", "1", "--simulator",
                "local", "--simulator_max_new_tokens", "6", script=script)
        assert json.loads((local / "metrics.jsonl").read_text())["simulator/requests"] == 2


def test_input_errors_come_before_training(prompts_file, tmp_path, capsys, monkeypatch):
    assert main(_args(prompts_file, tmp_path / "a", "--style", "nope")) == 2
    assert "unknown style 'nope'" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"prompt": 3}\n')
    assert main(_args(bad, tmp_path / "b")) == 2
    assert "bad.jsonl:2: field 'prompt' must be a string" in capsys.readouterr().err
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    args = _args(prompts_file, tmp_path / "c", "--simulator", "claude")
    args[args.index("--model_name_or_path") + 1] = "/no/such/model"  # would fail later if the key check did not
    assert main(args) == 2
    assert "ANTHROPIC_API_KEY" in capsys.readouterr().err


def _script(name, *args, **env):
    base = {k: v for k, v in os.environ.items() if k not in ("SCRATCH", "WORLD_SIZE", "ANTHROPIC_API_KEY")}
    base["SDPO_BIN"] = str(Path(sys.executable).parent / "sdpo")
    return subprocess.run(["bash", f"scripts/{name}", *args], capture_output=True, text=True, cwd=ROOT,
                          env={**base, **env}, timeout=300)


def test_online_scripts_dry_run_defaults_and_masking():
    done = _script("train_online_sdpo_tldr.sh", "--dry-run", CUDA_VISIBLE_DEVICES="0,1,2,3")  # WORLD_SIZE: 4 GPUs
    assert done.returncode == 0, done.stderr
    for part in ("--num_processes 4", "--model_name_or_path Qwen/Qwen3-4B", "--simulator_model Qwen/Qwen3-4B",
                 "--style concise_casual_beginner", "--learning_rate 5e-6", "--per_device_train_batch_size 4",
                 "--gradient_accumulation_steps 1", "--output_dir ./runs/sdpo-tldr-runs/"):
        assert part in done.stdout, part
    secret = "sk-ant-DO-NOT-PRINT"
    done = _script("train_online_sdpo.sh", "--dry-run", ANTHROPIC_API_KEY=secret, WORLD_SIZE="1", SCRATCH="/s",
                   STYLE="poetic")
    assert done.returncode == 0, done.stderr
    assert secret not in done.stdout + done.stderr and "ANTHROPIC_API_KEY=****** (set, masked)" in done.stdout
    for part in ("--model_name_or_path Qwen/Qwen3-8B", "--simulator claude", "--style poetic",
                 "--per_device_train_batch_size 2", "--gradient_accumulation_steps 4", "--output_dir /s/sdpo-runs/"):
        assert part in done.stdout, part
    assert "accelerate" not in done.stdout
    done = _script("train_online_sdpo.sh", TRAIN_JSONL=str(ROOT / "README.md"))
    assert done.returncode == 2 and "ANTHROPIC_API_KEY is not set" in done.stderr


def test_prepare_scripts_and_a_short_scripted_run(tmp_path):
    done = _script("prepare_data_tldr.sh", INPUT_FILE="sample", OUTPUT_DIR=str(tmp_path / "tldr"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert len((tmp_path / "tldr" / "train.jsonl").read_text().splitlines()) == 37
    done = _script("prepare_data_helpsteer.sh", INPUT_FILE="sample", OUTPUT_DIR=str(tmp_path / "hs"))
    assert done.returncode == 0 and len((tmp_path / "hs" / "validation.jsonl").read_text().splitlines()) == 5
    done = _script("train_online_sdpo_tldr.sh", "--simulator", "rule", "--max_new_tokens", "4", "--summary_prompts", "0",
                   "--progress", "false", TRAIN_JSONL=str(tmp_path / "tldr" / "train.jsonl"), WORLD_SIZE="1",
                   MODEL_NAME_OR_PATH="tiny-random", USER_MODEL_NAME_OR_PATH="tiny-random", MAX_STEPS="1", BS="2",
                   OUTPUT_DIR=str(tmp_path / "run"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "run" / "checkpoint-1" / "model.safetensors").is_file()


def test_prepare_prompt_errors_are_clean(tmp_path, capsys):
    bad = tmp_path / "rows.jsonl"
    bad.write_text('{"info": {"post": "fine"}}\n{"nothing": 1}\n')
    assert main(["prepare", "tldr", "--input_file", str(bad), "--output", str(tmp_path / "o")]) == 2
    assert "row 1: expected an 'info' object" in capsys.readouterr().err
    other = tmp_path / "rows.txt"
    other.write_text("x")
    assert main(["prepare", "helpsteer2", "--input_file", str(other)]) == 2
    assert "unsupported format '.txt'" in capsys.readouterr().err


def test_metrics_go_to_trackio_by_default(prompts_file, tmp_path):
    import sqlite3
    import uuid

    run_name = f"trackio-test-{uuid.uuid4().hex[:8]}"  # the run is named after its output folder
    assert main(_args(prompts_file, tmp_path / run_name, "--max_steps", "2", "--save_steps", "2")) == 0
    db = Path(os.environ["TRACKIO_DIR"]) / "sdpo.db"  # set by conftest before trackio was imported
    rows = sqlite3.connect(db).execute(
        "select step, metrics from metrics where run_name = ? order by step", (run_name,)).fetchall()
    logged = {step: json.loads(blob) for step, blob in rows}
    assert sorted(logged) == [1, 2]
    saved = [json.loads(line) for line in (tmp_path / run_name / "metrics.jsonl").read_text().splitlines()]
    assert logged[2]["signal_abs_mean"] == pytest.approx(saved[1]["signal_abs_mean"])


def test_eos_signal_is_logged_and_can_be_left_out_of_the_loss(prompts_file, tmp_path, monkeypatch):
    import sdpo.trainers.online as online

    def fixed_generate(model, tokenizer, contexts, **kwargs):  # two responses that end, one that does not
        eos = tokenizer.eos_token_id
        rows = [[300, 301, eos], [302, eos], [303, 304, 305]][: len(contexts)]
        return rows, [tokenizer.decode(r, skip_special_tokens=True) for r in rows]

    monkeypatch.setattr(online, "generate", fixed_generate)
    for mask, expected_tokens in (("false", 8), ("true", 6)):
        out = tmp_path / mask
        args = _args(prompts_file, out, "--max_steps", "1", "--per_device_train_batch_size", "3",
                     "--summary_prompts", "0", "--mask_eos_advantage", mask, "--report_to", "none")
        assert main(args) == 0
        metrics = json.loads((out / "metrics.jsonl").read_text())
        assert metrics["ended_fraction"] == pytest.approx(2 / 3)
        assert metrics["eos_signal_mean"] != 0.0
        assert metrics["response_tokens"] == expected_tokens  # tokens that carry an advantage in the loss


def test_one_rollout_pass_per_optimizer_step(prompts_file, tmp_path, monkeypatch):
    """With gradient accumulation, the policy and the simulator see the whole step's prompts at once;
    the micro-batches still cover the data exactly once."""
    import sdpo.trainers.online as online
    from sdpo.data.prompts import load_prompts
    from sdpo.feedback.simulators import RuleUserSimulator

    real_generate, real_followups = online.generate, RuleUserSimulator._followups
    for extra, expected_rows in (((), [4, 4]), (("--generation_batch_size", "3"), [3, 1, 3, 1])):
        rows, simulated = [], []
        monkeypatch.setattr(online, "generate", lambda m, t, c, **k: rows.append(len(c)) or real_generate(m, t, c, **k))
        monkeypatch.setattr(RuleUserSimulator, "_followups",
                            lambda self, p, r: simulated.append(list(p)) or real_followups(self, p, r))
        out = tmp_path / f"run{len(extra)}"
        args = _args(prompts_file, out, "--max_steps", "2", "--gradient_accumulation_steps", "2",
                     "--summary_prompts", "0", "--report_to", "none", *extra)
        assert main(args) == 0
        assert rows == expected_rows
        assert [len(p) for p in simulated] == [4, 4]  # one simulator call per optimizer step
        # 8 prompts, 2 per micro-step, 4 micro-steps: each prompt exactly once
        assert sorted(p for call in simulated for p in call) == sorted(p.text for p in load_prompts(prompts_file))
        metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert all(m["time/generate"] > 0 and m["time/step"] >= m["time/generate"] + m["time/update"]
                   for m in metrics)


def test_long_contexts_are_counted_and_warned(prompts_file, tmp_path):
    out = tmp_path / "short"
    with pytest.warns(UserWarning, match="longer than max_context_tokens=64"):
        assert main(_args(prompts_file, out, "--max_steps", "1", "--max_context_tokens", "64",
                          "--summary_prompts", "0")) == 0
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert row["contexts_truncated"] >= 2  # both prompts' student contexts, and their teacher contexts


def test_simulator_retry_options_reach_the_api_simulator(monkeypatch):
    from sdpo.trainers.online import OnlineSDPOConfig, build_simulator

    monkeypatch.setenv("OPENAI_API_KEY", "sk-fake")
    cfg = OnlineSDPOConfig(train_jsonl="x", simulator="openai", simulator_base_url="http://127.0.0.1:9/v1",
                           simulator_model="m", simulator_max_retries=2, simulator_timeout=5.0,
                           simulator_retry_backoff=0.1)
    sim = build_simulator(cfg)
    assert (sim.max_retries, sim.timeout, sim.retry_backoff) == (2, 5.0, 0.1)


def test_echo_rate_counts_answers_that_copy_the_teacher_template():
    from sdpo.templates import get_template
    from sdpo.trainers.online import echoes_template

    t = get_template("hindsight")
    assert echoes_template(t, "Summarize this.", "Sure. Let it guide your answer to the request above: ...")
    assert echoes_template(t, "Summarize this.", "--- HINDSIGHT --- the user wants short")
    assert not echoes_template(t, "Summarize this.", "Here is a short summary of the text.")
    # wording the prompt itself has is not an echo
    assert not echoes_template(t, "Let it guide your answer to the request, please.", "Let it guide your answer to the request")
    r = get_template("hindsight-revise")
    assert echoes_template(r, "Q", "The user's reply to an earlier answer to this request was bad")


def test_rule_reward_mix_matches_float64_reference():
    """--rule_reward_weight w: every token's advantage gets w * (r_i - mean r) after centring."""
    torch.manual_seed(1)
    lengths, rewards, w = [4, 7, 2, 6], [1.0, 0.0, 0.0, 1.0], 0.7
    student = [torch.randn(n, requires_grad=True) for n in lengths]
    teacher = [torch.randn(n) for n in lengths]
    old = [s.detach() + 0.2 * torch.randn(len(s)) for s in student]
    base = sum(rewards) / len(rewards)
    scalar = [w * (r - base) for r in rewards]
    loss, stats = advantage_pg_loss(student, teacher, centering="sequence", old=old, ppo_clip=0.2, scalar=scalar)
    loss.backward()
    total = torch.zeros((), dtype=torch.float64)
    grads = []
    for s, q, o, c in zip(student, teacher, old, scalar):
        s64 = s.detach().double().requires_grad_(True)
        a = q.double() - s64.detach()
        a = a - a.mean() + c
        ratio = torch.exp(s64 - o.double())
        term = -torch.min(ratio * a, ratio.clamp(0.8, 1.2) * a).mean()
        total = total + term / len(lengths)
        grads.append(s64)
    total.backward()
    assert abs(loss.item() - total.item()) < 1e-5
    for s, s64 in zip(student, grads):
        assert torch.allclose(s.grad.double(), s64.grad, atol=1e-6)
    # the reported signal is still the hindsight signal alone
    plain = torch.cat([(q - s.detach()) for s, q in zip(student, teacher)])
    assert stats["signal_mean"] == pytest.approx(plain.mean().item(), abs=1e-6)


def test_rule_reward_weight_needs_a_rule_persona(tmp_path):
    from sdpo.trainers.online import OnlineSDPOConfig

    with pytest.raises(ValueError, match="has none"):
        OnlineSDPOConfig(style="poetic", rule_reward_weight=0.5, output_dir=str(tmp_path / "a"))
    with pytest.raises(ValueError, match=">= 0"):
        OnlineSDPOConfig(style="no_emojis", rule_reward_weight=-1, output_dir=str(tmp_path / "b"))
    assert OnlineSDPOConfig(style="concise_casual_beginner", rule_reward_weight=0.5,
                            output_dir=str(tmp_path / "c")).rule_reward_weight == 0.5


def test_rule_reward_run_logs_and_uses_rewards(prompts_file, tmp_path, monkeypatch):
    import sdpo.trainers.update as update

    seen = []
    original = update.advantage_pg_loss

    def spy(*a, **k):
        seen.append(k.get("scalar"))
        return original(*a, **k)

    monkeypatch.setattr(update, "advantage_pg_loss", spy)
    out = tmp_path / "mix"
    assert main(["train-online", "--train_jsonl", str(prompts_file), "--model_name_or_path", "tiny-random",
                 "--simulator", "rule", "--style", "concise_casual_beginner", "--per_device_train_batch_size", "4",
                 "--max_new_tokens", "6", "--max_steps", "1", "--rule_reward_weight", "0.5", "--output_dir", str(out),
                 "--summary_prompts", "0", "--progress", "false", "--report_to", "none"]) == 0
    assert seen and all(s is not None and len(s) == 4 for s in seen)
    assert all(abs(sum(s)) < 1e-9 for s in seen)  # baselined by the batch mean
