"""ReLIFT in `TRAPOTrainer` (``relift=True``; docs/method.md, "ReLIFT"): RL, plus one SFT step on the expert traces of
the hardest prompts whenever enough of them have gathered. The rules are `trapo.core.relift`; this mixin wires them in:

- after each training rollout, the groups whose every sample failed go into the buffer (gathered from every process,
  so each holds the same buffer), each as its prompt tokens and its first expert trace + EOS, truncated to
  ``max_completion_length`` (the released code truncates targets to its response budget);
- after the optimizer step that ends a rollout batch's updates, once the buffer holds ``relift_batch`` items, one SFT
  step on the newest ``relift_batch``: a separate AdamW (lr ``relift_learning_rate``, its own moments, no schedule),
  `trapo.core.relift.fine_tuning_loss` per micro-batch of ``relift_micro_batch_size``, gradients clipped to
  ``relift_max_grad_norm``. Each process trains its share of the batch; DDP averages the gradients.

The buffer is saved in checkpoints (the released code loses it on resume); the SFT optimizer's moments are not, and
restart at zero after a resume.
"""

from __future__ import annotations

import logging
import math

import torch
from accelerate.utils import gather_object
from transformers import TrainerCallback
from trl.trainer.utils import entropy_from_logits, selective_log_softmax

from trapo.core.relift import fine_tuning_loss, push_newest_first, take_fine_tuning_batch, unsolved_groups

logger = logging.getLogger(__name__)


class _AfterOptimizerStep(TrainerCallback):
    def __init__(self, trainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer._relift_after_step()


class ReliftMixin:
    """Trainer mixin: ReLIFT's buffer of unsolved prompts and its interleaved SFT steps (off unless ``args.relift``)."""

    def _relift_setup(self) -> None:
        self._relift_buffer: list[tuple[list[int], list[int]]] = []
        self._relift_optimizer = None
        if not self.args.relift:
            return
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            raise ValueError(
                "relift=True takes its SFT steps with an optimizer of its own, which DeepSpeed and FSDP do not "
                "shard: train it on one device or with DDP (multi-GPU accelerate without a DeepSpeed/FSDP plugin)"
            )
        size, processes = self.relift_batch_size, self.accelerator.num_processes
        if size % processes:
            raise ValueError(
                f"relift_batch ({size}) must be a multiple of the number of processes ({processes}): each process "
                "takes the same share of every SFT step"
            )
        self.add_callback(_AfterOptimizerStep(self))

    @property
    def relift_batch_size(self) -> int:
        """``relift_batch``, or the prompts of one rollout batch over every process (the released threshold: the
        fine-tuning batch is the RL batch's 128 prompts)."""
        if self.args.relift_batch is not None:
            return self.args.relift_batch
        samples = self.args.per_device_train_batch_size * self.args.steps_per_generation
        return max(1, samples * self.accelerator.num_processes // self.num_generations)

    def _relift_collect(self, batch, rows: list[dict], prompt_ids: list[list[int]]) -> None:
        """Buffer this process's unsolved groups, gathered from every process in process order, newest first."""
        unsolved = unsolved_groups([[x.reward for x in group] for group in batch.groups])
        local = [(list(prompt_ids[g]), self._relift_target(rows[g])) for g in unsolved]
        items = gather_object(local) if self.accelerator.num_processes > 1 else local
        self._relift_buffer = push_newest_first(self._relift_buffer, items)
        self._metrics["train"]["relift/unsolved_prompts"].append(float(len(items)))

    def _relift_target(self, row: dict) -> list[int]:
        """The expert trace a buffered prompt is fine-tuned on: its first, + EOS, within ``max_completion_length``."""
        trace = row[self.args.expert_column][0]
        ids = self._tokenizer(trace, add_special_tokens=False)["input_ids"][: self.max_completion_length - 1]
        return [*ids, self.eos_token_ids[0]]

    def _relift_after_step(self) -> None:
        if self.state.global_step % self.args.updates_per_rollout:
            return  # the rollout batch still has updates to train: the SFT step comes after its last
        batch, self._relift_buffer = take_fine_tuning_batch(self._relift_buffer, self.relift_batch_size)
        self._metrics["train"]["relift/buffer"].append(float(len(self._relift_buffer)))
        if batch is None:
            return
        rank, processes = self.accelerator.process_index, self.accelerator.num_processes
        loss = self._relift_sft_step(batch[rank::processes])
        self._metrics["train"]["relift/sft_loss"].append(loss)
        self.rollout_stats["relift_sft_steps"] += 1

    def _relift_sft_step(self, items: list[tuple[list[int], list[int]]]) -> float:
        """One SFT optimizer step on ``items`` (this process's share); returns the mean micro-batch loss."""
        if self._relift_optimizer is None:
            self._relift_optimizer = torch.optim.AdamW(
                self.model.parameters(), lr=self.args.relift_learning_rate, weight_decay=0.01
            )
        model, size = self.model_wrapped, self.args.relift_micro_batch_size
        chunks = [items[i : i + size] for i in range(0, len(items), size)]
        total = 0.0
        self._relift_optimizer.zero_grad(set_to_none=True)
        for chunk in chunks:
            input_ids, attention_mask, target_mask = self._relift_inputs(chunk)
            logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float()
            logps = selective_log_softmax(logits, input_ids[:, 1:])
            entropies = entropy_from_logits(logits) if self.args.relift_entropy_coef else None
            loss = fine_tuning_loss(logps, entropies, target_mask, self.args.relift_entropy_coef)
            self.accelerator.backward(loss / len(chunks))
            total += loss.item()
            tokens = int(attention_mask.sum())
            self._spend(trained_tokens=tokens, expert_tokens=int(target_mask.sum()))
        if not math.isfinite(total):
            logger.warning("step %d: non-finite ReLIFT SFT loss, SFT step skipped", self.state.global_step)
            self._relift_optimizer.zero_grad(set_to_none=True)
            return total
        self.accelerator.clip_grad_norm_(self.model.parameters(), self.args.relift_max_grad_norm)
        self._relift_optimizer.step()
        self._relift_optimizer.zero_grad(set_to_none=True)
        self._spend(extra_optimizer_steps=1)
        return total / len(chunks)

    def _relift_inputs(self, items: list[tuple[list[int], list[int]]]):
        """Prompt + trace per row, right-padded; ``target_mask`` marks the trace tokens, aligned with the next-token
        log-probs (position j predicts token j + 1)."""
        pad = self._tokenizer.pad_token_id if self._tokenizer.pad_token_id is not None else self.eos_token_ids[0]
        width = max(len(p) + len(t) for p, t in items)
        input_ids = torch.full((len(items), width), pad, dtype=torch.long)
        attention_mask = torch.zeros((len(items), width), dtype=torch.long)
        target_mask = torch.zeros((len(items), width - 1), dtype=torch.bool)
        for i, (prompt, target) in enumerate(items):
            sequence = prompt + target
            input_ids[i, : len(sequence)] = torch.tensor(sequence)
            attention_mask[i, : len(sequence)] = 1
            target_mask[i, len(prompt) - 1 : len(sequence) - 1] = True
        device = self.accelerator.device
        return input_ids.to(device), attention_mask.to(device), target_mask.to(device)

    def _relift_checkpoint_state(self) -> dict:
        return {"relift_buffer": [[p, t] for p, t in self._relift_buffer]}

    def _relift_load_checkpoint_state(self, state: dict) -> None:
        self._relift_buffer = [(list(p), list(t)) for p, t in state.get("relift_buffer", [])]
