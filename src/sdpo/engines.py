"""Generation with frozen weights through a choice of engine.

The local user simulator, the local judge and ``sdpo eval checkpoints``' answers never change
weights during a call, so they need not run through ``model.generate``. Every engine here takes
the same token contexts (the chat template already applied) and sampling settings and returns
new token ids per row, ending after the tokenizer's EOS when one was produced (kept, as
:func:`sdpo.trainers.online.generate` does):

``transformers``
    today's path (:func:`sdpo.generation.hf_generate`); the default.
``ctranslate2``
    CTranslate2's ``Generator`` (``pip install ctranslate2``; CPU, and CUDA when its wheel
    supports it), float32: on the embedded model the same greedy answers as transformers,
    faster (``benchmarks/bench_engines.py``). The model is converted once and cached under
    ``$SDPO_CACHE/ctranslate2/``. Sampling (temperature > 0, the local simulator's 0.7) runs on
    CTranslate2's own threads and is not reproducible by ``--seed``; greedy decoding is.
``ctranslate2-int8``
    the same with int8 weights: faster again, but greedy answers drift from the float32
    ones after some tokens (the benchmark reports how often); an option, never a default.
``vllm``
    vLLM's offline ``LLM`` in this process (GPU; ``pip install vllm``). For a vLLM *server*,
    point the API judge or simulator at it: ``--judge openai --judge_base_url
    http://host:8000/v1`` (``--simulator openai`` likewise).

Engines load a model by name (an alias, a ``.gguf`` file, a local directory or a hub id in
the local cache), not from weights in memory; a LoRA adapter directory must be merged first.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path
from typing import Sequence

BACKENDS = ("transformers", "ctranslate2", "ctranslate2-int8", "vllm")
_INSTALL = {"ctranslate2": "pip install ctranslate2", "vllm": "pip install vllm (a CUDA GPU)"}


def _package(backend: str) -> str | None:
    return {"ctranslate2": "ctranslate2", "ctranslate2-int8": "ctranslate2", "vllm": "vllm"}.get(backend)


def check_backend(backend: str, option: str = "--generation_backend") -> None:
    """A one-line ``ValueError`` for an unknown backend or one whose package is missing (before any model loads)."""
    if backend not in BACKENDS:
        raise ValueError(f"{option} must be one of {', '.join(BACKENDS)}, not {backend!r}")
    package = _package(backend)
    if package and importlib.util.find_spec(package) is None:
        raise ValueError(f"{option} {backend} needs the package {package!r}, which is not installed: {_INSTALL[package]}")


def weights_dir(name_or_path: str) -> Path:
    """A directory with the model's config, weights and tokenizer, as engines load them: the embedded
    model's converted copy for its alias, a converted ``.gguf``, a local directory, or a hub id already in
    the local Hugging Face cache."""
    from sdpo import models

    name = str(name_or_path)
    if name == models.EMBEDDED_ALIAS:
        return models.embedded_model_dir()
    if name == models.TINY_ALIAS:
        def build(tmp: Path) -> None:
            model, tok = models.load_model(models.TINY_ALIAS, dtype="float32", device="cpu")
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)

        return models._atomic_dir(models.cache_dir() / "tiny-random-seed0", build)
    if name.endswith(".gguf"):
        gguf = models._existing_path(name)
        return models.convert_gguf(gguf, models.cache_dir() / "gguf" / f"{gguf.stem}-{gguf.stat().st_size}")
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            what = "a LoRA adapter" if (path / "adapter_config.json").is_file() else "not a model directory"
            raise models.ModelLoadError(
                f"{name}: {what} (no config.json); the generation engines load whole models: merge the adapter "
                "(peft's merge_and_unload, then save_pretrained) or use --generation_backend transformers")
        return path
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        models._existing_path(name)  # raises: no such path
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, local_files_only=True))
    except Exception as err:  # noqa: BLE001 - the hub library raises several kinds
        raise models.ModelLoadError(
            f"could not find {name!r} on disk or in the local Hugging Face cache for the generation engine "
            f"({type(err).__name__}); download it first or pass a local directory") from None


def _fingerprint(directory: Path) -> str:
    """Changes when the directory's weights or config change (names, sizes, modification times)."""
    h = hashlib.sha1(str(directory.resolve()).encode())
    for f in sorted(directory.iterdir()):
        if f.is_file() and f.suffix in (".json", ".safetensors", ".bin", ".model"):
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def _cut(row: Sequence[int], eos: int | None) -> list[int]:
    row = [int(t) for t in row]
    return row[: row.index(eos) + 1] if eos is not None and eos in row else row


class Engine:
    """Frozen-weights generation: :meth:`generate` maps token contexts to new token ids per row."""

    name = "engine"
    tokenizer = None

    def generate(self, contexts: Sequence[Sequence[int]], *, max_new_tokens: int,
                 temperature: float) -> list[list[int]]:  # pragma: no cover - interface
        raise NotImplementedError

    def generate_texts(self, contexts, *, max_new_tokens: int, temperature: float) -> tuple[list[list[int]], list[str]]:
        """Token ids and their texts (special tokens skipped), as :func:`sdpo.trainers.online.generate`."""
        ids = self.generate(contexts, max_new_tokens=max_new_tokens, temperature=temperature)
        return ids, [self.tokenizer.decode(r, skip_special_tokens=True) for r in ids]

    def as_sampler(self):
        """A function with :func:`sdpo.generation.hf_generate`'s signature (its model argument unused): the
        local simulator's ``sampler``."""

        def sampler(_model, _tokenizer, contexts, *, max_new_tokens, temperature, **_ignored):
            return self.generate(contexts, max_new_tokens=max_new_tokens, temperature=temperature)

        return sampler


