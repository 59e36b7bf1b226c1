"""Speculative scheduling: every candidate a stage may need, decoded in one call, then the staged decisions."""

from __future__ import annotations

import math
from collections.abc import Sequence

from trapo.rollout.batch import RolloutBatch, Sample
from trapo.rollout.staged import StagedRollout


class SpeculativeRollout(StagedRollout):
    """The same samples as `StagedRollout` in one generate call: every candidate a stage may need is drawn up front.

    For each prompt and each later stage, an unguided candidate set is drawn unless the stage is always guided
    (threshold ∞), and a guided one when the stage can guide. Decisions are then taken stage by stage, exactly as
    `StagedRollout` takes them, on the rewards of the picked samples only; the other candidate set is discarded
    (and scored only if picked). Each candidate is an independent draw given its own context, so the picked samples
    are distributed exactly as if each stage had been generated after its decision (``tests/test_rollout.py``).
    """

    def run(self, rows: Sequence[dict], prompt_ids: Sequence[list[int]]) -> RolloutBatch:
        batch = self._empty_batch(rows, prompt_ids)
        candidates = self._candidates(rows)
        self._generate([x for group in candidates.values() for x in group], prompt_ids, batch)
        for s in range(len(self.stages)):
            picked = []
            for g in range(len(rows)):
                guided = self.decide(s, batch.groups[g])
                batch.guided_per_stage[s] += guided
                picked.extend(candidates.pop((g, s, guided)))
            self._score(picked, rows, batch)
            for x in picked:
                batch.groups[x.group].append(x)
        batch.discarded = [x for group in candidates.values() for x in group]
        return batch

    def _candidates(self, rows: Sequence[dict]) -> dict[tuple[int, int, bool], list[Sample]]:
        """``(group, stage, guided) -> samples`` for every branch a decision may take."""
        candidates: dict[tuple[int, int, bool], list[Sample]] = {}
        for g, row in enumerate(rows):
            for s, stage in enumerate(self.stages):
                can_guide = s > 0 and stage.can_guide
                if not (can_guide and stage.threshold == math.inf):
                    candidates[(g, s, False)] = self.stage_samples(g, s, row, guided=False)
                if can_guide:
                    candidates[(g, s, True)] = self.stage_samples(g, s, row, guided=True)
        return candidates
