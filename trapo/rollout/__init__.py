"""The micro-group rollout (docs/method.md, "Micro-group sampling"): stages in, samples out.

A prompt's G samples are drawn in stages; a later stage shows part of an expert solution as a prefix when the
samples so far mostly failed. This module is that procedure and nothing else: generation and scoring are passed
in as callables, so every rule is tested with fakes (``tests/test_rollout.py``) and the trainer only adapts TRL's
generation and reward calls to the two signatures below. It imports no trainer and logs nothing.

- `ExpertPrefix`: which trace a stage cuts and where (``trapo.core.cut_prefix``), within the token budget;
- `StagedRollout`: one generate call per stage, each stage decided on the rewards of the stages before it;
- `SpeculativeRollout`: one generate call for every candidate a stage may need, then the same decisions;
- `PipelinedRollout`: each prompt's next stage submitted to an engine as soon as its own previous stage is scored;
- `RolloutBatch`: the samples, which prefix tokens are imitated (one copy per distinct prefix), and counts.

One module each; the rules live in `StagedRollout` (``staged.py``), which the other schedulers subclass.
"""

from trapo.rollout.batch import RolloutBatch, Sample
from trapo.rollout.pipelined import PipelinedRollout, RequestEngine
from trapo.rollout.prefix import ExpertPrefix
from trapo.rollout.speculative import SpeculativeRollout
from trapo.rollout.staged import GenerateFn, ScoreFn, StagedRollout, whole_groups

ROLLOUTS: dict[str, type[StagedRollout]] = {
    "staged": StagedRollout,
    "speculative": SpeculativeRollout,
    "pipelined": PipelinedRollout,
}
ROLLOUT_CHOICES = ("auto", *ROLLOUTS)


def choose_rollout(setting: str, device_type: str, use_vllm: bool) -> str:
    """The rollout ``setting`` stands for: ``auto`` is the one measured fastest (docs/benchmarks.md), ``speculative``
    on every device measured so far: on an H200 (HF ``generate``: 0.95-1.13× a GRPO step, against 4.2-4.5× staged)
    and on 2 CPU cores (1.25-1.36× against staged's 1.46-1.49×, and pipelined's 2.5-2.7×: continuous batching on a
    CPU costs 1.4-2.6× ``generate`` per step before any TRAPO rule). ``pipelined`` has not been measured on a GPU
    (no GPU with vLLM was available); ask for it by name. All give the same decisions on the same samples."""
    if setting not in ROLLOUT_CHOICES:
        raise ValueError(f"rollout must be one of {ROLLOUT_CHOICES}, got {setting!r}")
    return "speculative" if setting == "auto" else setting


__all__ = [
    "ROLLOUTS",
    "ROLLOUT_CHOICES",
    "ExpertPrefix",
    "GenerateFn",
    "PipelinedRollout",
    "RequestEngine",
    "RolloutBatch",
    "Sample",
    "ScoreFn",
    "SpeculativeRollout",
    "StagedRollout",
    "choose_rollout",
    "whole_groups",
]
