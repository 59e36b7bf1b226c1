"""The micro-group rollout (docs/method.md, "Micro-group sampling"): stages in, samples out.

A prompt's G samples are drawn in stages; a later stage shows part of an expert solution as a prefix when the
samples so far mostly failed. This module is that procedure and nothing else: generation and scoring are passed
in as callables, so every rule is tested with fakes (``tests/test_rollout.py``) and the trainer only adapts TRL's
generation and reward calls to the two signatures below. It imports no trainer and logs nothing.

- `ExpertPrefix`: which trace a stage cuts and where (``trapo.core.cut_prefix``), within the token budget;
- `StagedRollout`: one generate call per stage, each stage decided on the rewards of the stages before it;
- `SpeculativeRollout`: one generate call for every candidate a stage may need, then the same decisions;
- `RolloutBatch`: the samples, which prefix tokens are imitated (one copy per distinct prefix), and counts.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

from trapo.core import MicroGroup, cut_prefix, is_guided, validate_schedule

GenerateFn = Callable[[list[list[int]], int], tuple[list[list[int]], list[list[float]] | None]]
"""``generate(contexts, max_new_tokens) -> (continuations, logprobs or None)``: one batched call; a context is the
prompt's ids followed by the sample's prefix. Called once per stage (speculative: once per step), possibly with no
contexts, so that every process of a distributed run makes the same number of calls."""

ScoreFn = Callable[[list[dict], list[list[int]]], tuple[list[float], list[list[float]]]]
"""``score(rows, responses) -> (reward per response, per-function rewards per response)``; a response is the
prefix followed by the continuation (the reward judges the whole answer)."""


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


class ExpertPrefix:
    """The token ids a guided sample is shown: ``expert_prefix(row, ratio)``.

    Rules (docs/method.md): ratios below 1 cut the *first* trace at a paragraph boundary near ⌊ratio·len⌋, len
    counting the trace's EOS (`trapo.core.cut_prefix`), leaving at least one token of budget to generate; ratio 1 is
    the whole trace + EOS (nothing left to generate), taken from the *second* trace when the row has one and
    ``second_trace_for_full``; a trace longer than the budget is truncated to it (and loses its EOS). Tokenisation is
    cached per trace text.
    """

    def __init__(
        self,
        tokenize: Callable[[str], list[int]],
        budget: int,
        eos_token_id: int,
        boundary_ids: Collection[int] = (),
        lookahead: float = 0.3,
        second_trace_for_full: bool = True,
        expert_column: str = "expert",
    ):
        self.tokenize, self.budget, self.eos_token_id = tokenize, budget, eos_token_id
        self.boundary_ids, self.lookahead = frozenset(boundary_ids), lookahead
        self.second_trace_for_full, self.expert_column = second_trace_for_full, expert_column
        self._ids: dict[str, list[int]] = {}

    def trace(self, row: dict, ratio: float) -> str:
        """The expert trace a stage at ``ratio`` cuts its prefix from."""
        traces = row[self.expert_column]
        if not isinstance(traces, list | tuple) or not traces or not all(isinstance(t, str) for t in traces):
            raise ValueError(f"{self.expert_column!r} must be a non-empty list of strings, got {traces!r:.80}")
        use_second = ratio >= 1.0 and self.second_trace_for_full and len(traces) > 1
        return traces[1] if use_second else traces[0]

    def __call__(self, row: dict, ratio: float) -> list[int]:
        text = self.trace(row, ratio)
        ids = self._ids.get(text)
        if ids is None:
            ids = self._ids[text] = list(self.tokenize(text))
        if ratio >= 1.0:
            return ids + [self.eos_token_id] if len(ids) < self.budget else ids[: self.budget]
        # Cut over the trace + EOS, as the released code counts it; the EOS itself is never part of a partial prefix.
        cut = cut_prefix([*ids, self.eos_token_id], ratio, self.boundary_ids, self.lookahead)
        return ids[: min(cut, len(ids), self.budget - 1)]


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


ROLLOUTS: dict[str, type[StagedRollout]] = {"staged": StagedRollout, "speculative": SpeculativeRollout}
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
