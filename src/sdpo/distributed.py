"""What our own training loops need to run under DDP, DeepSpeed ZeRO-2/3 and FSDP.

The online trainer drives `accelerate` directly (it is not a `transformers.Trainer`),
so it has to do what the Trainer does for sharded models itself:

* fill DeepSpeed's ``auto`` batch/accumulation/clipping values before ``prepare``
  (DeepSpeed refuses to start without a micro-batch size);
* generate with full parameters: under ZeRO-3 they are gathered once for the whole
  ``generate`` call (TRL's ``unwrap_model_for_generation``) instead of once per
  token and layer; under FSDP every rank runs the same number of decoding steps
  (transformers sets ``synced_gpus`` for FSDP-managed modules);
* run the same number of forwards on every rank when parameters are sharded,
  because each forward is a collective there (see :func:`lockstep_forwards`);
* save consolidated weights (``accelerator.get_state_dict`` gathers the shards).
"""

from __future__ import annotations

import contextlib
import os

import torch


class LaunchError(RuntimeError):
    """The launch configuration cannot work (reported as a one-line CLI error)."""


def sharded_launch() -> bool:
    """Whether this process was launched for DeepSpeed or FSDP by ``accelerate launch``."""
    return any(os.environ.get(k, "false").lower() == "true" for k in ("ACCELERATE_USE_DEEPSPEED", "ACCELERATE_USE_FSDP"))


def check_world(accelerator) -> None:
    """Refuse to train when N processes were launched but accelerate formed no process group.

    This happens with DeepSpeed/FSDP on a machine without GPUs (accelerate has no CPU
    backend for them): every process would silently train alone on its own data.
    """
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and accelerator.num_processes == 1:
        raise LaunchError(
            f"launched as {launched} processes but accelerate sees a world of 1 "
            f"({'DeepSpeed/FSDP need GPUs' if sharded_launch() else 'no process group was formed'}); "
            "on a CPU-only machine use the plain multi-process launch (DDP over gloo)"
        )


def fill_deepspeed_config(accelerator, *, micro_batch: int, grad_accum: int, max_grad_norm: float | None) -> None:
    """Set the DeepSpeed values our loop decides; a contradicting explicit value is an error."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is None:
        return
    config = plugin.deepspeed_config
    wanted = {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": grad_accum,
        "gradient_clipping": float(max_grad_norm or 0.0),
    }
    for key, value in wanted.items():
        current = config.get(key, "auto")
        if current == "auto":
            config[key] = value
        elif current != value:
            raise LaunchError(f"DeepSpeed config sets {key}={current!r} but the trainer uses {value!r}; "
                             f"set it to 'auto' or make them agree")
    config["train_batch_size"] = micro_batch * grad_accum * accelerator.num_processes
    consolidate_zero3_saves(accelerator)


def consolidate_zero3_saves(accelerator) -> None:
    """Under ZeRO-3, have saves gather the shards into one loadable model (before the engine starts)."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is None:
        return
    zero = plugin.deepspeed_config.setdefault("zero_optimization", {})
    if int(zero.get("stage", 0) or 0) == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True


def full_state_dict_for_final_save(accelerator) -> None:
    """Under FSDP with sharded checkpoints, make the final ``save_model`` write one loadable model."""
    plugin = getattr(accelerator.state, "fsdp_plugin", None)
    if plugin is not None and "FULL_STATE_DICT" not in str(plugin.state_dict_type):
        plugin.set_state_dict_type("FULL_STATE_DICT")


def zero_stage(accelerator) -> int:
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return int(plugin.zero_stage or 0) if plugin is not None else 0


def lockstep_forwards(model) -> bool:
    """True when every forward of ``model`` is a collective (ZeRO-3, FSDP 1/2).

    Then all ranks must call it the same number of times, so per-rank length
    planning (a data-dependent number of micro-batches) is switched off.
    """
    if type(model).__name__ == "DeepSpeedEngine":
        return getattr(model, "zero_optimization_stage", lambda: 0)() == 3
    if type(model).__name__ == "FullyShardedDataParallel":
        return True
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - old torch
        return False
    return isinstance(model, FSDPModule)


@contextlib.contextmanager
def gathered_parameters(accelerator, params):
    """Full (unpartitioned) parameters under ZeRO-3 inside the block; no-op otherwise."""
    if zero_stage(accelerator) == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(params):
            yield
    else:
        yield


@contextlib.contextmanager
def policy_for_generation(model, accelerator):
    """The plain model, in eval mode, with full parameters for ``generate``."""
    import warnings

    from trl.models import unwrap_model_for_generation

    with warnings.catch_warnings():
        # TRL 1.16 still asks for transformers' deprecated `is_gradient_checkpointing` (and the old enable /
        # disable names): FutureWarnings about TRL's code, shown to our users at every generation
        warnings.filterwarnings("ignore", message=r"`(is_)?gradient_checkpointing", category=FutureWarning)
        with unwrap_model_for_generation(model, accelerator) as policy:
            was_training = policy.training
            policy.eval()
            try:
                with torch.no_grad():
                    yield policy
            finally:
                policy.train(was_training)


@contextlib.contextmanager
def zero3_init_disabled():
    """Load models inside the block whole, not partitioned by ZeRO-3's ``zero.Init``.

    For frozen helpers that never go through ``accelerator.prepare`` (the local user
    simulator): a partitioned copy without a DeepSpeed engine has empty weights.
    """
    from transformers.integrations import deepspeed as hf_ds

    ref = hf_ds._hf_deepspeed_config_weak_ref
    config = ref() if ref is not None else None
    if config is None:
        yield
        return
    hf_ds.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_ds.set_hf_deepspeed_config(config)


def leave_process_group() -> None:
    """End of a distributed job: wait for every rank (rank 0 may still be writing the model), then
    destroy the process group, so no rank exits with collective threads still running."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()

