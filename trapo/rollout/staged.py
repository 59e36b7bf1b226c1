"""The stage rules and the stage-synchronous scheduler (docs/method.md, "Micro-group sampling").

`StagedRollout` holds every rule of the micro-group rollout (which stage is guided, with which prefix, what needs
generation, how continuations are cut to the budget and scored); the other schedulers subclass it and change only
*when* generation happens.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

from trapo.core import MicroGroup, is_guided, validate_schedule
from trapo.rollout.batch import RolloutBatch, Sample

GenerateFn = Callable[[list[list[int]], int], tuple[list[list[int]], list[list[float]] | None]]
"""``generate(contexts, max_new_tokens) -> (continuations, logprobs or None)``: one batched call; a context is the
prompt's ids followed by the sample's prefix. Called once per stage (speculative: once per step), possibly with no
contexts, so that every process of a distributed run makes the same number of calls."""

ScoreFn = Callable[[list[dict], list[list[int]]], tuple[list[float], list[list[float]]]]
"""``score(rows, responses) -> (reward per response, per-function rewards per response)``; a response is the
prefix followed by the continuation (the reward judges the whole answer)."""


class StagedRollout:
    """Draw each prompt's group stage by stage: one batched generate call per stage, over every prompt of the step.

    A stage is guided for a prompt iff it can guide and the mean reward of that prompt's earlier samples is below its
    threshold (`trapo.core.is_guided`); a guided stage shows ``expert_prefix(row, stage.prefix_ratio)`` and the model
    writes the rest. A sample whose prefix is already finished (the full trace + EOS, or a prefix that fills the
    budget) is not generated. Every sample is scored on prefix + continuation.
    """

    def __init__(
        self,
        stages: Sequence[MicroGroup],
        expert_prefix: Callable[[dict, float], list[int]],
        generate: GenerateFn,
        score: ScoreFn,
        budget: int,
        eos_token_ids: Collection[int],
    ):
        self.stages, self.expert_prefix = validate_schedule(stages), expert_prefix
        self.generate_fn, self.score_fn = generate, score
        self.budget, self.eos_token_ids = budget, frozenset(eos_token_ids)

    def run(self, rows: Sequence[dict], prompt_ids: Sequence[list[int]]) -> RolloutBatch:
        """Sample every group; ``rows[g]`` and ``prompt_ids[g]`` describe group ``g`` (one entry per prompt)."""
        batch = self._empty_batch(rows, prompt_ids)
        for s in range(len(self.stages)):
            requests = []
            for g, row in enumerate(rows):
                guided = self.decide(s, batch.groups[g])
                batch.guided_per_stage[s] += guided
                requests.extend(self.stage_samples(g, s, row, guided))
            self._generate(requests, prompt_ids, batch)
            self._score(requests, rows, batch)
            for x in requests:
                batch.groups[x.group].append(x)
        return batch

    def _empty_batch(self, rows: Sequence[dict], prompt_ids: Sequence[list[int]]) -> RolloutBatch:
        if len(rows) != len(prompt_ids):
            raise ValueError(f"{len(rows)} rows but {len(prompt_ids)} prompts: give one of each per group")
        return RolloutBatch(groups=[[] for _ in rows], guided_per_stage=[0] * len(self.stages))

    def decide(self, s: int, earlier: list[Sample]) -> bool:
        """Whether stage ``s`` of a group is guided, given that group's samples so far (stage 1 never is)."""
        return s > 0 and is_guided(self.stages[s], [x.reward for x in earlier])

    def stage_samples(self, g: int, s: int, row, guided: bool) -> list[Sample]:
        """Stage ``s``'s samples for group ``g``: shown the stage's expert prefix when ``guided``, else none."""
        stage = self.stages[s]
        prefix = self.expert_prefix(row, stage.prefix_ratio) if guided else []
        return [Sample(group=g, stage=s, prefix=list(prefix)) for _ in range(stage.n)]

    def needs_generation(self, sample: Sample) -> bool:
        """False when the prefix leaves nothing to write: it ends with EOS (the full trace) or fills the budget."""
        return not (sample.prefix and sample.prefix[-1] in self.eos_token_ids) and len(sample.prefix) < self.budget

    def _generate(self, samples: list[Sample], prompt_ids: Sequence[list[int]], batch: RolloutBatch) -> None:
        """One generate call for the samples that need one; a prefix spends part of the budget, so the call decodes
        only what the least-prefixed sample can keep, and each continuation is cut to its own remaining budget."""
        todo = [x for x in samples if self.needs_generation(x)]
        max_new = self.budget - min((len(x.prefix) for x in todo), default=0)
        continuations, logprobs = self.generate_fn([list(prompt_ids[x.group]) + x.prefix for x in todo], max_new)
        if len(continuations) != len(todo):
            raise RuntimeError(f"generate returned {len(continuations)} continuations for {len(todo)} contexts")
        for i, x in enumerate(todo):
            keep = self.budget - len(x.prefix)
            x.continuation = list(continuations[i])[:keep]
            x.logprobs = list(logprobs[i])[:keep] if logprobs is not None else None

    def _score(self, samples: list[Sample], rows: Sequence[dict], batch: RolloutBatch) -> None:
        if not samples:
            return
        batch.score_calls.append(samples)
        totals, per_func = self.score_fn([rows[x.group] for x in samples], [x.response for x in samples])
        if len(totals) != len(samples) or len(per_func) != len(samples):
            raise RuntimeError(f"score returned {len(totals)} rewards for {len(samples)} responses")
        for x, total, values in zip(samples, totals, per_func, strict=True):
            x.reward, x.rewards_per_func = float(total), list(values)


def whole_groups(items: Sequence, group_size: int) -> list[int]:
    """Start index of each group of ``group_size`` identical consecutive items; raises when the batch is not whole,
    consecutive groups (TRAPO decides per prompt, so a prompt's samples must sit together on one process)."""
    if group_size < 1 or len(items) % group_size != 0:
        raise RuntimeError(f"local batch of {len(items)} samples is not whole groups of {group_size}")
    starts = list(range(0, len(items), group_size))
    for start in starts:
        if any(item != items[start] for item in items[start : start + group_size]):
            raise RuntimeError(
                "a prompt group is split across processes or shuffled: TRAPO needs each group's samples consecutive "
                "on one process (per_device_train_batch_size × steps_per_generation must be a multiple of "
                "num_generations)"
            )
    return starts
