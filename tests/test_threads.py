"""sdpo.threads: the thread count and wait policy chosen before torch loads (issue 27 item 0).

Speed is measured by benchmarks/bench_threads.py, not asserted here."""

import json
import os
import subprocess
import sys

import pytest

from sdpo import threads


def test_idle_cores_are_used_and_busy_ones_left_alone():
    assert threads.choose(environ={}, cores=8, load=0.2).threads == 8
    assert threads.choose(environ={}, cores=8, load=3.4).threads == 5
    assert threads.choose(environ={}, cores=2, load=2.6).threads == 1  # never 0


def test_processes_of_a_launch_share_the_cores():
    choice = threads.choose(environ={"LOCAL_WORLD_SIZE": "2"}, cores=8, load=0.0)
    assert choice.threads == 4 and "2 processes" in choice.line()


def test_overrides_win_in_order():
    env = {"OMP_NUM_THREADS": "3", "SDPO_NUM_THREADS": "5"}
    assert threads.choose(flag=7, environ=env, cores=8, load=0.0).threads == 7
    assert threads.choose(environ=env, cores=8, load=0.0).source == "SDPO_NUM_THREADS"
    assert threads.choose(environ={"OMP_NUM_THREADS": "3"}, cores=8, load=0.0).threads == 3
    assert threads.choose(environ={"OMP_NUM_THREADS": "junk"}, cores=8, load=0.0).source == "auto"
    assert threads.choose(environ={"OMP_WAIT_POLICY": "ACTIVE"}, cores=2, load=0).wait_policy == "ACTIVE"


def test_the_line_says_what_was_chosen():
    line = threads.choose(environ={}, cores=2, load=1.7).line()
    assert line.startswith("threads: 1 (chosen: 2 cores, 1.7 busy") and "OMP_WAIT_POLICY=PASSIVE" in line
    assert "from --num_threads" in threads.choose(flag=2, environ={}, cores=2).line()


def test_flag_is_taken_out_of_the_arguments():
    assert threads.take_flag(["--model", "x", "--num_threads", "2", "--json"]) == (2, ["--model", "x", "--json"])
    assert threads.take_flag(["--num_threads=3"]) == (3, [])
    assert threads.take_flag(["--model", "x"]) == (None, ["--model", "x"])
    for bad in (["--num_threads", "0"], ["--num_threads"], ["--num_threads=two"]):
        with pytest.raises(ValueError, match="--num_threads"):
            threads.take_flag(bad)


def test_configure_before_torch_sets_the_environment_torch_reads():
    code = ("import os, json\nfrom sdpo.threads import configure\nc = configure(flag=1)\nimport torch\n"
            "print(json.dumps([torch.get_num_threads(), os.environ['OMP_NUM_THREADS'], os.environ['OMP_WAIT_POLICY']]))")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [1, "1", "PASSIVE"]


def test_inside_a_program_with_torch_loaded_nothing_changes(monkeypatch):
    import torch

    before = torch.get_num_threads()
    env = {}
    choice = threads.configure(environ=env)
    assert choice.source == "the calling program" and torch.get_num_threads() == before and env == {}


def test_sdpo_command_prints_the_choice_first(capsys, monkeypatch):
    import torch

    from sdpo.cli import main

    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY"):
        monkeypatch.setenv(name, os.environ.get(name, ""))  # restored after the test
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # this test process keeps its threads
    assert main(["signal", "--model", "tiny-random", "--prompt", "a", "--response", "b", "--followup", "c",
                 "--num_threads", "1"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err and err[0].startswith("threads: 1 (from --num_threads")


def test_bad_thread_count_is_one_error_line(capsys):
    from sdpo.cli import main

    assert main(["signal", "--num_threads", "-1"]) == 2
    assert capsys.readouterr().err.strip() == "sdpo signal: error: --num_threads: must be a whole number >= 1, got -1"


def test_busy_cores_are_counted_now_not_by_the_lagging_load_average(tmp_path, monkeypatch):
    """The other runnable processes now (procs_running minus this one), averaged over the reads; the
    1-minute load average only where /proc/stat cannot be read."""
    stat = tmp_path / "stat"
    stat.write_text("cpu  1 2 3\nprocs_running 3\nprocs_blocked 0\n")
    assert threads.running_now(samples=3, interval=0, stat_path=str(stat)) == 2.0
    assert threads.running_now(samples=2, interval=0, stat_path=str(tmp_path / "missing")) is None
    stat.write_text("cpu  1 2 3\n")
    assert threads.running_now(samples=1, interval=0, stat_path=str(stat)) is None
    # a pipeline's previous command just ended: the load average still says 1, nothing runs now
    monkeypatch.setattr(threads, "running_now", lambda: 0.0)
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (1.0, 1.0, 1.0))
    assert threads.choose(environ={}, cores=2).threads == 2
    monkeypatch.setattr(threads, "running_now", lambda: 1.0)  # another process computes now
    assert threads.choose(environ={}, cores=2).threads == 1
    monkeypatch.setattr(threads, "running_now", lambda: None)  # no /proc/stat: the load average
    assert threads.choose(environ={}, cores=2).threads == 1
