"""ReLIFT's rules (Ma et al., 2025, arXiv 2506.07527; docs/method.md, "ReLIFT"): which prompts are buffered, in which
order, when the buffer triggers a fine-tuning step, and that step's loss. Pure functions on lists and tensors.

ReLIFT trains with RL and, between RL steps, fine-tunes on the expert solutions of the hardest questions it met: a
prompt whose every rollout failed goes into a buffer, and once the buffer holds a fine-tuning batch, one SFT optimizer
step is taken on the newest of them. As released (TheRoadQaQ/ReLIFT @ eb95454f, ``relift/verl/verl/relift/``):

- *hardest* = all ``n`` rewards equal the fail value 0 in this step's rollouts (``trainer.py:380-426``);
- new items go in front: ``buffer = concat([new, buffer])`` (``trainer.py:450``), newest first, no deduplication;
- after the RL update, ``if len(buffer) >= size``: one SFT step on ``buffer[:size]``, the rest kept
  (``trainer.py:515-528``), so at most one SFT step per RL step;
- the SFT loss per micro-batch is the token-mean NLL of the expert tokens minus 0.001 × their token-mean entropy
  (``actor.py:222-246``), divided by the number of micro-batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import torch

Item = TypeVar("Item")


def unsolved_groups(rewards: Sequence[Sequence[float]], fail_value: float = 0.0) -> list[int]:
    """Indices of the groups none of whose samples scored above ``fail_value``: the prompts the policy cannot solve
    yet. The released code tests ``== 0`` on a {0, 1} reward; ``<=`` also counts a format penalty (a negative
    reward) as a failure, and is the same on {0, 1}. An empty group is not "unsolved": nothing was tried."""
    return [i for i, group in enumerate(rewards) if group and all(r <= fail_value for r in group)]


def push_newest_first(buffer: list[Item], new_items: Sequence[Item]) -> list[Item]:
    """The buffer with ``new_items`` in front, in their order (the released ``concat([new, buffer])``)."""
    return [*new_items, *buffer]


def take_fine_tuning_batch(buffer: list[Item], size: int) -> tuple[list[Item] | None, list[Item]]:
    """``(batch, rest)``: the ``size`` newest items and the buffer without them once it holds ``size`` or more;
    ``(None, buffer)`` before that."""
    if size < 1:
        raise ValueError(f"the fine-tuning batch size must be >= 1, got {size}")
    if len(buffer) < size:
        return None, buffer
    return buffer[:size], buffer[size:]


def fine_tuning_loss(
    logps: torch.Tensor, entropies: torch.Tensor | None, mask: torch.Tensor, entropy_coef: float = 0.001
) -> torch.Tensor:
    """One micro-batch's ReLIFT SFT loss: ``mean(-log p) − entropy_coef · mean(entropy)`` over the expert tokens
    ``mask`` selects (a token mean over the whole micro-batch, not per sequence). ``(B, T)`` tensors; a micro-batch
    without a token gives 0 (and no gradient)."""
    mask = mask.to(logps.dtype)
    tokens = mask.sum().clamp(min=1.0)
    loss = -(logps * mask).sum() / tokens
    if entropies is not None and entropy_coef:
        loss = loss - entropy_coef * (entropies * mask).sum() / tokens
    return loss
