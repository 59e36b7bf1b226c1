"""Every stage rule of the micro-group rollout, on `trapo.rollout` with fake generate and score (no model, no TRL)."""

from __future__ import annotations

import hashlib

import pytest

from trapo.core import PAPER_SCHEDULE, MicroGroup
from trapo.core.schedule import always_guided
from trapo.rollout import (
    ExpertPrefix,
    PipelinedRollout,
    RolloutBatch,
    Sample,
    SpeculativeRollout,
    StagedRollout,
    choose_rollout,
    whole_groups,
)

EOS, PARA = 1, 2  # token ids: end of sequence, paragraph break
BUDGET = 24


def tokenize(text: str) -> list[int]:
    """One token per character; "|" is the paragraph break."""
    return [PARA if c == "|" else 10 + ord(c) % 50 for c in text]


FIRST = "abcd|efgh|ijkl|mnop"  # 19 tokens, breaks at 4, 9, 14
SECOND = "qrstuvwx"
ROWS = [{"expert": [FIRST, SECOND], "id": g} for g in range(3)]
PROMPTS = [[100 + g, 101, 102] for g in range(3)]


class FakeGenerate:
    """Writes ``[context[0], len(context), EOS]`` (deterministic per context) and records every call."""

    def __init__(self, length: int = 3):
        self.calls: list[tuple[list[list[int]], int]] = []
        self.length = length

    def __call__(self, contexts, max_new):
        self.calls.append(([list(c) for c in contexts], max_new))
        out = [([c[0], len(c)] + [7] * self.length)[: self.length - 1] + [EOS] for c in contexts]
        return out, [[-0.5] * len(o) for o in out]


def score_by(table):
    """A score function: ``table(row, response) -> reward``, one reward function."""

    def score(rows, responses):
        rewards = [float(table(row, r)) for row, r in zip(rows, responses, strict=True)]
        return rewards, [[r] for r in rewards]

    return score


def rollout(kind=StagedRollout, stages=PAPER_SCHEDULE, score=None, generate=None, second=True, budget=BUDGET):
    prefix = ExpertPrefix(tokenize, budget, EOS, {PARA}, 0.3, second_trace_for_full=second)
    return kind(stages, prefix, generate or FakeGenerate(), score or score_by(lambda row, r: 0.0), budget, {EOS})


# ---------------------------------------------------------------------------------------------------- decisions


def test_all_failures_guide_every_later_stage_at_its_own_ratio():
    generate = FakeGenerate()
    batch = rollout(generate=generate).run(ROWS, PROMPTS)
    for group in batch.groups:
        assert [x.stage for x in group] == [0, 0, 0, 0, 1, 1, 2, 3]
        assert [x.guided for x in group] == [False] * 4 + [True] * 4
        # Stage 2 (ratio 0.25): k = 4, first break after index 4 is at 9 (< 0.55·19 = 10.45): 10 tokens.
        assert group[4].prefix == tokenize(FIRST)[:10] == group[5].prefix
        # Stage 3 (ratio 0.5): k = 9, first break after index 9 is at 14 (< 0.8·19 = 15.2): 15 tokens.
        assert group[6].prefix == tokenize(FIRST)[:15]
        # Stage 4 (ratio 1): the second trace + EOS, nothing generated.
        assert group[7].prefix == tokenize(SECOND) + [EOS] and group[7].continuation == []
    assert batch.guided_per_stage == [0, 3, 3, 3]
    assert batch.deepest_guided() == [3, 3, 3]


def test_all_successes_guide_nothing():
    batch = rollout(score=score_by(lambda row, r: 1.0)).run(ROWS, PROMPTS)
    assert not any(x.guided for x in batch.samples)
    assert batch.guided_per_stage == [0, 0, 0, 0]


