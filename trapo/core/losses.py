"""Per-token losses and the mixed TRAPO objective (docs/method.md, "The loss").

Every function here is pure: tensors in, tensors out, no I/O and no trainer state, so each loss can be
checked against a closed form in isolation. Shapes: ``(B, T)`` for per-token tensors, ``(B,)`` for
per-sequence ones.
"""

from __future__ import annotations

import torch

PREFIX_LOSS_KINDS = ("trsft", "nll", "luffy", "none")
LOSS_NORMALIZATIONS = ("batch_budget", "sequence_budget")
ENTROPY_TOKENS = ("loss", "response")


def trsft_token_loss(logps: torch.Tensor, alpha: float = 0.1) -> torch.Tensor:
    """Trust-region SFT loss per token: ``-p / max(sg(p), alpha)`` with ``p = exp(logps)``.

    Why this form: the gradient of plain NLL is ``-∇p / p``, which explodes when the expert takes a token
    the policy finds unlikely. Dividing by the *stop-gradient* ``max(p, alpha)`` gives the gradient
    ``-∇p / max(p, alpha)``: identical to NLL inside the trust region (p ≥ alpha), bounded outside it.
    ``alpha → 0`` recovers NLL's gradient, ``alpha = 1`` gives the loss ``-p``.
    """
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")
    p = logps.exp()
    return -p / p.detach().clamp(min=alpha)


def luffy_token_loss(logps: torch.Tensor, gamma: float = 0.1) -> torch.Tensor:
    """LUFFY's policy shaping ``-p / (p + gamma)``; the gradient flows through both ``p``.

    Its gradient ``-gamma / (p + gamma)^2 · ∇p`` re-weights low-probability tokens up, but stays bounded.
    """
    if gamma <= 0.0:
        raise ValueError(f"gamma must be > 0, got {gamma}")
    p = logps.exp()
    return -p / (p + gamma)


def prefix_token_loss(logps: torch.Tensor, kind: str, alpha: float = 0.1, gamma: float = 0.1) -> torch.Tensor:
    """Loss on imitated (expert-prefix) tokens, selected by ``kind`` (the paper's ablations).

    - ``trsft``: trust-region SFT (the method); ``nll``: ``-log p`` (naive SFT, collapses in the paper);
    - ``luffy``: ``-p/(p+gamma)``; ``none``: zeros (prefixes are context only).
    """
    if kind == "trsft":
        return trsft_token_loss(logps, alpha)
    if kind == "nll":
        return -logps
    if kind == "luffy":
        return luffy_token_loss(logps, gamma)
    if kind == "none":
        return torch.zeros_like(logps)
    raise ValueError(f"unknown prefix loss kind {kind!r}; expected one of {PREFIX_LOSS_KINDS}")


def policy_gradient_token_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor | None,
    advantages: torch.Tensor,
    clip_eps: float | tuple[float, float] | None = None,
) -> torch.Tensor:
    """Policy-gradient loss per token ``-Â·ρ`` with ``ρ = π_θ / π_old``.

    With one update per rollout batch ρ = 1 in value but carries the gradient ``∇ log π``; pass
    ``old_logps=None`` for that case. ``clip_eps`` turns on PPO's pessimistic clip of ρ to ``[1 − ε, 1 + ε]``, or
    ``[1 − low, 1 + high]`` for a pair (off by default, as in the reference). ``advantages`` is ``(B,)`` (shared by
    every token of a sample) or ``(B, T)``.
    """
    if old_logps is None:
        old_logps = logps.detach()
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1)
    ratio = (logps - old_logps).exp()
    loss = -advantages * ratio
    if clip_eps is not None:
        low, high = clip_eps if isinstance(clip_eps, tuple) else (clip_eps, clip_eps)
        clipped = -advantages * ratio.clamp(1.0 - low, 1.0 + high)
        loss = torch.maximum(loss, clipped)
    return loss


