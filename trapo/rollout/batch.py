"""A step's samples (`Sample`) and what the rollout did to get them (`RolloutBatch`): which prefix tokens are
imitated (one copy per distinct prefix), counts and guidance metrics."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class Sample:
    """One sample of a prompt's group: its stage, the expert prefix it was shown, what the model wrote."""

    group: int
    stage: int
    prefix: list[int]
    continuation: list[int] = field(default_factory=list)
    logprobs: list[float] | None = None
    reward: float = 0.0
    rewards_per_func: list[float] = field(default_factory=list)

    @property
    def response(self) -> list[int]:
        return self.prefix + self.continuation

    @property
    def guided(self) -> bool:
        return bool(self.prefix)


@dataclass
class RolloutBatch:
    """A step's samples, group by group (each group in stage order), with what the rollout did to get them."""

    groups: list[list[Sample]]
    guided_per_stage: list[int]  # how many groups each stage guided
    discarded: list[Sample] = field(default_factory=list)  # speculative candidates no decision picked
    score_calls: list[list[Sample]] = field(default_factory=list)  # the samples of each score call, in its order

    @property
    def samples(self) -> list[Sample]:
        return [x for group in self.groups for x in group]

    @property
    def group_ids(self) -> list[int]:
        return [x.group for x in self.samples]

    def imitated_lengths(self) -> list[int]:
        """Per sample, how many leading prefix tokens carry the prefix loss: a prefix is imitated once per group
        (by its first sample); later copies of the same prefix are context only (docs/method.md)."""
        lengths = []
        for group in self.groups:
            seen: set[tuple[int, ...]] = set()
            for x in group:
                key = tuple(x.prefix)
                lengths.append(len(x.prefix) if x.prefix and key not in seen else 0)
                seen.add(key)
        return lengths

    def deepest_guided(self) -> list[int]:
        """Per group, the last stage that was guided (0 when none was)."""
        return [max((x.stage for x in group if x.guided), default=0) for group in self.groups]

    def counts(self) -> Counter:
        """What this rollout generated, kept and discarded (summed into the trainer's ``rollout_stats``)."""
        samples = self.samples
        return Counter(
            prompts=len(self.groups),
            samples=len(samples),
            guided_samples=sum(x.guided for x in samples),
            generated_tokens=sum(len(x.continuation) for x in samples + self.discarded),
            discarded_samples=len(self.discarded),
            discarded_tokens=sum(len(x.continuation) for x in self.discarded),
        )

    def metrics(self) -> dict[str, float]:
        """Per-step guidance metrics (docs/metrics.md): how often each stage guided and how guided samples fared."""
        samples, num_groups = self.samples, max(len(self.groups), 1)
        prefix_tokens = sum(len(x.prefix) for x in samples)
        total_tokens = sum(len(x.response) for x in samples)
        unguided = [x.reward for x in samples if not x.guided]
        metrics = {
            "prefix_token_frac": prefix_tokens / max(total_tokens, 1),
            "discarded_tokens": float(sum(len(x.continuation) for x in self.discarded)),
            "reward_unguided": sum(unguided) / max(len(unguided), 1),
        }
        deepest = self.deepest_guided()
        for s in range(len(self.guided_per_stage)):
            metrics[f"level_frac/{s}"] = sum(1 for d in deepest if d == s) / num_groups
            if s == 0:
                continue
            metrics[f"guided_frac/stage{s + 1}"] = self.guided_per_stage[s] / num_groups
            guided = [x.reward for x in samples if x.stage == s and x.guided]
            # NaN when the stage guided nothing here: the keys are the same on every process (they are gathered).
            metrics[f"guided_reward/stage{s + 1}"] = sum(guided) / len(guided) if guided else math.nan
        return metrics
