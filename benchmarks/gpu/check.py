"""sdpo's GPU check: the first CUDA run of every trainer and its figures, in one prepared command.

    bash benchmarks/gpu/check.sh                      # on a lent GPU machine, writes into $OUT
    python benchmarks/gpu/check.py --device cpu --tiny --out /tmp/gpu-check   # the same on CPU (CI)

In order, each step in its own process with its own time budget (a step that runs over is
stopped and recorded as ``timeout``; the steps after it still run), the whole within
``--total-budget`` seconds (default 470: eight minutes on one H100):

1. ``install``: the wheels in ``--wheels`` (default ``benchmarks/gpu/wheels/``, filled by
   ``make gpu-wheels``) go into a folder of their own with ``pip install --no-deps
   --target`` (never torch: a torch/nvidia/triton wheel there is refused), which is put first
   on ``PYTHONPATH`` with the working tree's ``src/``; the machine's own packages are left
   as they are. A ``sdpo-cache/`` folder beside the wheels (the embedded tokenizer) becomes
   ``SDPO_CACHE``. Then the versions each process will import and any requirement of a
   carried wheel that is not met are recorded.
2. ``tests``: ``pytest -m gpu tests/test_gpu.py`` (bf16 signal vs float32, every trainer for
   two steps on the device, checkpoint save/load); on CPU they are skipped.
3. ``signal``: the bf16 peak of one large matrix product, then the signal core's tokens/s,
   its MFU against that peak, and its peak memory (vs the naive batched reference);
4. ``online``: one online SDPO step, generate / simulate / score / update seconds, peak memory;
5. ``offline`` and ``rich``: the trainer's tokens/s and peak memory with and without
   gradient checkpointing.

Timings use random-initialised models of real shapes (Qwen3-1.7B, Qwen3-4B; ``--tiny``: a
2-layer one). Written to ``--out`` (default ``$OUT``): ``check.json`` (everything),
``summary.txt`` (a few lines), ``log.txt`` (each step's output) and ``pytest.xml``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SCHEMA = "sdpo-gpu-check/1"
STEPS = ("tests", "signal", "online", "offline", "rich")
# seconds per step on one H100 (install comes first and is not one of STEPS)
GPU_BUDGETS = {"install": 60, "tests": 120, "signal": 75, "online": 60, "offline": 75, "rich": 90}
CPU_BUDGETS = {"install": 120, "tests": 240, "signal": 240, "online": 240, "offline": 240, "rich": 240}
MIN_STEP_S = 30  # a step that would get less than this (or its own budget, if smaller) is not started
NEVER_CARRIED = ("torch-", "nvidia_", "nvidia-", "triton-")  # the machine's CUDA stack stays as it is
LOG_TAIL_BYTES = 400_000  # of each step's output, in log.txt
VERSIONS = ("torch", "transformers", "trl", "datasets", "accelerate", "peft", "huggingface_hub", "tokenizers",
            "safetensors", "numpy", "pyarrow", "pytest")


# --------------------------------------------------------------------------- probe (runs in the child environment)


def probe() -> dict:
    """Versions and origins of what a step will import, unmet requirements of the carried
    wheels, and whether sdpo's trainers import. Printed as JSON by ``check.py --probe``."""
    import importlib
    import importlib.metadata as md
    import importlib.util

    info: dict = {"python": sys.version.split()[0], "platform": platform.platform(), "packages": {}}
    for name in VERSIONS:
        try:
            version = md.version(name)
        except md.PackageNotFoundError:
            version = None
        spec = importlib.util.find_spec(name)
        origin = str(Path(spec.origin).parent) if spec and spec.origin else None
        info["packages"][name] = {"version": version, "from": origin}
    site = os.environ.get("SDPO_GPU_SITE")
    unmet = []
    if site and Path(site).is_dir():
        from packaging.requirements import Requirement
        from packaging.version import Version

        env = {"python_version": ".".join(platform.python_version_tuple()[:2]),
               "python_full_version": platform.python_version(), "platform_machine": platform.machine(),
               "sys_platform": sys.platform, "extra": ""}
        for dist in md.distributions(path=[site]):
            for text in dist.requires or []:
                req = Requirement(text)
                if req.marker is not None and not req.marker.evaluate(env):
                    continue
                try:
                    have = md.version(req.name)
                except md.PackageNotFoundError:
                    unmet.append(f"{dist.metadata['Name']} needs {req}: not installed")
                    continue
                if req.specifier and not req.specifier.contains(Version(have), prereleases=True):
                    unmet.append(f"{dist.metadata['Name']} needs {req}: {have} installed")
    info["unmet_requirements"] = sorted(set(unmet))
    import torch

    info["torch"] = torch.__version__
    info["cuda_available"] = torch.cuda.is_available()
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=torch.cuda.get_device_name(0), gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    cuda=torch.version.cuda, sm=f"{props.major}.{props.minor}")
    info["import_errors"] = {}
    for module in ("sdpo.signal", "sdpo.trainers.online", "sdpo.trainers.offline", "sdpo.trainers.rich",
                   "sdpo.trainers.update", "sdpo.spo.pipeline"):
        try:
            importlib.import_module(module)
        except Exception as err:  # noqa: BLE001 - recorded, the steps will say more
            info["import_errors"][module] = f"{type(err).__name__}: {str(err)[:300]}"
    info["pytest_timeout"] = importlib.util.find_spec("pytest_timeout") is not None
    try:
        from sdpo.models import embedded_tokenizer_dir

        info["tokenizer"] = str(embedded_tokenizer_dir())
    except Exception as err:  # noqa: BLE001
        info["tokenizer"] = None
        info["tokenizer_error"] = f"{type(err).__name__}: {str(err)[:300]}"
    return info