def test_each_group_is_decided_on_its_own_rewards_with_strict_thresholds():
    # Group 0 solves everything; group 1 solves exactly half of stage 1 (0.5 is not < 0.5: stage 2 unguided), then
    # 4 of 6 (0.667 < 0.7: stage 3 guided); group 2 solves nothing.
    def table(row, response):
        g = row["id"]
        if g == 0:
            return 1.0
        if g == 1:
            return 1.0 if response and response[-1] == EOS and len(response) % 2 == 0 else 0.0
        return 0.0

    solved = {"count": 0}

    def score(rows, responses):
        rewards = []
        for row, r in zip(rows, responses, strict=True):
            if row["id"] == 1:  # stage 1: two of four; stage 2: both; stage 3: the guided one fails
                rewards.append(float(solved["count"] in (0, 1, 4, 5)))
                solved["count"] += 1
            else:
                rewards.append(table(row, r))
        return rewards, [[x] for x in rewards]

    batch = rollout(score=score).run(ROWS, PROMPTS)
    assert [x.guided for x in batch.groups[0]] == [False] * 8
    assert [x.guided for x in batch.groups[1]] == [False] * 6 + [True, True]  # stage 4: 5/7 < 0.9
    assert [x.guided for x in batch.groups[2]] == [False] * 4 + [True] * 4


def test_a_stage_does_not_inherit_the_previous_stages_guidance():
    # Stage 2 guided (all of stage 1 failed), stage 2's guided samples succeed: 2/6 < 0.7, stage 3 still guided at
    # its own ratio 0.5 (not 0.25); 3/7 < 0.9, stage 4 guided.
    score = score_by(lambda row, r: 1.0 if r[:1] == tokenize(FIRST)[:1] and len(r) < 15 else 0.0)
    group = rollout(score=score).run(ROWS[:1], PROMPTS[:1]).groups[0]
    assert [len(x.prefix) for x in group] == [0, 0, 0, 0, 10, 10, 15, len(SECOND) + 1]


def test_always_guided_stages_fire_whatever_the_rewards():
    batch = rollout(stages=always_guided(PAPER_SCHEDULE), score=score_by(lambda row, r: 1.0)).run(ROWS, PROMPTS)
    assert [x.guided for x in batch.groups[0]] == [False] * 4 + [True] * 4


def test_the_schedule_is_validated():
    with pytest.raises(ValueError, match="stage 1 must be unguided"):
        rollout(stages=(MicroGroup(2, 0.5, 0.5),))


# ---------------------------------------------------------------------------------------------------- prefixes


def test_full_trace_uses_the_first_trace_without_a_second_one_or_when_told():
    one_trace = [{"expert": [FIRST], "id": 0}]
    group = rollout().run(one_trace, PROMPTS[:1]).groups[0]
    assert group[7].prefix == tokenize(FIRST) + [EOS]
    group = rollout(second=False).run(ROWS[:1], PROMPTS[:1]).groups[0]
    assert group[7].prefix == tokenize(FIRST) + [EOS]


def test_prefixes_respect_the_budget():
    budget = 12
    group = rollout(budget=budget).run(ROWS[:1], PROMPTS[:1]).groups[0]
    # Stage 3's 15-token prefix leaves one token to write; the full trace (8 + EOS) fits.
    assert len(group[6].prefix) == budget - 1
    assert group[7].prefix == tokenize(SECOND) + [EOS]
    long_trace = [{"expert": [FIRST, FIRST], "id": 0}]
    group = rollout(budget=budget).run(long_trace, PROMPTS[:1]).groups[0]
    assert group[7].prefix == tokenize(FIRST)[:budget]  # truncated: loses its EOS
    assert group[7].continuation == []  # fills the budget: nothing to generate
    assert all(len(x.response) <= budget for x in group)


