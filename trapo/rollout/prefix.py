"""The expert prefix a guided stage shows (docs/method.md, "Prefix cut")."""

from __future__ import annotations

from collections.abc import Callable, Collection

from trapo.core import cut_prefix


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
