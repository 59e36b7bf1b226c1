"""Scoring during the rollout: every reward function on whole responses, as TRL would call it, guarded.

The guidance decisions need rewards between stages, so `TRAPOTrainer` scores inside its rollout rather than in TRL's
``_calculate_rewards``. `RolloutScorer` calls each reward function with TRL's arguments (``prompts``,
``completions``, ``completion_ids``, every dataset column, ``trainer_state``, ``log_metric``, ``log_extra``), bounded
in time and checked (`trapo.guards`): a value that is not a number names the function, None/NaN marks an unscorable
completion, async functions are awaited. What reward functions hand ``log_extra`` is kept per call and put back in
the step's sample order afterwards (`extra_columns`), because a stage scores only some samples, out of order.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Sequence

import torch

from trapo.guards import BoundedRewardCalls, UnscorableRewards

logger = logging.getLogger(__name__)

NOT_ROW_COLUMNS = ("prompt", "completion", "completion_ids")


class RolloutScorer:
    """``scorer(rows, responses) -> (total reward per response, per-function rewards per response)``.

    Args:
        reward_funcs / names / weights: TRL's reward functions, their names and weights.
        decode: token ids → text (the tokenizer's ``batch_decode`` without special tokens).
        chat: completions are passed as ``[{"role": "assistant", "content": text}]`` (conversational prompts).
        calls / unscorable: the guards every call goes through.
        log_metric: TRL's ``log_metric`` (passed to the reward functions).
        trainer_state: a callable returning TRL's ``trainer_state`` at call time.
    """

    def __init__(
        self,
        reward_funcs: Sequence[Callable],
        names: Sequence[str],
        weights: torch.Tensor,
        decode: Callable[[list[list[int]]], list[str]],
        chat: bool,
        calls: BoundedRewardCalls,
        unscorable: UnscorableRewards,
        log_metric: Callable[[str, float], None] | None = None,
        trainer_state: Callable[[], object] | None = None,
    ):
        self.reward_funcs, self.names, self.weights = list(reward_funcs), list(names), weights.detach().cpu()
        self.decode, self.chat, self.calls, self.unscorable = decode, chat, calls, unscorable
        self.log_metric, self.trainer_state = log_metric, trainer_state
        self.extra_logs: list[dict[str, list]] = []  # per call: what reward functions passed to log_extra

    def __call__(self, rows: Sequence[dict], responses: Sequence[list[int]]) -> tuple[list[float], list[list[float]]]:
        texts = self.decode([list(r) for r in responses])
        per_func = self.score_texts(rows, texts, list(responses))
        per_func = self.unscorable.observe(per_func, self.names, texts)
        totals = (per_func * self.weights).sum(dim=1)
        return totals.tolist(), per_func.tolist()

    def score_texts(self, rows: Sequence[dict], texts: Sequence[str], completion_ids=None) -> torch.Tensor:
        """``(len(rows), functions)`` rewards of ``texts`` as responses to ``rows``; NaN where unscorable."""
        completions = [[{"role": "assistant", "content": t}] for t in texts] if self.chat else list(texts)
        columns = {k: [row[k] for row in rows] for k in rows[0] if k not in NOT_ROW_COLUMNS} if rows else {}
        extra: dict[str, list] = {}
        self.extra_logs.append(extra)
        per_func = torch.zeros(len(rows), len(self.reward_funcs))
        for j, func in enumerate(self.reward_funcs):
            per_func[:, j] = torch.tensor(
                self.calls(
                    func,
                    self.names[j],
                    len(rows),
                    prompts=[row["prompt"] for row in rows],
                    completions=completions,
                    completion_ids=completion_ids,
                    trainer_state=self.trainer_state() if self.trainer_state else None,
                    log_metric=self.log_metric or (lambda name, value: None),
                    log_extra=lambda column, values: extra.setdefault(column, []).extend(values),
                    **columns,
                )
            )
        return per_func

    def extra_columns(self, calls: Sequence[Sequence], order: Sequence) -> dict[str, list]:
        """What reward functions logged with ``log_extra``, one value per item of ``order`` (None where a call logged
        nothing for it); ``calls[k]`` are the items the k-th scoring call scored, in its order."""
        position = {id(item): i for i, item in enumerate(order)}
        columns: dict[str, list] = {}
        for items, logged in zip(calls, self.extra_logs, strict=True):
            for column, values in logged.items():
                aligned = columns.setdefault(column, [None] * len(order))
                for item, value in zip(items, values, strict=False):
                    aligned[position[id(item)]] = value
        self.extra_logs = []
        return columns


def check_reward_scores_experts(
    scorer: RolloutScorer, rows: Sequence[dict], expert_column: str, sample: int = 16, seed: int = 0
) -> float | None:
    """Score the expert's own first trace on a sample of rows and warn when the rewards give most of them 0: a reward
    that cannot score the data would make TRAPO guide every prompt and train as pure imitation, with a normal-looking
    loss. Returns the mean reward of the sampled traces (None when there is nothing to score)."""
    if not rows:
        return None
    picks = random.Random(seed).sample(range(len(rows)), min(sample, len(rows)))
    chosen = [rows[i] for i in picks]
    traces = [row[expert_column][0] for row in chosen]
    per_func = scorer.score_texts(chosen, traces).nan_to_num(0.0)
    scorer.extra_logs.clear()
    totals = (per_func * scorer.weights).sum(dim=1)
    solved = int((totals > 0).sum())
    mean = float(totals.mean())
    if solved * 2 < len(chosen):
        logger.warning(
            "reward function(s) %s give the expert's own traces a reward above 0 on only %d of %d sampled rows (mean "
            "%.2f): the reward probably cannot score this data. Check the reward (trapo train: `reward:`) and the "
            "answer column; with it, every prompt is guided and the run trains as imitation only",
            ", ".join(repr(n) for n in scorer.names),
            solved,
            len(chosen),
            mean,
        )
    return mean if not math.isnan(mean) else None
