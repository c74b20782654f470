"""Run ``sdpo.cli`` under accelerate's DeepSpeed code path on a machine without GPUs.

Test harness only. accelerate 1.x picks its process-group backend from the hardware
and has no CPU branch for DeepSpeed (it would give every process a world of one);
DeepSpeed itself runs on CPU with gloo. This patches that one choice, so the real
trainer, DeepSpeed engine (ZeRO-2/3 partitioning, gathers, checkpoints) and
accelerate wrappers run as they would on GPUs. Launch it with
``accelerate launch --use_deepspeed --zero_stage N ... tests/cpu_sharded_launch.py <sdpo args>``.
"""

import os
import sys

import torch
from accelerate.state import PartialState
from accelerate.utils import DistributedType

_original = PartialState._prepare_backend


_original_set_device = PartialState.set_device


def _prepare_backend(self, cpu=False, sagemaker_dp=False, backend=None):
    if not torch.cuda.is_available() and not cpu and int(os.environ.get("LOCAL_RANK", -1)) != -1:
        if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
            # accelerate enables FSDP only for accelerator process groups; the group is gloo on CPU
            return "gloo", DistributedType.MULTI_GPU
        return "gloo", DistributedType.MULTI_CPU
    return _original(self, cpu, sagemaker_dp, backend)


def _set_device(self):
    if self.device is None and not torch.cuda.is_available():
        self.device = torch.device("cpu")
        return
    _original_set_device(self)


PartialState._prepare_backend = _prepare_backend
PartialState.set_device = _set_device

if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1].endswith(".py"):  # a script (e.g. an example) instead of the CLI
        import runpy

        sys.argv = sys.argv[1:]
        runpy.run_path(sys.argv[0], run_name="__main__")
        from sdpo.distributed import leave_process_group

        leave_process_group()  # as the CLI does; a script's rank must not exit while another still saves
        sys.exit(0)
    from sdpo.cli import main

    sys.exit(main(sys.argv[1:]))
