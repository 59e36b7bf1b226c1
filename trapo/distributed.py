"""Distributed training that must not go silently wrong (docs/scale.md): FSDP2 on CPUs, which accelerate 1.15 turns
into DDP without a word, and the DeepSpeed versions that drop gradients under offload + accumulation.

Asked for FSDP (``fsdp=True`` / ``fsdp_config`` in the training arguments, or ``accelerate launch --use_fsdp``) on a
CPU launch (``use_cpu=True``), accelerate classifies the run as ``MULTI_CPU`` and wraps the model in DDP: its
``AcceleratorState`` turns only the GPU-like types into FSDP, and the FSDP plugin is thrown away. The run trains,
unsharded, and nothing says so. `CPUFullyShardedMixin` puts the plugin back on the accelerator state, so accelerate's
own FSDP2 code path runs unchanged on gloo: ``fully_shard`` per decoder layer and root, the optimizer on DTensors,
FSDP checkpoints, resume, and a full state dict gathered at save. Measured on 2 CPU processes: the same weights as
DDP, bit for bit, and an exact resume (tests/test_trainer_scale.py).
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)


def _fsdp_requested(args) -> bool:
    return bool(args.fsdp_plugin_args) or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true")


class CPUFullyShardedMixin:
    """Trainer mixin: FSDP asked for on CPUs is FSDP, not a silent DDP (see the module docstring)."""

    def create_accelerator_and_postprocess(self):
        super().create_accelerator_and_postprocess()
        from accelerate.state import PartialState
        from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

        state = self.accelerator.state
        if state.distributed_type != DistributedType.MULTI_CPU or not _fsdp_requested(self.args):
            return
        plugin_args = self.args.fsdp_plugin_args or {}
        state.fsdp_plugin = FullyShardedDataParallelPlugin(**plugin_args)  # reads FSDP_* variables for the rest
        if state.mixed_precision != "no":  # as AcceleratorState does for the types it shards
            state.fsdp_plugin.set_mixed_precision(state.mixed_precision)
        state.distributed_type = DistributedType.FSDP
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP  # AcceleratorState mirrors it
        self.is_fsdp_enabled = True  # what the Trainer derives from the plugin
        logger.info("FSDP%s on %d CPU processes (gloo)", state.fsdp_plugin.fsdp_version, state.num_processes)


# DeepSpeed ZeRO-1/2 with the optimizer offloaded dropped every micro-batch's gradient but the first under gradient
# accumulation (introduced in 0.15.2 by PR #6550, fixed in 0.19.0 by PR #7967); a 2026 re-evaluation of SFT+RL
# methods traced published baseline gaps partly to it. Checked against both versions' stage_1_and_2.py.
DEEPSPEED_ACCUMULATION_BUG = ("0.15.2", "0.19.0")


def check_deepspeed_offload_accumulation(plugin, accumulation_steps: int, version: str | None) -> None:
    """Refuse the DeepSpeed setup that silently trains on a fraction of each batch (``DEEPSPEED_ACCUMULATION_BUG``):
    ZeRO stage 1 or 2, optimizer offloaded to CPU/NVMe, more than one micro-batch per step, an affected version."""
    if plugin is None or version is None or accumulation_steps <= 1:
        return
    from packaging.version import Version

    first, fixed = (Version(v) for v in DEEPSPEED_ACCUMULATION_BUG)
    if not first <= Version(version) < fixed:
        return
    zero = (getattr(plugin, "deepspeed_config", None) or {}).get("zero_optimization", {})
    offload = (zero.get("offload_optimizer") or {}).get("device", "none")
    if zero.get("stage") in (1, 2) and offload in ("cpu", "nvme"):
        raise ValueError(
            f"DeepSpeed {version} with ZeRO-{zero['stage']}, the optimizer offloaded to {offload} and "
            f"gradient_accumulation_steps={accumulation_steps} drops all but the first micro-batch's gradients "
            f"(fixed in DeepSpeed {fixed}, PR #7967): pip install 'trapo[deepspeed]' (DeepSpeed 0.19.8), or turn off "
            "the offload or the accumulation"
        )


class DeepSpeedGuardMixin:
    """Trainer mixin: `check_deepspeed_offload_accumulation` once the accelerator knows the DeepSpeed setup."""

    def create_accelerator_and_postprocess(self):
        super().create_accelerator_and_postprocess()
        plugin = getattr(self.accelerator.state, "deepspeed_plugin", None)
        if plugin is not None:
            import importlib.metadata

            version = importlib.metadata.version("deepspeed")
            check_deepspeed_offload_accumulation(plugin, self.args.gradient_accumulation_steps, version)