def test_the_cut_counts_the_eos_as_the_released_code_does():
    """k = ⌊ratio · (len + 1)⌋: the released code cuts its hint ids, which end with the EOS it appends."""
    rows = [{"expert": ["a" * 27, "b"], "id": 0}]  # no paragraph break: the cut is k itself
    prefix = ExpertPrefix(tokenize, 100, EOS, {PARA})
    assert len(prefix(rows[0], 0.5)) == 14 and len(prefix(rows[0], 0.25)) == 7  # not 13 and 6
    assert len(ExpertPrefix(tokenize, 100, EOS, {PARA})({"expert": ["a"]}, 0.99)) == 1  # never the EOS itself


def test_bad_expert_lists_are_refused_with_the_column_name():
    for bad in ([], "just a string", [3]):
        with pytest.raises(ValueError, match="'expert' must be a non-empty list of strings"):
            rollout().run([{"expert": bad, "id": 0}], PROMPTS[:1])


def test_each_trace_is_tokenized_once():
    seen = []

    def counting(text):
        seen.append(text)
        return tokenize(text)

    prefix = ExpertPrefix(counting, BUDGET, EOS, {PARA})
    StagedRollout(PAPER_SCHEDULE, prefix, FakeGenerate(), score_by(lambda row, r: 0.0), BUDGET, {EOS}).run(
        ROWS, PROMPTS
    )
    assert sorted(seen) == [FIRST, SECOND]


# ---------------------------------------------------------------------------------------------------- generation


def test_one_generate_call_per_stage_with_what_the_budget_leaves():
    generate = FakeGenerate()
    batch = rollout(generate=generate).run(ROWS, PROMPTS)
    assert [len(contexts) for contexts, _ in generate.calls] == [12, 6, 3, 0]  # stage 4: called, nothing to write
    assert [max_new for _, max_new in generate.calls] == [BUDGET, BUDGET - 10, BUDGET - 15, BUDGET]
    assert generate.calls[1][0][0] == PROMPTS[0] + tokenize(FIRST)[:10]  # context = prompt + prefix
    # One score call per stage, over every group's samples of that stage (stage 4's full traces are scored too).
    stages = [[x.stage for x in call] for call in batch.score_calls]
    assert stages == [[s] * (n * 3) for s, n in enumerate((4, 2, 1, 1))]
    assert batch.counts()["generated_tokens"] == sum(len(x.continuation) for x in batch.samples)


def test_continuations_are_cut_to_each_samples_remaining_budget():
    generate = FakeGenerate(length=30)
    batch = rollout(generate=generate).run(ROWS[:1], PROMPTS[:1])
    for x in batch.samples:
        assert len(x.response) <= BUDGET
        assert x.logprobs is None or len(x.logprobs) == len(x.continuation)


def test_generate_must_answer_every_context():
    def short(contexts, max_new):
        return [[EOS]] * (len(contexts) - 1), None

    with pytest.raises(RuntimeError, match="continuations for"):
        rollout(generate=short).run(ROWS, PROMPTS)


# ---------------------------------------------------------------------------------------------------- scoring


def test_every_sample_is_scored_on_prefix_plus_continuation():
    scored = []

    def score(rows, responses):
        scored.extend(responses)
        return [0.0] * len(responses), [[0.0]] * len(responses)

    batch = rollout(score=score).run(ROWS, PROMPTS)
    in_stage_order = sorted(batch.samples, key=lambda x: (x.stage, x.group))  # scored stage by stage
    assert scored == [x.response for x in in_stage_order]  # stage-4 samples included
    assert len(scored) == 24


def test_per_function_rewards_are_kept():
    def score(rows, responses):
        return [0.3] * len(responses), [[0.1, 0.2]] * len(responses)

    batch = rollout(score=score).run(ROWS, PROMPTS)
    assert all(x.reward == 0.3 and x.rewards_per_func == [0.1, 0.2] for x in batch.samples)


# ---------------------------------------------------------------------------------------------------- batch


def test_one_imitated_copy_per_distinct_prefix():
    batch = rollout().run(ROWS, PROMPTS)
    lengths = batch.imitated_lengths()
    assert lengths[:8] == [0, 0, 0, 0, 10, 0, 15, len(SECOND) + 1]
    assert lengths == lengths[:8] * 3  # per group, not per batch


