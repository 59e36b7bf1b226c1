"""Per-prompt stage pipelining for an asynchronous generation engine (experimental: not wired into the trainer).

`TRAPOTrainer` generates stage by stage for the whole batch: every prompt waits until the slowest request of the
stage has finished before any prompt's next stage starts. With an engine that serves requests independently
(vLLM's continuous batching), a prompt's next stage can be submitted as soon as *its own* previous stage is done,
so one long rollout stalls only its own prompt. This module is that scheduler, engine-agnostic and small:

- an engine is anything with ``async generate(prompt_ids) -> completion_ids`` (one sample per call);
- `run_pipelined` runs one coroutine per prompt: stage k's decision and samples come from the same rules as the
  trainer's (`trapo.rollout.StagedRollout.decide` / ``stage_samples``), on the rewards of that prompt's earlier
  samples only, then the stage's ``n`` requests are submitted concurrently;
- `run_stage_synchronous` is the trainer's order (a barrier after every stage), for comparison.

Status: tested with a fake engine (`FakeEngine`, latencies chosen per request). It is **not wired into
TRAPOTrainer's vLLM path** (TRL 1.16 drives vLLM synchronously, in colocate mode through ``LLM.generate`` and in
server mode through batched HTTP calls; neither exposes per-request completion), and it has not been run on a GPU.
An adapter for vLLM's ``AsyncLLM`` would implement ``generate`` by iterating ``engine.generate(...)`` to its final
output.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from trapo.core import PAPER_SCHEDULE, MicroGroup
from trapo.rollout import Sample, StagedRollout


class AsyncEngine(Protocol):
    async def generate(self, prompt_ids: list[int]) -> list[int]: ...


PrefixFn = Callable[[int, float], list[int]]  # (group, prefix_ratio) -> expert prefix ids
ScoreFn = Callable[[int, list[list[int]]], list[float]]  # (group, responses = prefix + continuation) -> rewards


def _rules(stages: Sequence[MicroGroup], expert_prefix: PrefixFn) -> StagedRollout:
    """The stage rules of `trapo.rollout.StagedRollout` (decisions, prefixes, what needs generation), with groups
    standing in for rows; generation and scoring are this module's own, per request."""
    return StagedRollout(stages, expert_prefix, generate=None, score=None, budget=2**31, eos_token_ids=())


def _stage_requests(rules: StagedRollout, g: int, s: int, earlier: list[Sample]) -> list[Sample]:
    return rules.stage_samples(g, s, g, rules.decide(s, earlier))


def _needs_generation(rules: StagedRollout, requests: list[Sample]) -> bool:
    # The full-trace stage shows the whole trace: nothing is generated (the fake engine has no EOS to end it on).
    return not requests or not (requests[0].guided and rules.stages[requests[0].stage].prefix_ratio >= 1.0)


async def _generate_and_score(
    rules: StagedRollout, g: int, requests: list[Sample], prompt: list[int], engine, score: ScoreFn
) -> None:
    if _needs_generation(rules, requests):
        outputs = await asyncio.gather(*(engine.generate(prompt + r.prefix) for r in requests))
        for r, out in zip(requests, outputs, strict=True):
            r.continuation = list(out)
    rewards = score(g, [r.response for r in requests])
    for r, reward in zip(requests, rewards, strict=True):
        r.reward = float(reward)


async def run_pipelined(
    prompt_ids: Sequence[list[int]],
    stages: Sequence[MicroGroup],
    engine: AsyncEngine,
    expert_prefix: PrefixFn,
    score: ScoreFn,
) -> list[list[Sample]]:
    """Every prompt runs its stages on its own: its next stage is submitted when its previous one is scored."""
    rules = _rules(stages, expert_prefix)

    async def one_prompt(g: int) -> list[Sample]:
        samples: list[Sample] = []
        for s in range(len(stages)):
            requests = _stage_requests(rules, g, s, samples)
            await _generate_and_score(rules, g, requests, list(prompt_ids[g]), engine, score)
            samples.extend(requests)
        return samples

    return list(await asyncio.gather(*(one_prompt(g) for g in range(len(prompt_ids)))))


