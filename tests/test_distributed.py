"""The pieces of sdpo.distributed that do not need a process group."""

from types import SimpleNamespace

import pytest

from sdpo.distributed import LaunchError, check_world, fill_deepspeed_config, lockstep_forwards, sharded_launch


def _accelerator(config=None, processes=2):
    plugin = None if config is None else SimpleNamespace(deepspeed_config=config)
    return SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=plugin), num_processes=processes)


def test_deepspeed_auto_values_are_filled_and_zero3_saves_consolidated():
    config = {"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
              "gradient_clipping": "auto", "zero_optimization": {"stage": 3}}
    fill_deepspeed_config(_accelerator(config), micro_batch=4, grad_accum=2, max_grad_norm=1.0)
    assert config["train_micro_batch_size_per_gpu"] == 4 and config["gradient_accumulation_steps"] == 2
    assert config["gradient_clipping"] == 1.0 and config["train_batch_size"] == 16
    assert config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True


def test_contradicting_deepspeed_value_is_an_error_naming_it():
    config = {"gradient_accumulation_steps": 8, "zero_optimization": {"stage": 2}}
    with pytest.raises(LaunchError, match="gradient_accumulation_steps=8 but the trainer uses 1"):
        fill_deepspeed_config(_accelerator(config), micro_batch=4, grad_accum=1, max_grad_norm=1.0)
    fill_deepspeed_config(_accelerator(None), micro_batch=4, grad_accum=1, max_grad_norm=1.0)  # no DeepSpeed: no-op


def test_a_world_of_one_after_a_multi_process_launch_is_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    assert sharded_launch()
    with pytest.raises(LaunchError, match="launched as 2 processes but accelerate sees a world of 1.*need GPUs"):
        check_world(_accelerator(processes=1))
    check_world(_accelerator(processes=2))
    monkeypatch.setenv("WORLD_SIZE", "1")
    check_world(_accelerator(processes=1))


def test_plain_and_ddp_models_are_not_lockstep(tiny):
    model, _ = tiny
    assert not lockstep_forwards(model)


def test_leave_process_group_ends_the_group(tmp_path):
    import torch.distributed as dist

    from sdpo.distributed import leave_process_group

    leave_process_group()  # no group: nothing to do
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    assert dist.is_initialized()
    leave_process_group()
    assert not dist.is_initialized()