# --------------------------------------------------------------------------- running steps


class Clock:
    def __init__(self, total: float):
        self.start = time.monotonic()
        self.total = total

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def allowed(self, budget: float, later_steps: int) -> float:
        """Seconds a step may take: its budget, less what the total leaves after a minimum for each later step."""
        left = self.total - self.elapsed() - MIN_STEP_S * later_steps
        return max(0.0, min(budget, left))


def run_step(cmd: list[str], *, seconds: float, env: dict, log: Path) -> dict:
    """Run ``cmd`` in its own process group; stop the group at ``seconds``. Output goes to ``log``."""
    start = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=seconds)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
            for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 30)):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=grace)
                    break
                except subprocess.TimeoutExpired:
                    continue
            rc = proc.returncode
    return {"rc": rc, "timed_out": timed_out, "seconds": round(time.monotonic() - start, 1)}


def tail(path: Path, limit: int) -> str:
    if not path.exists():
        return ""
    data = path.read_bytes()
    return data[-limit:].decode("utf-8", errors="replace")


def read_rows(path: Path) -> list[dict]:
    rows = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut off by a stop
                pass
    return rows


def junit_results(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError:
        return None
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    failures, skip_reasons = [], set()
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed" if child.tag == "failure" else "errors"
                failures.append({"test": name, "kind": child.tag,
                                 "message": (child.get("message") or child.text or "")[:500]})
            elif child.tag == "skipped":
                outcome = "skipped"
                skip_reasons.add((child.get("message") or "")[:200])
        counts[outcome] += 1
    return {**counts, "total": sum(counts.values()), "failures": failures, "skip_reasons": sorted(skip_reasons)}


def step_status(result: dict, rows: list[dict] | None = None, tests: dict | None = None) -> str:
    if result.get("timed_out"):
        return "timeout"
    if result.get("rc") != 0:
        return "failed"
    if rows is not None and any(r.get("status") not in (None, "ok") for r in rows):
        return "errors"
    if tests is not None and (tests["failed"] or tests["errors"]):
        return "failed"
    return "ok"


# --------------------------------------------------------------------------- install


def install(wheels: Path, site: Path, seconds: float, log: Path) -> dict:
    files = sorted(wheels.glob("*.whl")) if wheels.is_dir() else []
    refused = [f.name for f in files if f.name.lower().startswith(NEVER_CARRIED)]
    files = [f for f in files if f.name not in refused]
    info: dict = {"wheels_dir": str(wheels), "site": str(site), "wheels": [f.name for f in files],
                  "refused": refused, "megabytes": round(sum(f.stat().st_size for f in files) / 2**20, 1)}
    if not files:
        log.write_text(f"no wheels in {wheels}: nothing installed\n")
        return {**info, "status": "skipped", "seconds": 0.0}
    site.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
           "--no-cache-dir", "--disable-pip-version-check", "--upgrade", "--target", str(site), *map(str, files)]
    result = run_step(cmd, seconds=seconds, env=os.environ.copy(), log=log)
    return {**info, **result, "status": step_status(result)}


