"""`trapo.experimental.pipeline`: per-prompt stage pipelining on a fake async engine (no model, no GPU, fast)."""

from __future__ import annotations

import asyncio
import hashlib
import math
import time

import pytest

from trapo.core import PAPER_SCHEDULE, MicroGroup, is_guided
from trapo.experimental.pipeline import FakeEngine, run_pipelined, run_stage_synchronous, simulate

EOS = 1
PROMPTS = [[100 + g, 10 + g, 20 + g] for g in range(6)]  # distinct first ids: prompt g is ids[0] - 100
TRACES = [[50 + g] * 3 + [60 + g] * 5 for g in range(len(PROMPTS))]  # 8 tokens per expert trace
RUNNERS = {"pipelined": run_pipelined, "synchronous": run_stage_synchronous}


def expert_prefix(g: int, ratio: float) -> list[int]:
    """The trapo convention: the whole trace + EOS at ratio 1, else its first ⌊ratio·len⌋ tokens."""
    trace = TRACES[g]
    return trace + [EOS] if ratio >= 1.0 else trace[: int(ratio * len(trace))]


def output(ids: list[int], k: int) -> list[int]:
    """Completion depends on the request's ids and its index among identical requests (so both schedulers agree)."""
    return [ids[0], len(ids), k, EOS]


def hashed(*parts) -> float:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "big") / 2**64


def constant_score(value: float):
    def score(g: int, responses: list[list[int]]) -> list[float]:
        return [value] * len(responses)

    return score


def mixed_score(g: int, responses: list[list[int]]) -> list[float]:
    return [1.0 if hashed("reward", g, r) < 0.5 else 0.0 for r in responses]


def run(runner, stages=PAPER_SCHEDULE, score=mixed_score, latency=lambda ids, k: 0.0, prompts=PROMPTS):
    engine = FakeEngine(output, latency)
    start = time.perf_counter()
    result = asyncio.run(RUNNERS[runner](prompts, stages, engine, expert_prefix, score))
    return result, engine, time.perf_counter() - start


def as_tuples(result) -> list[list[tuple]]:
    return [[(x.group, x.stage, tuple(x.prefix), tuple(x.continuation), x.reward) for x in g] for g in result]


@pytest.mark.parametrize("score", [mixed_score, constant_score(0.0), constant_score(1.0)], ids=["mixed", "0", "1"])
def test_pipelined_and_synchronous_produce_identical_samples(score):
    # Jittered latencies: completion order differs from submission order, answers must not.
    def latency(ids, k):
        return 0.004 * hashed("latency", ids, k)

    pipelined, _, _ = run("pipelined", score=score, latency=latency)
    synchronous, _, _ = run("synchronous", score=score, latency=latency)
    assert as_tuples(pipelined) == as_tuples(synchronous)
    n = sum(stage.n for stage in PAPER_SCHEDULE)
    for g, samples in enumerate(pipelined):
        assert len(samples) == n
        assert [x.stage for x in samples] == [s for s, stage in enumerate(PAPER_SCHEDULE) for _ in range(stage.n)]
        assert all(x.group == g for x in samples)


@pytest.mark.parametrize("runner", sorted(RUNNERS))
def test_guidance_decisions_follow_is_guided(runner):
    result, engine, _ = run(runner, score=mixed_score)
    decisions = set()
    for g, samples in enumerate(result):
        for s, stage in enumerate(PAPER_SCHEDULE):
            earlier = [x.reward for x in samples if x.stage < s]
            guided = s > 0 and is_guided(stage, earlier)
            decisions.add(guided)
            expected = expert_prefix(g, stage.prefix_ratio) if guided else []
            assert all(x.prefix == expected for x in samples if x.stage == s), (g, s)
        # Every reward is the score of the whole response (prefix + continuation).
        assert [x.reward for x in samples] == mixed_score(g, [x.prefix + x.continuation for x in samples])
    assert decisions == {True, False}, "the hashed rewards should exercise both branches"
    # One engine request per sample, except full-trace stages (guided at ratio 1: nothing left to write).
    full_trace = sum(1 for samples in result for x in samples if x.prefix and x.prefix[-1] == EOS)
    assert len(engine.log) == sum(len(samples) for samples in result) - full_trace


@pytest.mark.parametrize("runner", sorted(RUNNERS))
def test_reward_zero_guides_every_later_stage_with_its_ratio(runner):
    result, engine, _ = run(runner, score=constant_score(0.0))
    for g, samples in enumerate(result):
        for x in samples:
            stage = PAPER_SCHEDULE[x.stage]
            assert x.prefix == (expert_prefix(g, stage.prefix_ratio) if x.stage > 0 else [])
        assert [len(x.prefix) for x in samples] == [0, 0, 0, 0, 2, 2, 4, 9]  # 0.25·8, 0.5·8, all 8 + EOS
        last = samples[-1]
        assert last.prefix[-1] == EOS and last.continuation == []  # the full-trace stage generated nothing
        # Each guided request is sent as prompt + prefix; the engine numbers identical requests 0, 1, …
        assert [x.continuation for x in samples[:7]] == [output(PROMPTS[g], k) for k in range(4)] + [
            output(PROMPTS[g] + TRACES[g][:2], 0),
            output(PROMPTS[g] + TRACES[g][:2], 1),
            output(PROMPTS[g] + TRACES[g][:4], 0),
        ]
    # 4 + 2 + 1 requests per prompt; none carries the full trace.
    assert len(engine.log) == 7 * len(PROMPTS)
    assert not any(key[-1] == EOS for _, _, key in engine.log)