def mixed_loss(
    logps: torch.Tensor,
    advantages: torch.Tensor,
    completion_mask: torch.Tensor,
    prefix_mask: torch.Tensor,
    imitated_mask: torch.Tensor,
    *,
    old_logps: torch.Tensor | None = None,
    prefix_loss: str = "trsft",
    alpha: float = 0.1,
    gamma: float = 0.1,
    prefix_weight: str = "one",
    clip_eps: float | tuple[float, float] | None = None,
    max_completion_length: int | None = None,
    entropies: torch.Tensor | None = None,
    entropy_coef: float = 0.0,
    pg_weights: torch.Tensor | None = None,
    loss_normalization: str = "batch_budget",
    entropy_tokens: str = "loss",
    pg_weight: float = 1.0,
    entropy_token_budget: int | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The TRAPO objective on one batch of sequences (docs/method.md, "The loss").

    Token roles, all ``(B, T)`` masks over the response (expert prefix + model continuation):
    - generated = ``completion_mask & ~prefix_mask``: policy-gradient term ``-Â·ρ``;
    - ``imitated_mask`` (a subset of ``prefix_mask``): prefix loss of kind ``prefix_loss`` with weight 1
      (``prefix_weight="advantage"`` multiplies it by Â instead, as LUFFY does for its off-policy trace);
    - prefix tokens outside ``imitated_mask``: no loss (a second copy of an already imitated prefix).

    Both sums are divided by the same constant, so an imitated token and an RL token weigh the same:
    ``loss_normalization="batch_budget"`` divides by ``B × max_completion_length`` (TRL's Dr. GRPO: the loss is a
    per-token-slot average of the batch); ``"sequence_budget"`` by ``max_completion_length`` only (the released
    code: the loss is a sum over the batch's sequences, so it grows with the batch). The entropy bonus subtracts
    ``entropy_coef`` × the mean entropy of the tokens that carry a loss (``entropy_tokens="loss"``) or of every
    response token, prefixes included (``"response"``, the released code). ``pg_weights`` (``(B, T)`` or
    ``(B, 1)``) multiplies the policy-gradient term only, e.g. vLLM's importance-sampling correction between the
    sampler and the trainer. ``pg_weight`` scales the whole policy-gradient term (0: imitation only, the control
    that asks how much of TRAPO is its prefix loss).

    ``entropy_token_budget`` weights the bonus as the released actor does: it subtracts the mean entropy of each
    *packed* micro-batch (up to that many tokens) and sums over micro-batches, so its weight grows with the tokens
    trained. Here each micro-batch's mean is weighted by its entropy tokens ÷ the budget, i.e. the bonus is
    ``entropy_coef × Σ entropy / budget``: the same total however the tokens are split into micro-batches, and the
    released total when each packed micro-batch holds ``budget`` such tokens.

    Returns the scalar loss and float metrics: ``pg_loss``, ``imitation_loss`` (the prefix-loss term), ``entropy``,
    ``prefix_clip_frac`` (share of imitated tokens with p < alpha), ``prefix_mean_p``, ``gen_mean_p``.
    """
    if prefix_weight not in ("one", "advantage"):
        raise ValueError(f"prefix_weight must be 'one' or 'advantage', got {prefix_weight!r}")
    if loss_normalization not in LOSS_NORMALIZATIONS:
        raise ValueError(f"loss_normalization must be one of {LOSS_NORMALIZATIONS}, got {loss_normalization!r}")
    if entropy_tokens not in ENTROPY_TOKENS:
        raise ValueError(f"entropy_tokens must be one of {ENTROPY_TOKENS}, got {entropy_tokens!r}")
    completion_mask, prefix_mask, imitated_mask = (m.bool() for m in (completion_mask, prefix_mask, imitated_mask))
    if (imitated_mask & ~prefix_mask).any():
        raise ValueError("imitated_mask marks tokens outside prefix_mask: only expert-prefix tokens can be imitated")
    if (prefix_mask & ~completion_mask).any():
        raise ValueError("prefix_mask marks tokens outside completion_mask")
    batch_size, seq_len = logps.shape
    normalizer = (max_completion_length or seq_len) * (batch_size if loss_normalization == "batch_budget" else 1)
    gen_mask = completion_mask & ~prefix_mask

    pg_tok = policy_gradient_token_loss(logps, old_logps, advantages, clip_eps)
    if pg_weights is not None:
        pg_tok = pg_tok * pg_weights
    prefix_tok = prefix_token_loss(logps, prefix_loss, alpha, gamma)
    if prefix_weight == "advantage":
        prefix_tok = prefix_tok * (advantages.unsqueeze(-1) if advantages.dim() == 1 else advantages)
    pg_term = (pg_tok * gen_mask).sum() / normalizer
    prefix_term = (prefix_tok * imitated_mask).sum() / normalizer
    loss = pg_weight * pg_term + prefix_term

    # Prefixes that are context only (prefix_loss="none") carry no loss, so no entropy bonus either.
    if entropy_tokens == "response":
        loss_mask = completion_mask
    else:
        loss_mask = gen_mask | imitated_mask if prefix_loss != "none" else gen_mask
    entropy = torch.zeros((), device=logps.device)
    if entropies is not None:
        entropy = _masked_mean(entropies, loss_mask)
        if entropy_token_budget is None:
            loss = loss - entropy_coef * entropy
        else:
            loss = loss - entropy_coef * (entropies * loss_mask).sum() / entropy_token_budget

    with torch.no_grad():
        p = logps.detach().exp()
        metrics = {
            "pg_loss": pg_term.item(),
            "imitation_loss": prefix_term.item(),
            "entropy": entropy.item(),
            "prefix_clip_frac": _masked_mean((p < alpha).float(), imitated_mask).item(),
            "prefix_mean_p": _masked_mean(p, imitated_mask).item(),
            "gen_mean_p": _masked_mean(p, gen_mask).item(),
        }
    return loss, metrics


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is set; 0 when nothing is set (no NaN from an empty mask)."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)