def sdpo_cache(wheels: Path, work: Path) -> str | None:
    """A writable copy of the carried ``sdpo-cache`` folder (the embedded tokenizer), or None."""
    carried = wheels / "sdpo-cache"
    if not carried.is_dir():
        return None
    target = work / "sdpo-cache"
    shutil.copytree(carried, target, dirs_exist_ok=True)
    return str(target)


# --------------------------------------------------------------------------- summary


def _tflops(value) -> str:
    return _fmt(value, " TFLOP/s", 1 if value and value >= 10 else 3)


def _fmt(value, unit="", digits=0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}{unit}"


def summary_lines(report: dict) -> list[str]:
    env = report.get("environment") or {}
    pk = env.get("packages", {})
    where = env.get("gpu") or f"CPU ({platform.machine()})"
    lines = [f"sdpo GPU check ({'tiny, ' if report['tiny'] else ''}device {report['device']}) on {where}: "
             f"torch {env.get('torch', '?')}, transformers {pk.get('transformers', {}).get('version', '?')}, "
             f"trl {pk.get('trl', {}).get('version', '?')}; {report['date']}; "
             f"{report['seconds']:.0f} s of {report['total_budget_s']:.0f}"]
    ins = report["install"]
    unmet = env.get("unmet_requirements") or []
    lines.append(f"install: {ins['status']} ({len(ins.get('wheels', []))} wheels, {ins.get('megabytes', 0)} MiB, "
                 f"{ins.get('seconds', 0)} s); unmet requirements: {'; '.join(unmet) if unmet else 'none'}")
    if env.get("import_errors"):
        lines.append("import errors: " + "; ".join(f"{k}: {v}" for k, v in env["import_errors"].items()))
    for name in STEPS:
        step = report["steps"].get(name)
        if step is None:
            continue
        head = f"{name}: {step['status']} ({step.get('seconds', 0)} s of {step.get('budget_s', 0):.0f})"
        if name == "tests":
            t = step.get("tests")
            if t:
                head += f" - {t['passed']} passed, {t['failed']} failed, {t['errors']} errors, {t['skipped']} skipped"
                head += "".join(f"\n  FAILED {f['test']}: {f['message'].splitlines()[0] if f['message'] else ''}"
                                for f in t["failures"])
            lines.append(head)
            continue
        lines.append(head)
        for row in step.get("rows", []):
            lines.append("  " + row_line(row))
    return lines


