"""Per-prompt pipelining on an engine that serves requests independently (docs/method.md, "Rollout scheduling").

The staged scheduler waits, at every stage, for the slowest request of the whole batch; the speculative one decodes
both branches of every decision and throws one away. `PipelinedRollout` does neither: each prompt's next stage is
decided and submitted as soon as *its own* previous stage is scored, while the other prompts' requests keep
decoding in the same running batch. Nothing is decoded that is not kept, and the decisions are `StagedRollout`'s
(the same rule methods, on the same rewards), so the same samples give the same `RolloutBatch`
(``tests/test_rollout.py``).

The engine is anything with `RequestEngine`'s two methods: transformers' continuous batching and vLLM's engine have
adapters in `trapo.engines`.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Protocol

from trapo.rollout.batch import RolloutBatch, Sample
from trapo.rollout.staged import StagedRollout


class RequestEngine(Protocol):
    """Requests in, finished requests out, in whatever order they finish."""

    def submit(self, key: Hashable, context: list[int], max_new: int) -> None:
        """Start decoding at most ``max_new`` tokens after ``context``; ``key`` comes back with the result."""

    def next_finished(self) -> tuple[Hashable, list[int], list[float] | None]:
        """Block until a submitted request finishes: ``(key, continuation, logprobs or None)``."""


class PipelinedRollout(StagedRollout):
    """`StagedRollout`'s samples and decisions, each prompt advancing through its stages on its own.

    ``generate`` is a `RequestEngine` here. A request asks for exactly what its sample can keep (the budget minus
    its prefix), so no decoded token is cut off afterwards either.
    """

    def run(self, rows: Sequence[dict], prompt_ids: Sequence[list[int]]) -> RolloutBatch:
        batch = self._empty_batch(rows, prompt_ids)
        engine = self.generate_fn
        next_stage = [0] * len(rows)
        current: dict[int, list[Sample]] = {}  # a group's stage in flight
        in_flight: dict[Hashable, Sample] = {}
        left: dict[int, int] = {}  # requests of a group's stage still decoding

        def finish(g: int, samples: list[Sample]) -> None:
            self._score(samples, rows, batch)
            batch.groups[g].extend(samples)
            next_stage[g] += 1

        def advance(g: int) -> None:
            """Decide and submit group ``g``'s next stage that needs generation (stages that need none are scored
            on the spot)."""
            while next_stage[g] < len(self.stages):
                s = next_stage[g]
                guided = self.decide(s, batch.groups[g])
                batch.guided_per_stage[s] += guided
                samples = self.stage_samples(g, s, rows[g], guided)
                todo = [x for x in samples if self.needs_generation(x)]
                if not todo:
                    finish(g, samples)
                    continue
                current[g], left[g] = samples, len(todo)
                for i, x in enumerate(todo):
                    in_flight[(g, s, i)] = x
                    engine.submit((g, s, i), list(prompt_ids[g]) + x.prefix, self.budget - len(x.prefix))
                return

        for g in range(len(rows)):
            advance(g)
        while in_flight:
            key, continuation, logprobs = engine.next_finished()
            x = in_flight.pop(key)
            keep = self.budget - len(x.prefix)
            x.continuation = list(continuation)[:keep]
            x.logprobs = list(logprobs)[:keep] if logprobs is not None else None
            left[x.group] -= 1
            if left[x.group] == 0:
                finish(x.group, current.pop(x.group))
                advance(x.group)
        return batch