def test_metrics_count_guidance_per_stage_and_its_success():
    score = score_by(lambda row, r: 1.0 if len(r) >= 15 else 0.0)  # only stage 3-4 (long prefixes) succeed
    batch = rollout(score=score).run(ROWS, PROMPTS)
    metrics = batch.metrics()
    assert metrics["guided_frac/stage2"] == metrics["guided_frac/stage3"] == metrics["guided_frac/stage4"] == 1.0
    assert metrics["guided_reward/stage2"] == 0.0 and metrics["guided_reward/stage3"] == 1.0
    assert metrics["reward_unguided"] == 0.0
    assert metrics["level_frac/3"] == 1.0
    prefix_tokens = sum(len(x.prefix) for x in batch.samples)
    assert metrics["prefix_token_frac"] == pytest.approx(prefix_tokens / sum(len(x.response) for x in batch.samples))


def test_whole_groups_accepts_consecutive_groups_and_refuses_the_rest():
    assert whole_groups(["a"] * 4 + ["b"] * 4, 4) == [0, 4]
    with pytest.raises(RuntimeError, match="not whole groups"):
        whole_groups(["a"] * 6, 4)
    with pytest.raises(RuntimeError, match="split across processes or shuffled"):
        whole_groups(["a", "b", "a", "b"], 2)


def test_rows_and_prompts_must_match():
    with pytest.raises(ValueError, match="one of each per group"):
        rollout().run(ROWS, PROMPTS[:2])


# ---------------------------------------------------------------------------------------------------- speculative


def hashed_reward(row, response) -> float:
    digest = hashlib.sha256(repr((row["id"], response)).encode()).digest()
    return 1.0 if digest[0] < 100 else 0.0


@pytest.mark.parametrize("reward", [hashed_reward, lambda row, r: 0.0, lambda row, r: 1.0], ids=["mixed", "0", "1"])
def test_speculative_picks_exactly_the_staged_samples_in_one_call(reward):
    rows = [{"expert": [FIRST, SECOND], "id": g} for g in range(12)]
    prompts = [[100 + g, 101] for g in range(12)]
    staged = rollout(score=score_by(reward)).run(rows, prompts)
    generate = FakeGenerate()
    speculative = rollout(SpeculativeRollout, score=score_by(reward), generate=generate).run(rows, prompts)

    def key(batch: RolloutBatch):
        return [(x.group, x.stage, x.prefix, x.continuation, x.reward) for x in batch.samples]

    assert key(speculative) == key(staged)
    assert speculative.guided_per_stage == staged.guided_per_stage
    assert len(generate.calls) == 1 and len(speculative.score_calls) == 4
    # Per prompt: 4 + (2 + 2) + (1 + 1) + 1 unguided stage-4 candidate; the guided stage-4 one needs no generation.
    assert len(generate.calls[0][0]) == 11 * len(rows)
    assert len(speculative.discarded) == 4 * len(rows)  # the branch not taken at stages 2, 3 and 4
    assert speculative.counts()["discarded_samples"] == len(speculative.discarded)


class FakeRequestEngine:
    """A `RequestEngine` that writes what `FakeGenerate` writes, and finishes requests in the order of a simulated
    clock: a request takes ``latency(context)`` time units from when it is submitted."""

    def __init__(self, latency=lambda context: 1.0):
        self.latency, self.now = latency, 0.0
        self.pending: list[tuple[float, int, object, list[int]]] = []
        self.submitted: list[tuple[float, object, list[int], int]] = []  # (time, key, context, max_new)
        self.finished: list[tuple[float, object]] = []

    def submit(self, key, context, max_new):
        import heapq

        self.submitted.append((self.now, key, list(context), max_new))
        heapq.heappush(self.pending, (self.now + self.latency(context), len(self.submitted), key, list(context)))

    def next_finished(self):
        import heapq

        self.now, _, key, context = heapq.heappop(self.pending)
        self.finished.append((self.now, key))
        out, logprobs = FakeGenerate()([context], 0)
        return key, out[0], logprobs[0]