def row_line(row: dict) -> str:
    part, model = row.get("part"), row.get("model", "")
    if row.get("status") not in (None, "ok"):
        gc = " +checkpointing" if row.get("gradient_checkpointing") else ""
        return f"{part} {model}{gc}: {row.get('status')} - {row.get('error', '')}"
    if part == "peak":
        return f"peak: {row['dtype']} {row['n']}^3 matmul {_tflops(row['tflops'])}"
    if part == "signal":
        return (f"{model}: {_fmt(row['sdpo_tokens_per_s'], ' tok/s')}, MFU {_fmt(100 * row['mfu'], '%', 1)} "
                f"({_tflops(row['tflops'])}); naive {_fmt(row['naive_tokens_per_s'], ' tok/s')} "
                f"(x{row['speedup']}); peak extra {_fmt(row['sdpo_peak_extra_mib'], ' MiB')} vs "
                f"{_fmt(row['naive_peak_extra_mib'], ' MiB')}")
    if part == "online":
        return (f"{model}: step {row['step_s']} s = generate {row['generate_s']} + simulate {row['simulate_s']} + "
                f"score {row['score_s']} + update {row['update_s']} (batch {row['batch']}, "
                f"{row['max_new_tokens']} new tokens); peak {_fmt(row.get('peak_total_gib'), ' GiB', 1)} "
                f"(+{_fmt(row['peak_extra_gib'], ' GiB', 2)})")
    gc = " +checkpointing" if row.get("gradient_checkpointing") else ""
    if part == "offline":
        return (f"{model}{gc}: {_fmt(row.get('response_tokens_per_s'), ' response tok/s')}, "
                f"step {row.get('step_s')} s; "
                f"peak {_fmt(row.get('peak_total_gib'), ' GiB', 1)} (+{_fmt(row['peak_extra_gib'], ' GiB', 2)})")
    if part == "rich":
        return (f"{model}{gc}: {_fmt(row.get('completion_tokens_per_s'), ' completion tok/s')}, step "
                f"{row.get('step_s')} s; peak {_fmt(row.get('peak_total_gib'), ' GiB', 1)} "
                f"(+{_fmt(row['peak_extra_gib'], ' GiB', 2)})")
    return json.dumps(row)


