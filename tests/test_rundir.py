"""One run, one directory; atomic checkpoints; resume after Ctrl-C and kill -9 (sdpo.rundir)."""

import json
import os
import random
import re
import shlex
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
from safetensors.torch import load_file

from sdpo import rundir
from sdpo.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _args(prompts_file, out, *extra):
    return ["train-online", "--train_jsonl", str(prompts_file), "--model_name_or_path", "tiny-random",
            "--simulator", "rule", "--style", "no_emojis", "--per_device_train_batch_size", "2",
            "--max_new_tokens", "8", "--learning_rate", "1e-3", "--output_dir", str(out), "--summary_prompts", "0",
            "--progress", "false", "--report_to", "none", *extra]


def _env():
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"  # lines printed before a kill -9 are not lost in a buffer
    return env


def _cli(args):
    return [sys.executable, "-m", "sdpo.cli", *args]


def _steps(out):
    return [json.loads(line)["step"] for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def _weights(path):
    return load_file(Path(path) / "model.safetensors")


def _max_diff(a, b):
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


# ---------------------------------------------------------------------------- pure helpers
def test_resume_command_replaces_resume_and_drops_overwrite():
    argv = ["/x/bin/sdpo", "train-online", "--train_jsonl", "a b.jsonl", "--overwrite_output_dir", "true",
            "--resume_from_checkpoint", "/r/checkpoint-3", "--max_steps", "4", "--overwrite_output_dir"]
    assert rundir.resume_command(argv) == ("sdpo train-online --train_jsonl 'a b.jsonl' --max_steps 4 "
                                           "--resume_from_checkpoint last")
    assert rundir.restart_command(["/x/sdpo", "train-online", "--resume_from_checkpoint=last", "--seed", "1"]) == \
        "sdpo train-online --seed 1 --overwrite_output_dir true"
    cmd = shlex.split(rundir.resume_command(["/repo/src/sdpo/cli.py", "train-online", "--seed", "1"]))
    assert cmd == [sys.executable, "-m", "sdpo.cli", "train-online", "--seed", "1", "--resume_from_checkpoint", "last"]


def test_complete_checkpoints_truncate_metrics_and_rotation(tmp_path):
    for step in (1, 2, 10):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({"step": step}))
    (tmp_path / "checkpoint-12").mkdir()  # no state: a write that did not finish
    (tmp_path / "checkpoint-11").mkdir()
    (tmp_path / "checkpoint-11" / "trainer_state.json").write_text('{"step": 1')  # cut mid-write
    (tmp_path / "checkpoint-13.tmp").mkdir()
    with pytest.warns(UserWarning, match=r"checkpoint-11, checkpoint-12, checkpoint-13.tmp"):
        found = rundir.complete_checkpoints(tmp_path)
    assert [p.name for p in found] == ["checkpoint-1", "checkpoint-2", "checkpoint-10"]  # numeric order
    with pytest.warns(UserWarning):
        assert rundir.last_checkpoint(tmp_path).name == "checkpoint-10"
    assert [p.name for p in rundir.rotate_checkpoints(tmp_path, 2)] == ["checkpoint-1"]
    assert not (tmp_path / "checkpoint-1").exists() and (tmp_path / "checkpoint-12").exists()
    assert rundir.rotate_checkpoints(tmp_path, 0) == []

    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps({"step": s, "loss": s / 10}) + "\n" for s in (1, 2, 3, 4)) + '{"step": 5, "lo')
    assert rundir.truncate_metrics(metrics, 2) == 3
    assert [json.loads(x) for x in metrics.read_text().splitlines()] == [{"step": 1, "loss": 0.1},
                                                                        {"step": 2, "loss": 0.2}]
    tmp = rundir.temporary_checkpoint(tmp_path, 2)
    tmp.mkdir()
    (tmp / "trainer_state.json").write_text(json.dumps({"step": 2, "new": True}))
    rundir.commit_checkpoint(tmp, tmp_path / "checkpoint-2")  # replaces the older checkpoint-2
    assert json.loads((tmp_path / "checkpoint-2" / "trainer_state.json").read_text())["new"] and not tmp.exists()


