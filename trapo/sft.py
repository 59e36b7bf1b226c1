"""The SFT baseline on TRL's `SFTTrainer`: its config, its trainer and its dataset (docs/method.md, "Baselines").

- `expert_sft_dataset` turns TRAPO rows (prompt + list of expert traces) into TRL's prompt-completion format, one
  row per trace, so SFT sees exactly the traces TRAPO imitates.
- `TrSFTTrainer` is `SFTTrainer` with a choice of per-token loss: ``nll`` (TRL's own) or ``trsft`` (trust-region
  SFT, `trapo.core.trsft_token_loss`), averaged over completion tokens exactly as TRL averages its NLL. It changes
  nothing else: tokenisation, collation, metrics and gradient-accumulation normalisation stay TRL's.
- `train_sft` runs it on one model; `trapo.recipes` composes it with RL for ``sft-then-grpo``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from datasets import Dataset
from trl import SFTConfig, SFTTrainer
from trl.data_utils import is_conversational
from trl.trainer.utils import FusedCausalLMOutput

from trapo.checkpointing import CrashSafeCheckpoints
from trapo.core import prefix_token_loss
from trapo.distributed import CPUFullyShardedMixin, DeepSpeedGuardMixin
from trapo.ledger import BudgetLedgerMixin

SFT_LOSS_KINDS = ("nll", "trsft")


def expert_sft_dataset(
    dataset: Iterable[dict],
    expert_column: str = "expert",
    eos_token: str | None = None,
    max_traces: int | None = None,
) -> Dataset:
    """One prompt-completion row per expert trace (TRL's SFT format); the prompt is kept as it is.

    Chat prompts (lists of messages) get the completion ``[{"role": "assistant", "content": trace}]``, so TRL renders
    both with the chat template. ``eos_token`` is appended to string completions that lack it; `SFTTrainer` already
    does that itself, so it is only needed when the rows feed something else. ``max_traces`` keeps the first traces
    of each row. Bad rows fail here, by index, rather than as a shape error deep inside tokenisation.
    """
    if max_traces is not None and max_traces < 1:
        raise ValueError(f"max_traces must be >= 1 or None, got {max_traces}")
    columns = getattr(dataset, "column_names", None)
    if columns is not None and not {"prompt", expert_column} <= set(columns):
        raise ValueError(f"dataset needs columns 'prompt' and {expert_column!r}; it has {columns}")
    rows, chat = [], None
    for i, row in enumerate(dataset):
        prompt, traces = row["prompt"], row[expert_column]
        if not isinstance(traces, list | tuple) or not traces:
            raise ValueError(
                f"row {i}: {expert_column!r} must be a non-empty list of expert traces, got {traces!r}; "
                "add at least one trace (wrap a single string in a list) or drop the row"
            )
        row_chat = is_conversational({"prompt": prompt})
        if chat is None:
            chat = row_chat
        elif row_chat != chat:
            raise ValueError(f"row {i}: prompts mix chat messages and plain strings; convert them all to one kind")
        for j, trace in enumerate(traces[:max_traces]):
            if not isinstance(trace, str) or not trace.strip():
                raise ValueError(
                    f"row {i}: expert trace {j} is {trace!r}, but traces must be non-empty strings; fix or remove it"
                )
            if chat:
                completion = [{"role": "assistant", "content": trace}]
            else:
                completion = trace + eos_token if eos_token and not trace.endswith(eos_token) else trace
            rows.append({"prompt": prompt, "completion": completion})
    if not rows:
        raise ValueError("dataset has no rows: nothing to fine-tune on")
    return Dataset.from_list(rows)


@dataclass
class TRAPOSFTConfig(SFTConfig):
    """`SFTConfig` plus the choice of SFT loss (the paper's SFT baseline is ``nll``; ``trsft`` is its ablation)."""

    sft_loss: str = field(
        default="nll",
        metadata={
            "help": "Per-token loss on completion tokens: 'nll' (-log p, TRL's SFT) or 'trsft' (trust-region SFT "
            "-p/max(sg(p), alpha): the NLL gradient for p >= alpha, bounded below it). Averaged like TRL's NLL."
        },
    )
    alpha: float = field(default=0.1, metadata={"help": "TrSFT trust-region bound: gradient 1/max(p, alpha)."})
    expert_column: str = field(
        default="expert",
        metadata={
            "help": "Column with the list of expert traces; train_sft makes one prompt-completion row per trace."
        },
    )
    max_expert_traces: int | None = field(
        default=None, metadata={"help": "Use at most this many traces per row (None = all)."}
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "A fresh run in an output_dir that holds checkpoints is refused (resume it, or choose another "
            "folder); True deletes those checkpoints and starts over."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if self.sft_loss not in SFT_LOSS_KINDS:
            raise ValueError(f"sft_loss must be one of {SFT_LOSS_KINDS}, got {self.sft_loss!r}")
        if not 0.0 < self.alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {self.alpha}")
        if self.sft_loss == "trsft" and (self.loss_type != "nll" or self.label_smoothing_factor > 0):
            raise ValueError(
                "sft_loss='trsft' replaces the per-token NLL: use it with loss_type='nll' and label_smoothing_factor=0"
            )


class TrSFTTrainer(CrashSafeCheckpoints, BudgetLedgerMixin, DeepSpeedGuardMixin, CPUFullyShardedMixin, SFTTrainer):
    """`SFTTrainer` whose per-token loss is ``args.sft_loss`` (``nll`` | ``trsft``).

    How: TRL's `compute_loss` takes the loss as ``-log_probs`` summed over the label tokens of its fused LM-head
    output, divided by the token count. For the duration of that call a forward hook replaces ``log_probs`` with
    ``-prefix_token_loss(log_probs)`` on label tokens (0 elsewhere), so the loss becomes our per-token loss under
    TRL's own averaging (gradient accumulation and multi-process token counts included), and TRL's entropy and
    accuracy metrics, which read other fields, are untouched. With ``nll`` the hook is the identity.
    """

    _tag_names = ["trl", "sft", "trapo"]

    def __init__(self, model, args: TRAPOSFTConfig | None = None, **kwargs):
        if not isinstance(args, TRAPOSFTConfig):
            raise TypeError(f"args must be a TRAPOSFTConfig, got {type(args).__name__}")
        if args.sft_loss != "nll" and kwargs.get("compute_loss_func") is not None:
            raise ValueError("compute_loss_func replaces the loss; it cannot be combined with sft_loss='trsft'")
        super().__init__(model=model, args=args, **kwargs)
        pc = self.accelerator.parallelism_config
        if args.sft_loss != "nll" and pc is not None and getattr(pc, "sp_enabled", False):
            raise ValueError(
                "sft_loss='trsft' is not supported with sequence parallelism (the model's own NLL is used)"
            )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.model.training:
            expert = inputs.get("completion_mask", inputs.get("assistant_masks"))
            if expert is None and "labels" in inputs:
                expert = inputs["labels"] != -100
            tokens = inputs.get("attention_mask", torch.ones_like(inputs["input_ids"]))
            self._spend(trained_tokens=int(tokens.sum()), expert_tokens=int(expert.sum()) if expert is not None else 0)
        with self._token_loss_hook(model):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    @contextlib.contextmanager
    def _token_loss_hook(self, model):
        mode = "train" if self.model.training else "eval"
        kind, alpha = self.args.sft_loss, self.args.alpha

        def hook(module, args, output):
            if not isinstance(output, FusedCausalLMOutput) or output.label_mask is None:
                return output  # a plain forward (logits for metrics): leave it alone
            mask = output.label_mask
            with torch.no_grad():
                clipped = ((output.log_probs.exp() < alpha) & mask).sum()
                counts = self.accelerator.gather(torch.stack([clipped, mask.sum()]).view(1, 2)).sum(0)
                self._metrics[mode]["trapo/sft_clip_frac"].append((counts[0] / counts[1].clamp(min=1)).item())
            output.log_probs = -prefix_token_loss(output.log_probs, kind, alpha) * mask
            return output

        handle = model.register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()


def sft_trainer(model, tokenizer, dataset, args: TRAPOSFTConfig, **trainer_kwargs) -> TrSFTTrainer:
    """A `TrSFTTrainer` on the expert traces of ``dataset`` (TRAPO rows, or prompt-completion rows as they are)."""
    if "completion" not in dataset.column_names:
        dataset = expert_sft_dataset(dataset, args.expert_column, max_traces=args.max_expert_traces)
    return TrSFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer, **trainer_kwargs)


def train_sft(model, tokenizer, dataset, args: TRAPOSFTConfig, save_final: bool = False, resume=None, **trainer_kwargs):
    """Fine-tune ``model`` on the expert traces of ``dataset``; return the trained model.

    ``save_final`` saves the model and tokenizer to ``args.output_dir`` through the trainer (which gathers ZeRO-3
    shards; ``model.save_pretrained`` on the returned model would not).
    """
    trainer = sft_trainer(model, tokenizer, dataset, args, **trainer_kwargs)
    trainer.train(resume_from_checkpoint=resume)
    if save_final:
        trainer.save_model()
    return trainer.model
