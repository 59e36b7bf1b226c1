"""Distributed setups that must not go silently wrong (trapo.distributed). FSDP2 on 2 CPU processes is trained for
real in tests/test_trainer_scale.py; here, the DeepSpeed guard on hand-made plugin configs."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from trapo.distributed import check_deepspeed_offload_accumulation


def plugin(stage: int, offload: str | None):
    zero = {"stage": stage, **({"offload_optimizer": {"device": offload}} if offload else {})}
    return SimpleNamespace(deepspeed_config={"zero_optimization": zero})


@pytest.mark.parametrize("version", ["0.15.2", "0.16.4", "0.18.9"])
@pytest.mark.parametrize("stage", [1, 2])
@pytest.mark.parametrize("offload", ["cpu", "nvme"])
def test_affected_deepspeed_with_offload_and_accumulation_is_refused(version, stage, offload):
    message = rf"DeepSpeed {version} with ZeRO-{stage}, the optimizer offloaded to {offload} .* PR #7967"
    with pytest.raises(ValueError, match=message):
        check_deepspeed_offload_accumulation(plugin(stage, offload), 4, version)


@pytest.mark.parametrize(
    ("stage", "offload", "steps", "version"),
    [
        (2, "cpu", 1, "0.18.9"),  # no accumulation: the dropped micro-batches do not exist
        (2, None, 4, "0.18.9"),  # no offload
        (3, "cpu", 4, "0.18.9"),  # ZeRO-3 takes another path
        (2, "cpu", 4, "0.15.1"),  # before the bug
        (2, "cpu", 4, "0.19.0"),  # fixed
        (2, "cpu", 4, "0.19.8"),
    ],
)
def test_unaffected_setups_pass(stage, offload, steps, version):
    check_deepspeed_offload_accumulation(plugin(stage, offload), steps, version)


def test_no_deepspeed_passes():
    check_deepspeed_offload_accumulation(None, 8, None)