# --------------------------------------------------------------------------- main


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--out", default=os.environ.get("OUT"), help="output folder (default: $OUT)")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--tiny", action="store_true", help="2-layer models instead of Qwen3-1.7B/4B (CPU, CI)")
    parser.add_argument("--wheels", default=str(HERE / "wheels"), help="folder of carried wheels (make gpu-wheels)")
    parser.add_argument("--site", default=None, help="where the wheels are installed (default: a temporary folder)")
    parser.add_argument("--steps", default=",".join(STEPS), help=f"comma list of {', '.join(STEPS)}")
    parser.add_argument("--total-budget", type=float, default=None,
                        help="seconds for everything (default 470 on cuda, 1200 on cpu)")
    parser.add_argument("--budget", action="append", default=[], metavar="STEP=SECONDS",
                        help="one step's budget, e.g. --budget rich=120 (repeatable)")
    parser.add_argument("--repeats", type=int, default=None, help="signal repeats (default 3; 1 with --tiny)")
    parser.add_argument("--shapes", default=None, help="model shapes for the timed steps instead of the default "
                                                         "(comma list: tiny, qwen3-0.6b, qwen3-1.7b, qwen3-4b, ...)")
    parser.add_argument("--tests-device", default=None,
                        help="run the gpu tests on this device anyway (SDPO_TEST_DEVICE; 'cpu' rehearses them here)")
    parser.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.out is None and not args.probe:
        parser.error("no output folder: set $OUT or pass --out")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.probe:
        print(json.dumps(probe()))
        return 0
    cpu = args.device == "cpu"
    budgets = dict(CPU_BUDGETS if cpu else GPU_BUDGETS)
    for item in args.budget:
        name, _, value = item.partition("=")
        if name not in budgets or not value:
            raise SystemExit(f"--budget {item!r}: expected STEP=SECONDS with STEP one of {', '.join(budgets)}")
        budgets[name] = float(value)
    steps = [s for s in args.steps.split(",") if s]
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        raise SystemExit(f"--steps: unknown {', '.join(unknown)}; choose from {', '.join(STEPS)}")
    total = args.total_budget or (1200.0 if cpu else 470.0)
    clock = Clock(total)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="sdpo-gpu-check-"))
    site = Path(args.site) if args.site else work / "site"
    logs = work / "logs"
    logs.mkdir()
    report: dict = {"schema": SCHEMA, "command": [Path(sys.argv[0]).name, *(argv or sys.argv[1:])],
                    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    "device": args.device, "tiny": args.tiny, "total_budget_s": total, "budgets_s": budgets,
                    "host": platform.node(), "steps": {}}

    def save() -> None:
        report["seconds"] = round(clock.elapsed(), 1)
        (out / "check.json").write_text(json.dumps(report, indent=1) + "\n")
        (out / "summary.txt").write_text("\n".join(summary_lines(report)) + "\n")
        with open(out / "log.txt", "w", encoding="utf-8") as f:
            for name in ("install", "probe", *steps):
                path = logs / f"{name}.log"
                if path.exists():
                    f.write(f"\n===== {name} =====\n{tail(path, LOG_TAIL_BYTES)}")

    print(f"== sdpo GPU check: device {args.device}{' (tiny)' if args.tiny else ''}, {total:.0f} s in all, "
          f"writing {out}", flush=True)
    # 1. install
    report["install"] = install(Path(args.wheels), site,
                                clock.allowed(budgets["install"], len(steps)), logs / "install.log")
    print(f"== install: {report['install']['status']} ({len(report['install']['wheels'])} wheels)", flush=True)
    env = os.environ.copy()
    paths = [str(ROOT / "src")]
    if report["install"]["status"] == "ok":
        paths.insert(0, str(site))
        env["SDPO_GPU_SITE"] = str(site)
    env["PYTHONPATH"] = os.pathsep.join(paths + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.update(PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.setdefault("TRACKIO_DIR", str(work / "trackio"))
    cache = sdpo_cache(Path(args.wheels), work)
    if cache and "SDPO_CACHE" not in os.environ:
        env["SDPO_CACHE"] = cache
    report["install"]["sdpo_cache"] = env.get("SDPO_CACHE")
    if cpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
    if args.tests_device:
        env["SDPO_TEST_DEVICE"] = args.tests_device
    # versions and origins as the steps will see them
    result = run_step([sys.executable, str(HERE / "check.py"), "--probe"], seconds=max(30.0, clock.allowed(90, 0)),
                      env=env, log=logs / "probe.log")
    try:
        report["environment"] = json.loads(tail(logs / "probe.log", 10**6).strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        report["environment"] = {"probe": result, "error": tail(logs / "probe.log", 2000)}
    save()

    for i, name in enumerate(steps):
        later = len(steps) - i - 1
        allowed = clock.allowed(budgets[name], later)
        if allowed < min(MIN_STEP_S, budgets[name]):
            report["steps"][name] = {"status": "not run", "reason": "the total budget was spent", "budget_s": 0}
            save()
            continue
        log = logs / f"{name}.log"
        print(f"== {name} (up to {allowed:.0f} s)", flush=True)
        if name == "tests":
            xml = work / "pytest.xml"
            cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "tests/test_gpu.py", "-v", "-rs", "-p",
                   "no:cacheprovider", f"--junitxml={xml}"]
            if report["environment"].get("pytest_timeout"):
                cmd.append(f"--timeout={max(60, int(allowed / 2))}")
            result = run_step(cmd, seconds=allowed, env=env, log=log)
            tests = junit_results(xml)
            if xml.exists():
                shutil.copy(xml, out / "pytest.xml")
            # pytest's exit code 5 = nothing collected: the marker's tests are gone, a failure
            step = {**result, "budget_s": allowed, "tests": tests, "status": step_status(result, tests=tests)}
            if tests is None and not result["timed_out"]:
                step["status"] = "failed"
            step["output_tail"] = tail(log, 3000)
        else:
            rows_file = work / f"{name}.jsonl"
            cmd = [sys.executable, str(HERE / "parts.py"), name, "--device", args.device, "--out", str(rows_file)]
            if args.tiny:
                cmd.append("--tiny")
            cmd += ["--repeats", str(args.repeats or (1 if args.tiny else 3))]
            if args.shapes:
                cmd += ["--shapes", args.shapes]
            result = run_step(cmd, seconds=allowed, env=env, log=log)
            rows = read_rows(rows_file)
            step = {**result, "budget_s": allowed, "rows": rows, "status": step_status(result, rows=rows)}
            if step["status"] != "ok":
                step["output_tail"] = tail(log, 3000)
        report["steps"][name] = step
        print(f"   {name}: {step['status']} in {step['seconds']} s", flush=True)
        save()
    save()
    print((out / "summary.txt").read_text(), end="", flush=True)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