@pytest.mark.parametrize("runner", sorted(RUNNERS))
def test_reward_one_guides_nothing(runner):
    result, engine, _ = run(runner, score=constant_score(1.0))
    for g, samples in enumerate(result):
        assert all(x.prefix == [] for x in samples)
        # All 8 requests are identical: the engine numbers them 0..7 in submission order, stage by stage.
        assert [x.continuation for x in samples] == [output(PROMPTS[g], k) for k in range(8)]
        assert all(x.reward == 1.0 for x in samples)
    assert len(engine.log) == 8 * len(PROMPTS)


@pytest.mark.parametrize("runner", sorted(RUNNERS))
def test_full_trace_stage_issues_no_engine_request(runner):
    stages = (MicroGroup(2), MicroGroup(1, 1.0, math.inf))  # stage 2: always the whole trace + EOS
    seen: list[tuple[int, list[list[int]]]] = []

    def score(g, responses):
        seen.append((g, responses))
        return [0.0] * len(responses)

    result, engine, _ = run(runner, stages=stages, score=score, prompts=PROMPTS[:3])
    assert len(engine.log) == 2 * 3  # stage 1 only
    assert all(len(key) == len(PROMPTS[0]) for _, _, key in engine.log)  # bare prompts, no prefix
    for g, samples in enumerate(result):
        last = samples[-1]
        assert last.stage == 1 and last.prefix == TRACES[g] + [EOS] and last.continuation == []
        assert (g, [TRACES[g] + [EOS]]) in seen  # still scored, on the prefix alone


def test_full_ratio_stage_unguided_still_generates():
    stages = (MicroGroup(2), MicroGroup(1, 1.0, 0.5))
    result, engine, _ = run("pipelined", stages=stages, score=constant_score(1.0), prompts=PROMPTS[:2])
    assert len(engine.log) == 3 * 2
    assert all(x.prefix == [] and x.continuation for samples in result for x in samples)


SLOW, FAST = 0.2, 0.01


def test_slow_request_stalls_only_its_own_prompt_when_pipelined():
    prompts = PROMPTS[:4]

    def latency(ids, k):  # prompt 0's first request is slow, everything else fast
        return SLOW if ids == prompts[0] and k == 0 else FAST

    (pipelined, p_engine, _), (synchronous, s_engine, _) = (
        run(name, score=constant_score(1.0), latency=latency, prompts=prompts) for name in ("pipelined", "synchronous")
    )
    assert as_tuples(pipelined) == as_tuples(synchronous)

    def slow_end(engine):
        (end,) = [e for s, e, key in engine.log if list(key) == prompts[0] and e - s >= SLOW * 0.9]
        return end

    # Pipelined: every other prompt has finished all 4 stages (8 requests each) before the slow request ends.
    others = [e for _, e, key in p_engine.log if list(key) != prompts[0]]
    assert len(others) == 8 * 3
    assert max(others) < slow_end(p_engine)
    # Synchronous: the barrier holds back every prompt's stage 2 until the slow stage-1 request is done.
    stage1_requests = 4 * len(prompts)
    later_starts = [s for s, _, _ in s_engine.log[stage1_requests:]]  # log is in completion order
    assert len(later_starts) == 4 * len(prompts)
    assert min(later_starts) >= slow_end(s_engine)


def test_pipelined_wall_time_beats_synchronous_with_staggered_slow_requests():
    prompts = PROMPTS[:4]
    slow_k = {0: 0, 1: 4, 2: 6, 3: 7}  # prompt g is slow at stage g + 1 (k numbers identical requests)

    def latency(ids, k):
        g = ids[0] - 100
        return SLOW if slow_k[g] == k else FAST

    _, _, pipelined_s = run("pipelined", score=constant_score(1.0), latency=latency, prompts=prompts)
    _, _, synchronous_s = run("synchronous", score=constant_score(1.0), latency=latency, prompts=prompts)
    # Synchronous pays every stage's slowest request: ≈ 4 × SLOW; pipelined ≈ SLOW + 3 × FAST.
    assert synchronous_s >= 4 * SLOW * 0.95
    assert pipelined_s < 2 * SLOW
    assert pipelined_s < 0.5 * synchronous_s


def test_simulate_small_makes_the_same_decisions():
    sim = simulate(prompts=4, unit_ms=0.001, max_tokens=256)
    assert sim["same_decisions"] is True
    assert sim["prompts"] == 4 and sim["unit_ms"] == 0.001
    assert sim["synchronous_s"] > 0 and sim["pipelined_s"] > 0
