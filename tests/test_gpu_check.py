"""The GPU check (benchmarks/gpu/check.py) and the gpu-marked tests, on CPU: the script runs end to end in
its tiny mode and writes every field; the gpu tests import, collect and skip with their reason."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHECK = ROOT / "benchmarks" / "gpu" / "check.py"


def _cpu_env(**extra) -> dict:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    env.pop("SDPO_TEST_DEVICE", None)
    env.update(extra)
    return env


def _check_module():
    spec = importlib.util.spec_from_file_location("gpu_check", CHECK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_tests_import_collect_and_skip_without_cuda():
    collect = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "gpu", "-p",
                              "no:cacheprovider", "tests/test_gpu.py"], capture_output=True, text=True, cwd=ROOT,
                             env=_cpu_env(), timeout=300)
    assert collect.returncode == 0, collect.stdout[-3000:] + collect.stderr[-3000:]
    found = re.search(r"(\d+) tests? collected", collect.stdout)
    assert found and int(found.group(1)) >= 10, collect.stdout[-2000:]
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-m", "gpu", "-p", "no:cacheprovider",
                          "tests/test_gpu.py"], capture_output=True, text=True, cwd=ROOT, env=_cpu_env(), timeout=300)
    assert run.returncode == 0, run.stdout[-3000:]
    assert f"{found.group(1)} skipped" in run.stdout
    assert "needs CUDA" in run.stdout and "passed" not in run.stdout and "failed" not in run.stdout


def test_a_step_over_its_budget_is_stopped_and_the_total_budget_is_shared(tmp_path):
    check = _check_module()
    start = time.monotonic()
    result = check.run_step([sys.executable, "-c", "import time; print('started', flush=True); time.sleep(120)"],
                            seconds=2, env=_cpu_env(), log=tmp_path / "log")
    assert result["timed_out"] and time.monotonic() - start < 60
    assert "started" in (tmp_path / "log").read_text()
    assert check.step_status(result) == "timeout"
    clock = check.Clock(100.0)
    assert clock.allowed(40, later_steps=0) == 40
    assert 0 < clock.allowed(90, later_steps=1) <= 100 - check.MIN_STEP_S  # room kept for the step after
    assert check.step_status({"rc": 0, "timed_out": False}, rows=[{"status": "ok"}, {"status": "oom"}]) == "errors"


def _fake_wheel(folder: Path) -> Path:
    """A wheel with one module that needs a package nobody has: the install and the requirement check."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "sdpo_gpu_probe-0.1-py3-none-any.whl"
    info = "sdpo_gpu_probe-0.1.dist-info"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("sdpo_gpu_probe.py", "VALUE = 1\n")
        z.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: sdpo-gpu-probe\nVersion: 0.1\n"
                                       "Requires-Dist: numpy>=1\nRequires-Dist: no-such-package-sdpo>=1\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")
    return path


def test_check_runs_in_cpu_tiny_mode_and_writes_every_field(tmp_path):
    from sdpo.models import embedded_tokenizer_dir

    wheels = tmp_path / "wheels"
    _fake_wheel(wheels)
    tokenizer = embedded_tokenizer_dir()
    import shutil

    shutil.copytree(tokenizer, wheels / "sdpo-cache" / tokenizer.name)  # as make gpu-wheels carries it
    out = tmp_path / "out"
    env = _cpu_env()
    env.pop("SDPO_CACHE", None)  # the carried cache is used, as on the GPU machine
    done = subprocess.run([sys.executable, str(CHECK), "--device", "cpu", "--tiny", "--out", str(out),
                           "--wheels", str(wheels)], capture_output=True, text=True, cwd=ROOT, env=env, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["check.json", "log.txt", "pytest.xml", "summary.txt"]
    report = json.loads((out / "check.json").read_text())
    assert report["schema"] == "sdpo-gpu-check/1" and report["device"] == "cpu" and report["tiny"] is True
    assert report["seconds"] <= report["total_budget_s"]

    install = report["install"]
    assert install["status"] == "ok" and install["wheels"] == ["sdpo_gpu_probe-0.1-py3-none-any.whl"]
    env_info = report["environment"]
    assert any("no-such-package-sdpo" in line for line in env_info["unmet_requirements"])
    assert not any("numpy" in line for line in env_info["unmet_requirements"])
    assert env_info["import_errors"] == {}
    assert env_info["tokenizer"].startswith(install["sdpo_cache"])
    assert env_info["packages"]["torch"]["version"] and env_info["cuda_available"] is False

    steps = report["steps"]
    assert list(steps) == ["tests", "signal", "online", "offline", "rich"]
    assert all(step["status"] == "ok" for step in steps.values()), {k: v["status"] for k, v in steps.items()}
    tests = steps["tests"]["tests"]
    assert tests["total"] >= 10 and tests["skipped"] == tests["total"]  # no CUDA: all skipped, none failed

    peak, *signal = steps["signal"]["rows"]
    assert peak["part"] == "peak" and peak["tflops"] > 0
    assert [r["model"] for r in signal] == ["tiny"]
    for key in ("sdpo_tokens_per_s", "naive_tokens_per_s", "tflops", "mfu", "sdpo_peak_extra_mib", "max_abs_diff"):
        assert signal[0][key] > 0, key
    (online,) = steps["online"]["rows"]
    for key in ("generate_s", "simulate_s", "score_s", "update_s", "step_s", "peak_extra_gib"):
        assert online[key] >= 0, key
    for part, speed in (("offline", "response_tokens_per_s"), ("rich", "completion_tokens_per_s")):
        rows = steps[part]["rows"]
        assert [r["gradient_checkpointing"] for r in rows] == [False, True]
        assert all(r["status"] == "ok" and r[speed] > 0 and r["peak_extra_gib"] >= 0 for r in rows), rows

    summary = (out / "summary.txt").read_text()
    for word in ("install: ok", "tests: ok", "signal: ok", "MFU", "online: ok", "offline: ok", "rich: ok"):
        assert word in summary, word
    log = (out / "log.txt").read_text()
    assert "===== install =====" in log and "===== rich =====" in log
