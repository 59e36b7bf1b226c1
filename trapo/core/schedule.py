"""Micro-group guidance schedule (docs/method.md, "Micro-group sampling"): the schedule is data, the decision one
function."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class MicroGroup:
    """One sampling stage of a prompt's group.

    Attributes:
        n: samples drawn at this stage.
        prefix_ratio: share of the expert trace shown as a prefix when guided (0 = never guided,
            1 = the whole trace, nothing generated).
        threshold: the stage is guided when the mean reward of all earlier samples of the prompt is
            strictly below it. ``math.inf`` = always guided; ignored when ``prefix_ratio`` is 0.
    """

    n: int
    prefix_ratio: float = 0.0
    threshold: float | None = None

    @property
    def can_guide(self) -> bool:
        return self.prefix_ratio > 0.0


PAPER_SCHEDULE: tuple[MicroGroup, ...] = (
    MicroGroup(4, 0.0),
    MicroGroup(2, 0.25, 0.5),
    MicroGroup(1, 0.5, 0.7),
    MicroGroup(1, 1.0, 0.9),
)
"""The paper's schedule (ratio 0.25 at stage 2 as in its code and figure; the text says 0.2)."""

REFERENCE_CODE_SCHEDULE: tuple[MicroGroup, ...] = (
    MicroGroup(4, 0.0),
    MicroGroup(2, 0.25, 0.5),
    MicroGroup(1, 0.5, 0.66),
    MicroGroup(1, 1.0, 0.9),
)
"""The released code's behaviour: stage 3 fires when fewer than 4 of the 6 earlier samples succeed."""


SCHEDULES: dict[str, tuple[MicroGroup, ...]] = {"paper": PAPER_SCHEDULE, "released": REFERENCE_CODE_SCHEDULE}
"""Schedules by name (``schedule: paper`` in a config)."""


def named_schedule(name: str) -> tuple[MicroGroup, ...]:
    """The schedule called ``name`` (`SCHEDULES`); an error naming the choices otherwise."""
    if name not in SCHEDULES:
        raise ValueError(
            f"schedule {name!r} is not a known schedule ({', '.join(SCHEDULES)}); give a name or a list of "
            "{n, prefix_ratio, threshold} stages"
        )
    return SCHEDULES[name]


def validate_schedule(schedule: Sequence[MicroGroup]) -> tuple[MicroGroup, ...]:
    """Check a schedule and return it as a tuple; raise ``ValueError`` naming the bad stage."""
    stages = tuple(schedule)
    if not stages:
        raise ValueError("schedule is empty: give at least one stage, e.g. [{n: 8}] for plain GRPO")
    previous_ratio = 0.0
    for i, stage in enumerate(stages, start=1):
        if not isinstance(stage, MicroGroup):
            raise ValueError(f"schedule stage {i} is {stage!r}, expected a MicroGroup")
        if not isinstance(stage.n, int) or isinstance(stage.n, bool) or stage.n < 1:
            raise ValueError(f"schedule stage {i}: n must be an integer >= 1, got {stage.n!r}")
        if not 0.0 <= stage.prefix_ratio <= 1.0:
            raise ValueError(f"schedule stage {i}: prefix_ratio must lie in [0, 1], got {stage.prefix_ratio}")
        if stage.prefix_ratio < previous_ratio:
            raise ValueError(
                f"schedule stage {i}: prefix_ratio {stage.prefix_ratio} is below the previous stage's "
                f"{previous_ratio}; ratios must be ascending"
            )
        if stage.can_guide and (stage.threshold is None or math.isnan(stage.threshold)):
            raise ValueError(f"schedule stage {i}: a guided stage (prefix_ratio > 0) needs a threshold")
        previous_ratio = stage.prefix_ratio
    if stages[0].can_guide:
        raise ValueError("schedule stage 1 must be unguided (prefix_ratio 0): guidance needs earlier rewards")
    return stages


def schedule_size(schedule: Sequence[MicroGroup]) -> int:
    """Total samples per prompt, which must equal ``num_generations``."""
    return sum(stage.n for stage in schedule)


def is_guided(stage: MicroGroup, earlier_rewards: Sequence[float]) -> bool:
    """Whether ``stage`` shows its prefix, given the rewards of all earlier samples of the prompt.

    Guided iff the stage can guide and the mean earlier reward is strictly below its threshold.
    """
    if not stage.can_guide:
        return False
    if len(earlier_rewards) == 0:
        raise ValueError("a guided stage needs the rewards of at least one earlier sample")
    return sum(earlier_rewards) / len(earlier_rewards) < stage.threshold


def parse_schedule(schedule: str | Sequence[Mapping | MicroGroup]) -> tuple[MicroGroup, ...]:
    """A schedule from config data (a name in `SCHEDULES`, a list of ``{n, prefix_ratio, threshold}`` mappings, or
    `MicroGroup`s), validated.

    Why a parser: configs (YAML, ``--set schedule=...``) hold plain mappings; this is the one place they become
    `MicroGroup`s, so an unknown key or a missing ``n`` is reported by stage number rather than as a TypeError.
    """
    if isinstance(schedule, str):
        return named_schedule(schedule)
    stages = []
    for i, stage in enumerate(schedule, start=1):
        if isinstance(stage, MicroGroup):
            stages.append(stage)
            continue
        if not isinstance(stage, Mapping) or "n" not in stage:
            raise ValueError(f"schedule stage {i} must be a mapping with at least 'n', got {stage!r}")
        unknown = set(stage) - {"n", "prefix_ratio", "threshold"}
        if unknown:
            raise ValueError(f"schedule stage {i} has unknown keys {sorted(unknown)}; use n, prefix_ratio, threshold")
        threshold = stage.get("threshold")
        stages.append(
            MicroGroup(
                n=stage["n"],
                prefix_ratio=float(stage.get("prefix_ratio", 0.0)),
                threshold=None if threshold is None else float(threshold),
            )
        )
    return validate_schedule(stages)


def schedule_as_data(schedule: Sequence[MicroGroup]) -> list[dict]:
    """The inverse of `parse_schedule`: plain mappings for configs, YAML and logs (unguided stages without a
    threshold)."""
    return [{k: v for k, v in asdict(s).items() if not (k == "threshold" and v is None)} for s in schedule]


def always_guided(schedule: Sequence[MicroGroup]) -> tuple[MicroGroup, ...]:
    """The same stages with every guided stage firing whatever the rewards (threshold ∞): the non-adaptive
    ``fixed-prefix`` baseline."""
    return tuple(MicroGroup(s.n, s.prefix_ratio, math.inf) if s.can_guide else s for s in schedule)
