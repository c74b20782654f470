"""Multi-process runs fail readably: ``python -m sdpo.launch`` (accelerate launch underneath) ends a
failed run with the failing rank's one-line error, once, last, without the launcher's traceback."""

import os
import subprocess
import sys
from pathlib import Path

from sdpo.launch import summarize_failure

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "accelerate" / "multi_gpu.yaml"

RANK_SCRIPT = """
import os, sys, time
from sdpo.cli import main
rank = int(os.environ["RANK"])
mode = sys.argv[1]
if mode == "crash":
    if rank == 1:
        raise RuntimeError("boom on rank 1")
    time.sleep(120)  # the launcher stops this rank once rank 1 has failed
    sys.exit(0)
path = "/no/such/train.jsonl" if mode == "same" else f"/no/such/rank{rank}.jsonl"
sys.exit(main(["train-offline", "--train_jsonl", path, "--output_dir", sys.argv[2]]))
"""


def _launch(tmp_path, mode):
    script = tmp_path / "ranks.py"
    script.write_text(RANK_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "SDPO_LAUNCH_ERRORS")}
    return subprocess.run(
        [sys.executable, "-m", "sdpo.launch", "--config_file", str(CONFIG), "--num_processes", "2",
         "--main_process_port", "0", str(script), mode, str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )


def _lines(text):
    return [line for line in text.splitlines() if line.strip()]


def test_same_error_on_every_rank_is_printed_once_and_last(tmp_path):
    done = _launch(tmp_path, "same")
    assert done.returncode == 2, done.stderr
    lines = _lines(done.stderr)
    assert lines[-1] == "sdpo train-offline: error: /no/such/train.jsonl: no such file", done.stderr
    assert done.stderr.count("no such file") == 1, done.stderr  # the ranks handed it over, nobody printed it twice
    assert "Traceback" not in done.stderr and "ChildFailedError" not in done.stderr, done.stderr
    assert "exitcode" not in done.stderr, done.stderr  # torch's elastic agent log lines are silenced


def test_different_errors_name_their_ranks(tmp_path):
    done = _launch(tmp_path, "differ")
    assert done.returncode == 2, done.stderr
    assert _lines(done.stderr)[-2:] == [
        "rank 0: sdpo train-offline: error: /no/such/rank0.jsonl: no such file",
        "rank 1: sdpo train-offline: error: /no/such/rank1.jsonl: no such file",
    ], done.stderr
    assert "Traceback" not in done.stderr


def test_a_crashing_rank_keeps_its_traceback_and_is_named_last(tmp_path):
    done = _launch(tmp_path, "crash")
    assert done.returncode == 1, done.stderr
    assert "RuntimeError: boom on rank 1" in done.stderr  # the rank's own traceback: the bug's evidence
    assert _lines(done.stderr)[-1] == "sdpo.launch: error: rank 1 exited with code 1 (its traceback, if any, is above)"
    assert "ChildFailedError" not in done.stderr and "elastic/multiprocessing" not in done.stderr, done.stderr


def test_summary_rules():
    # one rank's error: named by rank unless it is rank 0
    assert summarize_failure({1: "e"}, {1: 2, 0: -15}) == (["rank 1: e"], 2)
    assert summarize_failure({0: "e"}, {0: 2}) == (["e"], 2)
    # killed ranks (negative codes) are not blamed when another rank failed
    assert summarize_failure({}, {0: -15, 1: 1}) == (["sdpo.launch: error: rank 1 exited with code 1 (its traceback, if any, is above)"], 1)
    lines, code = summarize_failure({}, {0: -9})
    assert lines == ["sdpo.launch: error: rank 0 was killed by signal 9 (its traceback, if any, is above)"] and code == 1
    assert summarize_failure({}, {})[1] == 1
