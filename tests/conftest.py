import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Converted models are cached inside the checkout unless the caller chose a place.
os.environ.setdefault("SDPO_CACHE", str(ROOT / ".sdpo-cache"))
# Tests never reach a model hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
# trackio (the default tracker) logs into this folder during tests, not the user's cache.
os.environ.setdefault("TRACKIO_DIR", str(ROOT / ".sdpo-cache" / "trackio"))

import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


# ------------------------------------------------------------------ system packages (tests/system_packages.py)
def pytest_configure(config):
    config.addinivalue_line("markers", "system_package(name): the test needs this system package (bubblewrap, "
                                       "chromium); skipped without it unless SDPO_REQUIRE_SYSTEM_PACKAGES=1")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    from tests import system_packages

    for marker in item.iter_markers("system_package"):
        for name in marker.args:
            system_packages.require(name)  # before the test's fixtures: a skip costs nothing


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter):
    yield  # after pytest's short test summary: the line just above the final counts
    from tests import system_packages

    line = system_packages.summary_line()
    if line:
        terminalreporter.write_line(line, yellow=True, bold=True)


@pytest.fixture(scope="session")
def tokenizer():
    from sdpo.models import load_tokenizer

    return load_tokenizer("tiny-random")


@pytest.fixture(scope="session")
def tiny(tokenizer):
    """(model, tokenizer): a 2-layer random Llama model in float32, eval mode."""
    from sdpo.models import tiny_random_model

    model = tiny_random_model(len(tokenizer), seed=0).eval()
    return model, tokenizer


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """tiny-random saved as a model directory, so separate launches start from the same weights
    (a random init differs under DeepSpeed ZeRO-3, which initialises partitioned)."""
    from sdpo.models import load_model

    model, tokenizer = load_model("tiny-random")
    path = tmp_path_factory.mktemp("tiny-model")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


# accelerate launch flags for the sharded modes, run on CPU through tests/cpu_sharded_launch.py
SHARDED_LAUNCH = {
    "zero2": ["--use_deepspeed", "--zero_stage", "2"],
    "zero3": ["--use_deepspeed", "--zero_stage", "3", "--zero3_init_flag", "true"],
    "fsdp2": ["--use_fsdp", "--fsdp_version", "2", "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP",
              "--fsdp_state_dict_type", "SHARDED_STATE_DICT", "--fsdp_reshard_after_forward", "true"],
}
SHARDED_SCRIPT = str(ROOT / "tests" / "cpu_sharded_launch.py")


def max_weight_diff(a_dir, b_dir) -> float:
    """Largest difference between two saved models' weights (same keys, same shapes required)."""
    from safetensors.torch import load_file

    a, b = load_file(Path(a_dir) / "model.safetensors"), load_file(Path(b_dir) / "model.safetensors")
    shared = set(a) & set(b)
    assert "model.embed_tokens.weight" in shared and all(a[k].shape == b[k].shape for k in shared)
    return max((a[k] - b[k]).abs().max().item() for k in shared)


def launch_two_processes(launcher_args, command, port):
    """``accelerate launch`` with 2 processes, float32, the given launcher flags; must succeed."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "accelerate.commands.launch", *launcher_args, "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port),
           *command]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, env=os.environ.copy())
    assert done.returncode == 0, done.stderr[-4000:]
    return done


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    """Eight TL;DR prompts from the bundled sample, as a prompts JSONL file (online-trainer tests)."""
    from sdpo.data.prompt_sources import load_prompt_rows, prepare_tldr
    from sdpo.data.prompts import write_prompts

    train, _, _ = prepare_tldr(load_prompt_rows("tldr", "sample"))
    return write_prompts(train[:8], tmp_path_factory.mktemp("prompts") / "train.jsonl")


INFO_PREFIXES = ("loading model ", "threads: ", "loading torch")  # progress notes the commands print to stderr


def error_lines(stderr: str) -> list[str]:
    """``stderr`` without the commands' progress notes (model loading, thread choice): the error lines."""
    return [line for line in stderr.strip().splitlines() if line.strip() and not line.startswith(INFO_PREFIXES)]