async def run_stage_synchronous(
    prompt_ids: Sequence[list[int]],
    stages: Sequence[MicroGroup],
    engine: AsyncEngine,
    expert_prefix: PrefixFn,
    score: ScoreFn,
) -> list[list[Sample]]:
    """The trainer's order: all prompts' stage k, then a barrier, then stage k + 1."""
    rules = _rules(stages, expert_prefix)
    samples: list[list[Sample]] = [[] for _ in prompt_ids]
    for s in range(len(stages)):
        batch = [_stage_requests(rules, g, s, samples[g]) for g in range(len(prompt_ids))]
        await asyncio.gather(
            *(
                _generate_and_score(rules, g, requests, list(prompt_ids[g]), engine, score)
                for g, requests in enumerate(batch)
            )
        )
        for g, requests in enumerate(batch):
            samples[g].extend(requests)
    return samples


class FakeEngine:
    """A deterministic stand-in for an async engine: the output and the latency of a request depend only on its
    prompt ids and how many identical requests came before (so both schedulers get the same answers).

    ``latency(ids, k) -> seconds`` and ``output(ids, k) -> completion ids`` are given by the caller; ``log``
    records (start, end, prompt ids) per request.
    """

    def __init__(self, output: Callable[[list[int], int], list[int]], latency: Callable[[list[int], int], float]):
        self.output, self.latency = output, latency
        self.seen: dict[tuple[int, ...], int] = {}
        self.log: list[tuple[float, float, tuple[int, ...]]] = []

    async def generate(self, prompt_ids: list[int]) -> list[int]:
        key = tuple(prompt_ids)
        k = self.seen.get(key, 0)
        self.seen[key] = k + 1
        start = time.perf_counter()
        await asyncio.sleep(self.latency(list(key), k))
        self.log.append((start, time.perf_counter(), key))
        return self.output(list(key), k)


def _unit(*parts) -> float:
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def simulate(
    prompts: int = 32, p_success: float = 0.4, unit_ms: float = 0.05, max_tokens: int = 2048, seed: int = 0
) -> dict:
    """Stage-synchronous vs pipelined wall time on `FakeEngine` with long-tailed lengths (a few rollouts run to
    ``max_tokens``), the paper's 4/2/1/1 schedule and a random 0/1 reward; ``unit_ms`` per simulated token."""
    stages = PAPER_SCHEDULE
    rng = random.Random(seed)
    prompt_ids = [[rng.randrange(10, 100) for _ in range(8)] for _ in range(prompts)]
    traces = [[rng.randrange(10, 100) for _ in range(40)] for _ in range(prompts)]
    eos = 1

    def length(ids, k) -> int:  # Pareto-like tail: most rollouts short, a few hit the budget
        u = _unit(seed, ids, k)
        return min(max_tokens, int(64 / max(1.0 - u, 1e-9) ** 0.9))

    def output(ids, k):
        return [2] * (length(ids, k) - 1) + [eos]

    def latency(ids, k) -> float:
        return length(ids, k) * unit_ms / 1000

    def expert_prefix(g, ratio):
        return traces[g] + [eos] if ratio >= 1.0 else traces[g][: int(ratio * len(traces[g]))]

    def score(g, responses):
        return [1.0 if _unit(seed, "reward", g, r) < p_success else 0.0 for r in responses]

    timings, outcomes = {}, {}
    for name, runner in (("synchronous", run_stage_synchronous), ("pipelined", run_pipelined)):
        engine = FakeEngine(output, latency)
        start = time.perf_counter()
        result = asyncio.run(runner(prompt_ids, stages, engine, expert_prefix, score))
        timings[name] = time.perf_counter() - start
        outcomes[name] = [[(x.stage, tuple(x.prefix), tuple(x.continuation), x.reward) for x in g] for g in result]
    return {
        "prompts": prompts,
        "p_success": p_success,
        "unit_ms": unit_ms,
        "synchronous_s": timings["synchronous"],
        "pipelined_s": timings["pipelined"],
        "same_decisions": outcomes["synchronous"] == outcomes["pipelined"],
    }