class TransformersEngine(Engine):
    """``model.generate`` on left-padded batches (:func:`sdpo.generation.hf_generate`)."""

    name = "transformers"

    def __init__(self, model, tokenizer, *, batch_size: int = 8):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size

    def generate(self, contexts, *, max_new_tokens, temperature):
        from sdpo.generation import hf_generate

        out: list[list[int]] = []
        device = next(self.model.parameters()).device
        for start in range(0, len(contexts), self.batch_size):
            out += hf_generate(self.model, self.tokenizer, contexts[start : start + self.batch_size],
                               max_new_tokens=max_new_tokens, temperature=temperature, device=device,
                               eos=[self.tokenizer.eos_token_id])
        return out


class CTranslate2Engine(Engine):
    """CTranslate2's ``Generator`` on the converted model (float32 by default, ``int8`` for speed)."""

    def __init__(self, name_or_path: str, *, compute_type: str = "float32", device: str = "cpu",
                 threads: int | None = None, tokenizer=None, batch_size: int = 8):
        import ctranslate2
        import torch

        from sdpo import models

        source = weights_dir(name_or_path)

        def convert(tmp: Path) -> None:
            from ctranslate2.converters import TransformersConverter
            from transformers.utils import logging as hf_logging

            bars = hf_logging.is_progress_bar_enabled()
            hf_logging.disable_progress_bar()
            try:
                TransformersConverter(str(source)).convert(str(tmp), force=True)
            finally:
                if bars:
                    hf_logging.enable_progress_bar()
            # the converter wants an empty target; _atomic_dir renames tmp into place afterwards

        target = models.cache_dir() / "ctranslate2" / f"{source.name}-{_fingerprint(source)}"
        if not target.is_dir():
            from sdpo.progress import note

            note(f"converting {name_or_path} for CTranslate2 (once; cached in {target}) ...")
        directory = models._atomic_dir(target, convert)
        self.name = "ctranslate2" if compute_type == "float32" else f"ctranslate2-{compute_type}"
        self.generator = ctranslate2.Generator(str(directory), device=device, compute_type=compute_type,
                                               intra_threads=threads or torch.get_num_threads())
        self.tokenizer = tokenizer if tokenizer is not None else models.load_tokenizer(str(name_or_path))
        self.batch_size = batch_size
        self.eos = self.tokenizer.eos_token_id

    def generate(self, contexts, *, max_new_tokens, temperature):
        kwargs = dict(max_length=max_new_tokens, include_prompt_in_result=False, end_token=[self.eos],
                      return_end_token=True, beam_size=1, max_batch_size=self.batch_size)
        if temperature > 0:
            # sampled on CTranslate2's worker threads: not reproducible by a seed (set_random_seed does not reach them)
            kwargs.update(sampling_topk=0, sampling_topp=1.0, sampling_temperature=float(temperature))
        else:
            kwargs.update(sampling_topk=1)
        tokens = [self.tokenizer.convert_ids_to_tokens([int(t) for t in c]) for c in contexts]
        results = self.generator.generate_batch(tokens, **kwargs)
        return [_cut(r.sequences_ids[0], self.eos) for r in results]


class VLLMEngine(Engine):
    """vLLM's offline ``LLM`` (one engine in this process, on its GPU)."""

    name = "vllm"

    def __init__(self, name_or_path: str, *, tokenizer=None, gpu_memory_utilization: float = 0.3,
                 max_model_len: int | None = None, seed: int = 0):
        from vllm import LLM

        from sdpo import models

        source = str(weights_dir(name_or_path))
        kwargs = {"gpu_memory_utilization": gpu_memory_utilization, "seed": seed}
        if max_model_len:
            kwargs["max_model_len"] = max_model_len
        self.llm = LLM(model=source, tokenizer=source, **kwargs)
        self.tokenizer = tokenizer if tokenizer is not None else models.load_tokenizer(str(name_or_path))
        self.eos = self.tokenizer.eos_token_id

    def generate(self, contexts, *, max_new_tokens, temperature):
        from vllm import SamplingParams

        # as the transformers path: stop at the tokenizer's EOS only (kept), not the generation config's list
        params = SamplingParams(temperature=float(temperature), top_p=1.0, top_k=0,  # 0: no top-k, as TRL passes it
                                max_tokens=max_new_tokens, ignore_eos=True, stop_token_ids=[self.eos])
        outputs = self.llm.generate([{"prompt_token_ids": [int(t) for t in c]} for c in contexts], params,
                                    use_tqdm=False)
        return [_cut(o.outputs[0].token_ids, self.eos) for o in outputs]


def open_engine(backend: str, name_or_path: str | None = None, *, model=None, tokenizer=None,
                device: str = "auto", option: str = "--generation_backend") -> Engine:
    """The engine ``backend`` for the model ``name_or_path`` (or, for ``transformers``, a loaded ``model``)."""
    check_backend(backend, option)
    if backend == "transformers":
        if model is None:
            from sdpo.models import load_model

            model, tokenizer = load_model(name_or_path, device=device)
        return TransformersEngine(model.eval(), tokenizer)
    if name_or_path is None:
        raise ValueError(f"{option} {backend} loads the model by name; no model name was given")
    if backend.startswith("ctranslate2"):
        import torch

        cuda = device in ("cuda", "auto") and torch.cuda.is_available()
        return CTranslate2Engine(name_or_path, compute_type="int8" if backend.endswith("int8") else "float32",
                                 device="cuda" if cuda else "cpu", tokenizer=tokenizer)
    return VLLMEngine(name_or_path, tokenizer=tokenizer)