@pytest.mark.parametrize("reward", [hashed_reward, lambda row, r: 0.0, lambda row, r: 1.0], ids=["mixed", "0", "1"])
def test_pipelined_gives_exactly_the_staged_batch_and_decodes_only_kept_rows(reward):
    rows = [{"expert": [FIRST, SECOND], "id": g} for g in range(12)]
    prompts = [[100 + g, 101] for g in range(12)]
    staged = rollout(score=score_by(reward)).run(rows, prompts)
    engine = FakeRequestEngine(latency=lambda context: 1.0 + (context[0] * 7 + len(context)) % 5)  # scrambled order
    pipelined = rollout(PipelinedRollout, score=score_by(reward), generate=engine).run(rows, prompts)

    def key(batch: RolloutBatch):
        return [(x.group, x.stage, x.prefix, x.continuation, x.logprobs, x.reward) for x in batch.samples]

    assert key(pipelined) == key(staged)
    assert pipelined.guided_per_stage == staged.guided_per_stage
    assert pipelined.imitated_lengths() == staged.imitated_lengths()
    assert pipelined.discarded == [] and pipelined.counts()["discarded_tokens"] == 0
    # One request per sample that writes anything, each asking for exactly what its sample can keep.
    generated = [x for x in staged.samples if x.continuation]
    assert len(engine.submitted) == len(generated)
    assert all(max_new == BUDGET - (len(context) - 2) for _, _, context, max_new in engine.submitted)


def test_a_slow_request_holds_back_only_its_own_prompt():
    slow = 100.0
    engine = FakeRequestEngine(latency=lambda context: slow if context[:3] == PROMPTS[0] and len(context) == 3 else 1.0)
    rollout(PipelinedRollout, generate=engine).run(ROWS, PROMPTS)
    # Prompt 0's stage 1 is slow: prompts 1 and 2 ran all their stages (4 + 2 + 1 requests each) before it ended.
    before = [key for t, key in engine.finished if t < slow]
    assert sorted(g for g, _, _ in before) == [1] * 7 + [2] * 7
    assert all(g == 0 for t, (g, _, _) in engine.finished if t >= slow)


def test_speculative_skips_unguided_candidates_of_always_guided_stages():
    generate = FakeGenerate()
    rollout(SpeculativeRollout, stages=always_guided(PAPER_SCHEDULE), generate=generate).run(ROWS, PROMPTS)
    assert len(generate.calls[0][0]) == (4 + 2 + 1) * len(ROWS)  # no unguided stage 2-4 candidates


def test_sample_response_is_prefix_then_continuation():
    x = Sample(group=0, stage=1, prefix=[5, 6], continuation=[7, EOS])
    assert x.response == [5, 6, 7, EOS] and x.guided
    assert not Sample(group=0, stage=0, prefix=[]).guided


@pytest.mark.parametrize(
    ("setting", "device", "vllm", "expected"),
    [
        ("auto", "cpu", False, "speculative"),  # measured fastest on 2 CPU cores and on an H200 (docs/benchmarks.md)
        ("auto", "cuda", False, "speculative"),
        ("auto", "cpu", True, "speculative"),
        ("staged", "cuda", True, "staged"),
        ("speculative", "cpu", False, "speculative"),
        ("pipelined", "cuda", True, "pipelined"),
    ],
)
def test_auto_rollout_is_the_one_measured_fastest(setting, device, vllm, expected):
    assert choose_rollout(setting, device, vllm) == expected


def test_unknown_rollouts_are_refused():
    with pytest.raises(ValueError, match="rollout must be one of"):
        choose_rollout("eager", "cpu", False)
