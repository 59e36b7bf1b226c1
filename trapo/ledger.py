"""The budget ledger: what a run has spent, logged with every step, so that methods are compared at a *declared*
equal budget (docs/metrics.md, "Budget"). "Equal optimizer steps" hides that a TRAPO step generates, and trains on,
far more tokens than an SFT step: the ledger makes every axis visible.

Logged cumulatively, summed over processes, as ``budget/<name>``:

- ``optimizer_steps``: the trainer's, and those of any other optimizer it runs (ReLIFT's SFT steps);
- ``generated_tokens``: tokens the policy decoded (speculative candidates that were discarded included);
- ``trained_tokens``: tokens through a training forward and backward pass (prompt and completion, no padding);
- ``expert_tokens``: expert tokens that carried a loss (TRAPO's imitated prefix tokens; SFT's completion tokens);
- ``flops``: an estimate, 2N per generated token + 6N per trained token, N the model's parameters;
- ``wall_seconds``: since training started.
"""

from __future__ import annotations

import time
from collections import Counter

import torch

LEDGER_KEYS = ("optimizer_steps", "generated_tokens", "trained_tokens", "expert_tokens", "flops", "wall_seconds")


def estimated_flops(parameters: int, generated_tokens: float, trained_tokens: float) -> float:
    """2N FLOPs per generated token (a forward pass), 6N per trained token (forward and backward)."""
    return 2.0 * parameters * generated_tokens + 6.0 * parameters * trained_tokens


class BudgetLedgerMixin:
    """Trainer mixin: counts what the run spends (``_spend``) and adds the ledger to every log."""

    def _spend(self, **amounts: float) -> None:
        if not hasattr(self, "_ledger"):
            self._ledger = Counter()
        self._ledger.update(amounts)

    def budget(self) -> dict[str, float]:
        """The ledger so far, summed over processes (a collective: call it on every process)."""
        local = getattr(self, "_ledger", Counter())
        keys = ("generated_tokens", "trained_tokens", "expert_tokens")
        values = torch.tensor([float(local[k]) for k in keys], dtype=torch.float64, device=self.accelerator.device)
        totals = dict(zip(keys, self.accelerator.reduce(values, reduction="sum").tolist(), strict=True))
        parameters = sum(p.numel() for p in self.model.parameters())
        start = getattr(self, "_ledger_start", None)
        return {
            # Steps of other optimizers too (ReLIFT's SFT steps); the same on every process.
            "optimizer_steps": float(self.state.global_step + local["extra_optimizer_steps"]),
            **totals,
            "flops": estimated_flops(parameters, totals["generated_tokens"], totals["trained_tokens"]),
            "wall_seconds": time.perf_counter() - start if start is not None else 0.0,
        }

    def train(self, *args, **kwargs):
        self._ledger_start = time.perf_counter()
        return super().train(*args, **kwargs)

    def log(self, logs: dict, *args, **kwargs) -> None:
        if "loss" in logs or any(k.startswith("train") for k in logs):  # training logs, not evaluation ones
            logs = {**logs, **{f"budget/{k}": v for k, v in self.budget().items()}}
        super().log(logs, *args, **kwargs)
