"""Policy generation through vLLM for ``sdpo train-online --use_vllm true`` (off by default).

The engine is TRL's own :class:`trl.generation.vllm_generation.VLLMGeneration` (the one
``GRPOTrainer`` and our rich trainer use), so both of TRL's modes behave as there:

- ``colocate``: a ``vllm.LLM`` in this process, on this process's GPU, one engine per rank,
  each generating its own rows; built from the policy's weights (its ``name_or_path``, or a
  saved copy when the policy was built in memory, e.g. ``tiny-random``);
- ``server``: a separate ``trl vllm-serve`` / ``vllm serve`` reached through TRL's
  ``VLLMClient``; the main rank sends every rank's prompts and hands each its rows back.

After every optimizer step :meth:`VLLMPolicyGenerator.sync` pushes the trained weights into
the engine with TRL's ``sync_weights`` (gathering ZeRO-3 / FSDP shards, merging LoRA) and
resets its prefix cache; the engine also gets the current weights once when it is built, so
a resumed run generates from the checkpoint's weights, not the starting model's.

Responses are the same token-id lists as the ``transformers`` path
(:func:`sdpo.trainers.online.generate`): they end at the tokenizer's EOS only, which is kept;
vLLM's own stop ids (the generation config's EOS list) are turned off with ``ignore_eos`` and
the tokenizer's EOS is the one stop id.
"""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
import sys
import tempfile

MODES = ("colocate", "server")
INSTALL = "pip install vllm (or pip install 'trl[vllm]'; TRL 1.16 supports vLLM 0.22 to 0.31)"


def vllm_installed() -> bool:
    """Whether ``import vllm`` can work, without importing it (slow) here."""
    if "vllm" in sys.modules:
        return sys.modules["vllm"] is not None
    try:
        return importlib.util.find_spec("vllm") is not None
    except (ImportError, ValueError):
        return False


def cuda_available() -> bool:
    """Whether a CUDA device is visible (colocate mode runs vLLM on it)."""
    import torch

    return torch.cuda.is_available()


def check_options(cfg) -> None:
    """The up-front checks of the ``vllm_*`` options (``OnlineSDPOConfig.__post_init__``): one-line
    ``ValueError``s, before any model loads."""
    if cfg.vllm_mode not in MODES:
        raise ValueError(f"vllm_mode must be colocate or server, got {cfg.vllm_mode!r}")
    if cfg.vllm_tensor_parallel_size < 1:
        raise ValueError(f"vllm_tensor_parallel_size must be >= 1, got {cfg.vllm_tensor_parallel_size}")
    if not 0 < cfg.vllm_gpu_memory_utilization <= 1:
        raise ValueError(f"vllm_gpu_memory_utilization must be in (0, 1], got {cfg.vllm_gpu_memory_utilization}")
    if cfg.vllm_max_model_length is not None and cfg.vllm_max_model_length < 1:
        raise ValueError(f"vllm_max_model_length must be >= 1, got {cfg.vllm_max_model_length}")
    if not cfg.use_vllm:
        return
    if not vllm_installed():
        raise ValueError(f"--use_vllm true needs vLLM, which is not installed: {INSTALL}")
    if cfg.vllm_mode == "colocate" and not cuda_available():
        raise ValueError("--vllm_mode colocate runs vLLM on this process's GPU and no CUDA device is visible; use "
                         "--vllm_mode server (a running `trl vllm-serve`) or leave --use_vllm off")


def _name_or_path(model) -> str:
    return str(getattr(model, "name_or_path", "") or "")


@contextlib.contextmanager
def _loadable_source(model, tokenizer, mode: str):
    """Colocate builds its engine from ``model.name_or_path``; a policy built in memory has none, so
    a copy is saved to a temporary folder for the engine's construction (its weights are pushed
    right after anyway)."""
    if mode != "colocate" or _name_or_path(model):
        yield
        return
    folder = tempfile.mkdtemp(prefix="sdpo-vllm-")
    had = "name_or_path" in vars(model)
    old = vars(model).get("name_or_path")
    try:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        model.name_or_path = folder
        yield
    finally:
        if had:
            model.name_or_path = old
        else:
            vars(model).pop("name_or_path", None)
        shutil.rmtree(folder, ignore_errors=True)


class VLLMPolicyGenerator:
    """The online trainer's policy sampler on vLLM: :meth:`generate` for rollouts, :meth:`sync`
    after each optimizer step."""

    def __init__(self, model, accelerator, tokenizer, cfg):
        from trl.generation.vllm_generation import VLLMGeneration

        self.tokenizer = tokenizer
        self.eos = tokenizer.eos_token_id
        policy = accelerator.unwrap_model(model)
        rows = cfg.generation_batch_size or cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps
        with _loadable_source(policy, tokenizer, cfg.vllm_mode):
            self.engine = VLLMGeneration(
                policy, accelerator, tokenizer,
                mode=cfg.vllm_mode,
                server_base_url=cfg.vllm_server_base_url,
                server_host=cfg.vllm_server_host,
                server_port=cfg.vllm_server_port,
                server_timeout=cfg.vllm_server_timeout,
                group_port=cfg.vllm_group_port,
                tensor_parallel_size=cfg.vllm_tensor_parallel_size,
                gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
                # contexts are cut to max_context_tokens (fit_context), so this always fits
                max_model_length=cfg.vllm_max_model_length or cfg.max_context_tokens + cfg.max_new_tokens,
                max_num_seqs=rows * cfg.vllm_tensor_parallel_size,
                temperature=cfg.temperature,
                top_p=1.0,
                top_k=0,
                min_p=0.0,
                repetition_penalty=1.0,
                max_completion_length=cfg.max_new_tokens,
                logprobs=None,  # the trainer re-scores responses itself
                # the transformers path stops at the tokenizer's EOS only (and keeps it): the same here
                generation_kwargs={"ignore_eos": True, "stop_token_ids": [self.eos]},
            )
        self.sync()

    def generate(self, contexts) -> tuple[list[list[int]], list[str]]:
        """Responses (token ids, cut after the first EOS, which is kept) and their texts."""
        _, completions, _, _ = self.engine.generate([list(c) for c in contexts], None, 1)
        responses = [_cut([int(t) for t in row], self.eos) for row in completions]
        return responses, [self.tokenizer.decode(r, skip_special_tokens=True) for r in responses]

    def sync(self) -> None:
        """Push the policy's current weights into the engine (collective: every rank calls it)."""
        self.engine.sync_weights()


def _cut(row: list[int], eos: int) -> list[int]:
    return row[: row.index(eos) + 1] if eos in row else row
