"""Group-relative advantages (docs/method.md, "The loss")."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def group_advantages(
    rewards: torch.Tensor,
    group_ids: Sequence[int] | torch.Tensor,
    scale: bool = False,
    eps: float = 1e-6,
) -> torch.Tensor:
    """``Â = r − mean(r of the sample's group)``; divided by the group's std (+eps) when ``scale``.

    Every sample of a prompt is in its group: unguided, guided and full-expert samples alike, so a
    guided success raises the bar for the unguided failures. No std division by default (Dr. GRPO and
    the reference code); the std is the unbiased one (as TRL), 0 for a group of one.
    """
    rewards = torch.as_tensor(rewards, dtype=torch.float32)
    ids = torch.as_tensor(group_ids, device=rewards.device)
    if ids.shape != rewards.shape or rewards.dim() != 1:
        raise ValueError(f"rewards {tuple(rewards.shape)} and group_ids {tuple(ids.shape)} must be 1-D and equal")
    advantages = torch.empty_like(rewards)
    for gid in ids.unique():
        members = ids == gid
        group = rewards[members]
        centred = group - group.mean()
        if scale:
            std = group.std() if group.numel() > 1 else torch.zeros((), dtype=group.dtype)
            centred = centred / (std + eps)
        advantages[members] = centred
    return advantages
