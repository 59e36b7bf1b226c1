"""What TRAPO changes in TRL's logs (docs/metrics.md): a trainer mixin, so `trapo.trainer` keeps only TRL's hooks."""

from __future__ import annotations

import torch
from accelerate.utils import gather_object

from trapo.rollout import RolloutBatch


class RolloutLogs:
    """For a `trl.GRPOTrainer` subclass whose rollout is a `RolloutBatch`: the headline ``reward`` is the policy's
    own, and logged completions show where an expert prefix ends."""

    PREFIX_END_MARK = "⟦expert prefix ends⟧"

    def _mark_prefixes_in_logged_completions(self, batch: RolloutBatch) -> None:
        """In TRL's completions table, show where a guided sample's expert prefix ends and the model's text starts."""
        marked = [
            self.processing_class.decode(x.prefix, skip_special_tokens=True)
            + self.PREFIX_END_MARK
            + self.processing_class.decode(x.continuation, skip_special_tokens=True)
            if x.guided
            else None
            for x in batch.samples
        ]
        marked = gather_object(marked)
        logged = self._logs["completion"]
        start = len(logged) - len(marked)
        for i, text in enumerate(marked):
            if text is None or start + i < 0:
                continue
            entry = logged[start + i]
            if isinstance(entry, list) and entry and isinstance(entry[-1], dict):
                logged[start + i] = [*entry[:-1], {**entry[-1], "content": text}]
            else:
                logged[start + i] = text

    def _show_trained_advantages(self, advantages: torch.Tensor) -> None:
        """TRL's completions table logs the advantages TRL computed; show the ones the loss trains on instead."""
        logged = self._logs["advantages"]
        trained = self.accelerator.gather(advantages).tolist()
        for i, value in enumerate(trained[-len(logged) :], start=max(len(logged) - len(trained), 0)):
            logged[i] = value

    def _headline_reward(self, batch: RolloutBatch) -> None:
        """TRL's ``reward`` is the mean over every sample, expert-guided ones included (a model that solves nothing
        shows 0.125 under the paper's schedule); make it the policy's own score, the mean over unguided samples, and
        log the all-sample mean as ``trapo/reward_with_guidance`` (docs/metrics.md)."""
        mode = "train" if self.model.training else "eval"
        logged = self._metrics[mode].get("reward")
        if not logged:
            return
        unguided = [x.reward for x in batch.samples if not x.guided]
        sums = torch.tensor([sum(unguided), len(unguided)], dtype=torch.float64, device=self.accelerator.device)
        total, count = self.accelerator.reduce(sums, reduction="sum").tolist()
        self._metrics[mode]["trapo/reward_with_guidance"].append(logged[-1])
        logged[-1] = total / count if count else float("nan")
