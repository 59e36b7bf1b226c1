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
    """The rollout ``setting`` stands for: ``auto`` is ``speculative`` where generation runs on a GPU (CUDA or vLLM),
    where one decode loop costs about the same for 11 rows per prompt as for 8, so sequential stages would multiply
    the generation time (measured: docs/benchmarks.md); and ``staged`` on CPU, where every row costs compute and the
    discarded candidates would not pay. Both give the same samples in distribution and the same decisions."""
    if setting not in ROLLOUT_CHOICES:
        raise ValueError(f"rollout must be one of {ROLLOUT_CHOICES}, got {setting!r}")
    if setting != "auto":
        return setting
    return "speculative" if use_vllm or device_type == "cuda" else "staged"


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
