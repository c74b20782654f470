"""Fill benchmarks/gpu/wheels/ with what the GPU machine needs to run sdpo (``make gpu-wheels``).

The lent GPU machine has no internet and its own Python 3.12 with torch 2.11 + CUDA,
transformers 5.17, accelerate and peft, but no TRL or datasets; what it lacks travels as
wheels, and everything a call carries (working tree included) must fit in 64 MiB.

* the packages in :data:`CARRY` (what sdpo's import path needs beyond the machine, and the
  pins it does not meet), at the versions installed here (the ones our tests run with), as
  wheels for manylinux x86-64 CPython 3.12 (``pip download --only-binary=:all: --no-deps``);
* ``sdpo-cache/``: the embedded tokenizer (the tiny random test model's tokenizer), which
  ``benchmarks/gpu/check.py`` makes ``SDPO_CACHE`` there (the embedded model itself, 94 MB,
  does not fit).

Then every requirement of a carried wheel is checked: carried, or on the machine's package
list (:data:`MACHINE`); and the total is checked against the 64 MiB limit.

    python benchmarks/gpu/wheels.py [--dest benchmarks/gpu/wheels] [--limit-mib 64]
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import re
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

# name -> why it travels
CARRY = {
    "transformers": "our pin is >=5.23; the machine has 5.17",
    "huggingface_hub": "transformers 5.23+ needs >=2.4; the machine has 1.33",
    "httpx2": "huggingface_hub 2.x's HTTP client; not on the machine",
    "httpcore2": "httpx2's transport; not on the machine",
    "truststore": "httpx2/httpcore2 need it; not on the machine",
    "kernels": "transformers 5.23+ requires it; not on the machine",
    "tomlkit": "kernels needs it; not on the machine",
    "trl": "not on the machine (pinned 1.16.0; the rich trainer builds on it)",
    "datasets": "not on the machine (TRL and the trainers import it)",
    "dill": "datasets needs it; not on the machine",
    "multiprocess": "datasets needs it; not on the machine",
    "peft": "our pin is >=0.21,<0.22; the machine's version is not on record",
    "fsspec": "datasets needs <=2026.9.0; the machine's version is not on record",
    "click": "huggingface_hub 2.x needs >=8.4.2; the machine's version is not on record",
    "hf_xet": "huggingface_hub 2.x needs >=1.6; the machine's version is not on record",
    "regex": "transformers needs >=2025.10.22; the machine's version is not on record",
}

# The GPU machine's Python packages (/work/.library/device/KINDS.md, read 2026-11-17)
MACHINE = set("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy
peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers
statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope
triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl
zipp
""".split())

PIP_PLATFORM = ["--only-binary=:all:", "--platform", "manylinux2014_x86_64", "--platform", "manylinux_2_17_x86_64",
                "--platform", "manylinux_2_28_x86_64", "--implementation", "cp", "--no-deps"]
# the GPU machine's Python, for environment markers
MARKERS = {"python_version": "3.12", "python_full_version": "3.12.3", "platform_machine": "x86_64",
           "sys_platform": "linux", "platform_system": "Linux", "os_name": "posix",
           "platform_python_implementation": "CPython", "implementation_name": "cpython", "extra": ""}


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned() -> list[str]:
    """``name==version`` of each carried package, as installed here."""
    out, missing = [], []
    for name in CARRY:
        try:
            out.append(f"{name}=={md.version(name)}")
        except md.PackageNotFoundError:
            missing.append(name)
    if missing:
        raise SystemExit(f"not installed here, so no version to carry: {', '.join(missing)} (run make install first)")
    return out


def uncovered() -> list[str]:
    """Requirements of the carried packages that are neither carried nor on the machine."""
    from packaging.requirements import Requirement

    carried = {norm(n) for n in CARRY}
    machine = {norm(n) for n in MACHINE}
    gaps = []
    for name in CARRY:
        for text in md.requires(name) or []:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate(MARKERS):
                continue
            if norm(req.name) not in carried | machine:
                gaps.append(f"{name} needs {req}")
    return sorted(set(gaps))


def tree_bytes() -> int:
    """Bytes of the working tree that travels with a call (tracked and untracked-not-ignored files)."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                                capture_output=True, check=True).stdout.split(b"\0")
    except (OSError, subprocess.CalledProcessError):
        return 0
    total = 0
    for name in listed:
        path = ROOT / name.decode("utf-8", errors="replace")
        if name and path.is_file() and not path.is_symlink():
            total += path.stat().st_size
    return total


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", default=str(HERE / "wheels"))
    parser.add_argument("--limit-mib", type=float, default=64.0, help="what one call may carry, working tree included")
    parser.add_argument("--python-version", default="3.12", help="the GPU machine's (3.12); another one only to "
                                                                  "rehearse the install elsewhere")
    parser.add_argument("--no-download", action="store_true", help="only list and check (no pip, no copy)")
    args = parser.parse_args(argv)
    dest = Path(args.dest)
    wanted = pinned()
    print("== carried (versions as installed here):")
    for spec in wanted:
        print(f"   {spec:32s} {CARRY[spec.split('==')[0]]}")
    gaps = uncovered()
    if gaps:
        print("== warning: needed by a carried package, neither carried nor on the machine's list:")
        for line in gaps:
            print(f"   {line}")
    if args.no_download:
        return 0
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", *PIP_PLATFORM,
           "--python-version", args.python_version,
           "-d", str(dest), *wanted]
    print("== " + " ".join(cmd[2:]))
    subprocess.run(cmd, check=True)
    # one version of each: a wheel left from an earlier pin would stop the install there
    keep = {norm(spec.split("==")[0]) + "==" + spec.split("==")[1] for spec in wanted}
    for wheel in dest.glob("*.whl"):
        name, version = wheel.name.split("-")[:2]
        if f"{norm(name)}=={version}" not in keep:
            print(f"   removing {wheel.name} (not in the list)")
            wheel.unlink()
    # the embedded tokenizer, as SDPO_CACHE holds it
    from sdpo.models import embedded_tokenizer_dir

    tokenizer = embedded_tokenizer_dir()
    cache = dest / "sdpo-cache" / tokenizer.name
    if cache.exists():
        shutil.rmtree(cache)
    shutil.copytree(tokenizer, cache)
    wheels = sum(w.stat().st_size for w in dest.glob("*.whl"))
    cached = folder_bytes(dest / "sdpo-cache")
    tree = tree_bytes()
    total = wheels + cached + tree
    mib = 2**20
    print(f"== {len(list(dest.glob('*.whl')))} wheels {wheels / mib:.1f} MiB + tokenizer {cached / mib:.1f} MiB "
          f"+ working tree {tree / mib:.1f} MiB = {total / mib:.1f} MiB of {args.limit_mib:.0f} MiB a call may carry"
          f" (wheels for CPython {args.python_version} manylinux x86-64)")
    if total > args.limit_mib * mib:
        print("error: over the limit; carry fewer wheels", file=sys.stderr)
        return 1
    print(f"== carry it with the call: run(carry=['{dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest}'], "
          "command='bash benchmarks/gpu/check.sh')")
    return 0


if __name__ == "__main__":
    sys.exit(main())