def test_output_path_errors_are_one_line_before_the_model(prompts_file, tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for command in ("train-online", "train-offline"):
        args = _args(prompts_file, a_file) if command == "train-online" else [
            "train-offline", "--train_jsonl", str(prompts_file), "--output_dir", str(a_file)]
        args[args.index("--output_dir") + 1] = str(a_file / "run")
        args += ["--model_name_or_path", "/no/such/model"]  # would fail later if the path check did not
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "is a file, not a directory" in err, err
    assert main(_args(prompts_file, tmp_path / "r", "--overwrite_output_dir", "true",
                      "--resume_from_checkpoint", "last")) == 2
    assert "exclude each other" in capsys.readouterr().err
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        assert main(_args(prompts_file, ro / "run")) == 2
        assert "is not writable" in capsys.readouterr().err


# ---------------------------------------------------------------------------- one run, one directory
HOLD_LOCK = ("import fcntl, os, sys, time\n"
             "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
             "fcntl.flock(fd, fcntl.LOCK_EX)\n"
             "os.write(fd, str(os.getpid()).encode())\n"
             "print('locked', flush=True)\n"
             "time.sleep(120)\n")


def test_second_run_into_a_locked_directory_refuses(prompts_file, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out / rundir.LOCK_NAME)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(_args(prompts_file, out, "--max_steps", "1")) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"in use by another run (pid {holder.pid})" in err, err
        offline = ["train-offline", "--train_jsonl", str(prompts_file), "--output_dir", str(out),
                   "--report_to", "none"]
        assert main(offline) == 2
        assert "in use by another run" in capsys.readouterr().err
        assert not (out / "metrics.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()
    # the lock dies with its holder (no stale lock after a kill)
    assert main(_args(prompts_file, out, "--max_steps", "1")) == 0


def test_used_directory_refuses_then_overwrite_or_resume(prompts_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_args(prompts_file, out, "--max_steps", "2", "--save_steps", "1")) == 0
    # the model is stored once per checkpoint: in checkpoint-N/, not again in accelerate_state/
    assert (out / "checkpoint-1" / "model.safetensors").is_file()
    assert (out / "checkpoint-1" / "accelerate_state" / "optimizer.bin").is_file()
    assert not list((out / "checkpoint-1" / "accelerate_state").glob("model*"))
    capsys.readouterr()
    assert main(_args(prompts_file, out, "--max_steps", "3")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "--resume_from_checkpoint last" in err and "--overwrite_output_dir" in err and "checkpoint-1" in err
    assert _steps(out) == [1, 2]  # untouched

    # start over: the old checkpoints and metrics are gone
    assert main(_args(prompts_file, out, "--max_steps", "1", "--overwrite_output_dir", "true")) == 0
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1"] and _steps(out) == [1]
    # continue: from checkpoint-1 to step 4, keeping the newest 2 checkpoints
    assert main(_args(prompts_file, out, "--max_steps", "4", "--save_steps", "1", "--save_total_limit", "2",
                      "--resume_from_checkpoint", "last")) == 0
    assert "resumed from" in capsys.readouterr().out
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-4"]
    assert _steps(out) == [1, 2, 3, 4]


def test_incomplete_checkpoint_is_skipped_and_save_only_model(prompts_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_args(prompts_file, out, "--max_steps", "2", "--save_steps", "1")) == 0
    (out / "checkpoint-3").mkdir()  # killed during Trainer-style write: no trainer_state.json
    (out / "checkpoint-3" / "model.safetensors").write_bytes(b"partial")
    (out / "checkpoint-4.tmp" / "accelerate_state").mkdir(parents=True)
    capsys.readouterr()
    with pytest.warns(UserWarning, match="incomplete checkpoint"):
        assert main(_args(prompts_file, out, "--max_steps", "4", "--save_steps", "1",
                          "--resume_from_checkpoint", "last")) == 0
    assert f"resumed from {out / 'checkpoint-2'} at step 2" in capsys.readouterr().out
    assert _steps(out) == [1, 2, 3, 4] and not (out / "checkpoint-4.tmp").exists()
    assert rundir.is_complete(out / "checkpoint-3")  # replaced by the resumed run's own checkpoint-3

    small = tmp_path / "small"
    assert main(_args(prompts_file, small, "--max_steps", "2", "--save_steps", "1", "--save_only_model", "true")) == 0
    assert (small / "checkpoint-2" / "model.safetensors").is_file()
    assert not (small / "checkpoint-2" / "accelerate_state").exists()
    capsys.readouterr()
    assert main(_args(prompts_file, small, "--max_steps", "3", "--resume_from_checkpoint", "last")) == 2
    from tests.conftest import error_lines

    err = capsys.readouterr().err
    assert "--save_only_model" in err and "--model_name_or_path" in err and len(error_lines(err)) == 1


# ---------------------------------------------------------------------------- interruptions
def _wait_for(predicate, proc, timeout=240, poll=0.05):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(poll)
    raise AssertionError("timed out")


def _rows(out):
    path = Path(out) / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.is_file() else 0


def test_ctrl_c_then_the_printed_command_resumes_to_the_end(prompts_file, tmp_path):
    out = tmp_path / "run"
    args = _args(prompts_file, out, "--max_steps", "6", "--save_steps", "1", "--summary_prompts", "2",
                 "--summary_max_new_tokens", "4")
    proc = subprocess.Popen(_cli(args), cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert _wait_for(lambda: _rows(out) >= 2, proc), proc.communicate()[1][-3000:]
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 130, stderr[-3000:]
    assert "SIGINT: stopping after the current step" in stderr
    stopped = re.search(r"stopped by SIGINT after step (\d+) of 6; last complete checkpoint: (\S+) \(step (\d+)\)",
                        stderr)
    assert stopped, stderr[-3000:]
    assert stopped.group(1) == stopped.group(3) and int(stopped.group(1)) < 6  # every step saved (save_steps 1)
    assert rundir.is_complete(stopped.group(2))
    command = re.search(r"resume with: (.+)", stderr).group(1)
    assert command.endswith("--resume_from_checkpoint last")
    done = subprocess.run(shlex.split(command), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"at step {stopped.group(1)}" in done.stdout
    assert _steps(out) == [1, 2, 3, 4, 5, 6]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 6 and "heldout_persona_score_before" in summary  # the before part survived
    # the first-steps averages come from the rows written before the interruption
    first = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][:2]
    assert summary["first_steps_persona_rule_score"] == pytest.approx(
        sum(m["persona_rule_score"] for m in first) / 2)


def _newest(out):
    done = rundir.complete_checkpoints(out, warn=False)
    return rundir.checkpoint_step(done[-1]) if done else 0


def test_kill_9_at_random_moments_resumes_to_the_same_run(prompts_file, tmp_path):
    common = ("--max_steps", "8", "--save_steps", "1", "--max_new_tokens", "6")
    straight = tmp_path / "straight"
    assert main(_args(prompts_file, straight, *common)) == 0
    out = tmp_path / "killed"
    rng = random.Random(0)
    kills = during_write = resumed = 0
    for attempt in range(5):
        done = rundir.complete_checkpoints(out, warn=False)
        # the same command every time: with no complete checkpoint yet, 'last' starts from the beginning
        extra = ("--resume_from_checkpoint", "last")
        proc = subprocess.Popen(_cli(_args(prompts_file, out, *common, *extra)), cwd=ROOT, env=_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        rows = _rows(out) if done else 0
        if attempt % 2 == 0:  # in the middle of a checkpoint write, one checkpoint later than the last
            last = rundir.checkpoint_step(done[-1]) if done else 0
            hit = _wait_for(lambda: any(out.glob("checkpoint-*.tmp")) and _newest(out) > last, proc, poll=0.002)
            if hit:
                time.sleep(rng.uniform(0, 0.05))
        else:  # anywhere in a step, after one more metrics row
            hit = _wait_for(lambda: _rows(out) > rows, proc)
            if hit:
                time.sleep(rng.uniform(0, 0.4))
        proc.kill()
        stdout, stderr = proc.communicate(timeout=60)
        if done and "resumed from" in stdout:  # it resumed from the newest complete checkpoint
            assert f"resumed from {done[-1]} at step {rundir.checkpoint_step(done[-1])}" in stdout
            resumed += 1
        during_write += any(out.glob("checkpoint-*.tmp"))  # a half-written checkpoint was left behind
        if proc.returncode == 0:
            break
        assert proc.returncode == -9, stderr[-3000:]
        kills += 1
    assert kills >= 3 and during_write >= 1 and resumed >= 2, (kills, during_write, resumed)
    extra = ("--resume_from_checkpoint", "last")
    final = subprocess.run(_cli(_args(prompts_file, out, *common, *extra)), cwd=ROOT, env=_env(),
                           capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr[-3000:]
    assert _max_diff(_weights(out / "checkpoint-8"), _weights(straight / "checkpoint-8")) <= 1e-6
    a = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in b] == list(range(1, 9))
    assert all(abs(x["loss"] - y["loss"]) <= 1e-6 for x, y in zip(a, b))
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-6", "checkpoint-7", "checkpoint-8"]


def test_killed_before_the_first_checkpoint_the_same_command_or_resume_last_starts_over(prompts_file, tmp_path,
                                                                                        capsys):
    out = tmp_path / "run"
    args = _args(prompts_file, out, "--max_steps", "6", "--save_steps", "5")
    proc = subprocess.Popen(_cli(args), cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert _wait_for(lambda: _rows(out) >= 1, proc), proc.communicate()[1][-3000:]
    proc.kill()  # kill -9 after a step, before the first checkpoint (step 5)
    proc.communicate(timeout=60)
    assert proc.returncode == -9 and not rundir.complete_checkpoints(out, warn=False)
    (out / "checkpoint-5.tmp").mkdir()  # and as if a checkpoint write had been cut short too
    short = _args(prompts_file, out, "--max_steps", "2", "--save_steps", "5")
    assert main(short) == 0  # the same command again (shorter, to keep the test fast)
    err = capsys.readouterr().err
    assert f"--output_dir {out} holds a run stopped before its first complete checkpoint (" in err
    assert "starting over" in err and _steps(out) == [1, 2]
    assert not (out / "checkpoint-5.tmp").exists()

    # --resume_from_checkpoint last with no complete checkpoint: from the beginning, said in one line
    again = tmp_path / "again"
    again.mkdir()
    (again / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n')
    assert main(_args(prompts_file, again, "--max_steps", "1", "--resume_from_checkpoint", "last")) == 0
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if "no complete checkpoint" in line]
    assert lines == [f"--resume_from_checkpoint last: no complete checkpoint in {again} yet (metrics.jsonl of a "
                     "run stopped before its first save removed); starting from the beginning"]
    assert "resumed from" not in captured.out and _steps(again) == [1]
    # in a fresh directory too (nothing to say about removed files)
    assert main(_args(prompts_file, tmp_path / "fresh", "--max_steps", "1", "--resume_from_checkpoint", "last")) == 0
    assert "no complete checkpoint in" in capsys.readouterr().err

    # a finished run is still protected: the plain re-run refuses as before
    assert main(short) == 2
    assert "holds another run" in capsys.readouterr().err


# ---------------------------------------------------------------------------- offline
@pytest.fixture(scope="module")
def records_file(tmp_path_factory):
    from sdpo.data.interactions import write_interactions
    from sdpo.data.logs import extract, sample_path

    rows = [json.loads(line) for line in sample_path("wildfeedback").read_text(encoding="utf-8").splitlines()]
    records, _ = extract(rows, "wildfeedback")
    return write_interactions(records[:12], tmp_path_factory.mktemp("data") / "records.jsonl")


def test_offline_used_dir_refuses_and_resume_skips_an_incomplete_checkpoint(records_file, tmp_path, capsys):
    from sdpo.trainers.offline import OfflineSDPOConfig, resolve_resume, train_offline

    out = tmp_path / "offline"
    common = dict(train_jsonl=str(records_file), model_name_or_path="tiny-random", per_device_train_batch_size=2,
                  gradient_accumulation_steps=1, learning_rate=1e-3, save_steps=1, seed=0, disable_tqdm=True,
                  report_to="none", output_dir=str(out))
    train_offline(OfflineSDPOConfig(max_steps=2, **common))
    args = ["train-offline", "--train_jsonl", str(records_file), "--model_name_or_path", "tiny-random",
            "--output_dir", str(out), "--report_to", "none", "--max_steps", "3"]
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--resume_from_checkpoint last" in err and "--overwrite_output_dir" in err

    (out / "checkpoint-2" / "trainer_state.json").unlink()  # as if killed before Trainer wrote its state
    config = OfflineSDPOConfig(max_steps=3, resume_from_checkpoint="last", **common)
    with pytest.warns(UserWarning, match="checkpoint-2"):
        assert Path(resolve_resume(config)).name == "checkpoint-1"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = train_offline(config)
    assert trainer.state.global_step == 3
    logged = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    assert logged == [1, 2, 3]  # the row of step 2 written before was dropped, then written again

    # --overwrite_output_dir clears the old run's checkpoints and metrics
    assert main([*args[:-2], "--max_steps", "1", "--save_steps", "1", "--overwrite_output_dir", "true"]) == 0
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1"]
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()
            if "loss" in json.loads(line)] == [1]


# ---------------------------------------------------------------------------- full disk
FULL_DISK_DRIVER = r'''
import json, os, shlex, shutil, subprocess, sys
from pathlib import Path

disk, args = Path(sys.argv[1]), json.loads(sys.argv[2])
out = disk / "run"
cli = [sys.executable, "-m", "sdpo.cli", *args, "--output_dir", str(out), "--save_steps", "1", "--save_total_limit", "1"]

def run(cmd):
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    return {"rc": done.returncode, "stderr": done.stderr}

first = run([*cli, "--max_steps", "1"])
size = sum(f.stat().st_size for f in (out / "checkpoint-1").rglob("*") if f.is_file())
ballast = disk / "ballast"
with open(ballast, "wb") as fh:  # leave room for half a checkpoint
    left = shutil.disk_usage(disk).free - size // 2
    while left > 0:
        n = min(left, 1 << 20)
        fh.write(b"\0" * n)
        left -= n
full = run([*cli, "--max_steps", "3", "--resume_from_checkpoint", "last"])
after_full = sorted(p.name for p in out.iterdir())
ballast.unlink()  # the user frees space, then runs the command the error printed
line = full["stderr"].strip().splitlines()[-1] if full["stderr"].strip() else ""
again = run(shlex.split(line.split("run again: ", 1)[1])) if "run again: " in line else {"rc": None, "stderr": ""}
metrics = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
print(json.dumps({"first": first, "full": full, "after_full": after_full, "again": again,
                  "steps": [m["step"] for m in metrics if "loss" in m],
                  "final": sorted(p.name for p in out.glob("checkpoint-*"))}))
'''


def _full_disk_run(tmp_path, args):
    import shutil as _shutil

    bwrap = _shutil.which("bwrap")
    if bwrap is None:
        pytest.skip("bubblewrap is not installed (needed for a small tmpfs in a mount namespace)")
    disk = tmp_path / "disk"
    disk.mkdir()
    probe = subprocess.run([bwrap, "--dev-bind", "/", "/", "--size", "1000000", "--tmpfs", str(disk), "true"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"this machine does not allow a tmpfs in a mount namespace: {probe.stderr.strip()}")
    driver = tmp_path / "driver.py"
    driver.write_text(FULL_DISK_DRIVER)
    done = subprocess.run([bwrap, "--dev-bind", "/", "/", "--size", str(120 * 2**20), "--tmpfs", str(disk),
                           sys.executable, str(driver), str(disk), json.dumps(args)],
                          capture_output=True, text=True, timeout=1200, env=_env(), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _check_full_disk(result):
    assert result["first"]["rc"] == 0, result["first"]["stderr"][-2000:]
    full = result["full"]
    assert full["rc"] == 2, full["stderr"][-3000:]
    last = full["stderr"].strip().splitlines()[-1]
    assert last.startswith("sdpo train-") and "no space left on the device while writing checkpoint-2" in last, last
    assert "Traceback" not in full["stderr"], full["stderr"][-3000:]
    assert "checkpoint-1" in last and "--resume_from_checkpoint last" in last
    # nothing half-written that resume would pick: only the complete checkpoint-1
    assert [n for n in result["after_full"] if n.startswith("checkpoint-")] == ["checkpoint-1"]
    assert result["again"]["rc"] == 0, result["again"]["stderr"][-3000:]
    assert result["steps"] == [1, 2, 3] and result["final"] == ["checkpoint-3"]


def test_full_disk_during_an_online_save_is_one_line_and_resume_works(prompts_file, tmp_path):
    args = _args(prompts_file, "unused")
    args = args[: args.index("--output_dir")] + args[args.index("--output_dir") + 2:]
    _check_full_disk(_full_disk_run(tmp_path, args))


def test_full_disk_during_an_offline_save_is_one_line_and_resume_works(records_file, tmp_path):
    args = ["train-offline", "--train_jsonl", str(records_file), "--model_name_or_path", "tiny-random",
            "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1", "--learning_rate", "1e-3",
            "--disable_tqdm", "true", "--seed", "0", "--report_to", "none"]
    _check_full_disk(_full_disk_run(tmp_path, args))


# ---------------------------------------------------------------------------- offline: the end of a run
def _offline_args(records_file, out, *extra):
    return ["train-offline", "--train_jsonl", str(records_file), "--model_name_or_path", "tiny-random",
            "--output_dir", str(out), "--report_to", "none", "--per_device_train_batch_size", "2",
            "--gradient_accumulation_steps", "1", "--learning_rate", "1e-3", "--warmup_steps", "0", "--seed", "0",
            "--save_steps", "1", "--disable_tqdm", "true", *extra]


def _checkpoint_steps(out):
    return sorted(rundir.checkpoint_step(p) for p in out.glob("checkpoint-*"))


def test_offline_resume_of_a_finished_run_trains_nothing(records_file, tmp_path, capsys):
    out = tmp_path / "offline"
    assert main(_offline_args(records_file, out, "--max_steps", "2")) == 0
    before = _weights(out)
    rows = (out / "metrics.jsonl").read_text()
    capsys.readouterr()
    assert main(_offline_args(records_file, out, "--max_steps", "2", "--resume_from_checkpoint", "last")) == 0
    printed = capsys.readouterr().out
    assert f"{out / 'checkpoint-2'} is at step 2 of 2: the run is done, nothing to train" in printed
    assert "done: 2 steps" in printed
    assert _checkpoint_steps(out) == [1, 2]  # no checkpoint-3
    assert _max_diff(_weights(out), before) == 0 and (out / "metrics.jsonl").read_text() == rows
    # --resume_from_checkpoint last before any complete checkpoint: from the beginning (offline too)
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "checkpoint-1").mkdir()  # a Trainer write cut before its trainer_state.json
    assert main(_offline_args(records_file, fresh, "--max_steps", "1", "--resume_from_checkpoint", "last")) == 0
    assert "no complete checkpoint in" in capsys.readouterr().err
    assert rundir.is_complete(fresh / "checkpoint-1")


KILL_AFTER_FINAL_SAVE = r"""
import json, os, signal, sys
from transformers import TrainerCallback
from sdpo.cli import parse_command_args
from sdpo.trainers.offline import OfflineSDPOConfig, train_offline

class KillAfterTheFinalSave(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):  # called once checkpoint-<step> is complete
        if state.global_step >= state.max_steps:
            os.kill(os.getpid(), signal.SIGKILL)

config = parse_command_args("train-offline", OfflineSDPOConfig, json.loads(sys.argv[1]))
train_offline(config, callbacks=[KillAfterTheFinalSave()])
"""


def test_offline_kill_9_right_after_the_final_save_ends_at_max_steps(records_file, tmp_path, capsys):
    straight = tmp_path / "straight"
    assert main(_offline_args(records_file, straight, "--max_steps", "3")) == 0
    out = tmp_path / "killed"
    args = _offline_args(records_file, out, "--max_steps", "3")
    proc = subprocess.run([sys.executable, "-c", KILL_AFTER_FINAL_SAVE, json.dumps(args[1:])], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-3000:]
    assert rundir.is_complete(out / "checkpoint-3") and not (out / "model.safetensors").exists()
    capsys.readouterr()
    for _ in range(2):  # resumed twice: still step 3, no step past the end
        assert main([*args, "--resume_from_checkpoint", "last"]) == 0
        assert "is at step 3 of 3: the run is done, nothing to train" in capsys.readouterr().out
        assert _checkpoint_steps(out) == [1, 2, 3]
        state = json.loads((out / "checkpoint-3" / rundir.STATE_NAME).read_text())
        assert state["global_step"] == 3
        assert _max_diff(_weights(out), _weights(straight)) <= 1e-6  # the final model, as an uninterrupted run
    logged = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    assert logged == [1, 2, 3]
