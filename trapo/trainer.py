"""`TRAPOTrainer`: TRAPO on TRL's `GRPOTrainer`, as a set of TRL hooks (docs/method.md, "Where TRAPO meets TRL").

The method itself lives elsewhere: the staged rollout in `trapo.rollout`, the advantage and the loss in `trapo.core`,
the settings in `trapo.config`. This class only connects them to TRL 1.16 (pinned; ``tests/test_trl_contract.py``
fails loudly if the internals below move):

- the rollout is TRL's public ``rollout_func`` hook. It runs a `trapo.rollout.StagedRollout` whose ``generate`` is
  TRL's ``_generate_single_turn`` (HF generate or vLLM) and whose ``score`` calls the reward functions, and returns
  prefix + continuation as the completion with the prefix marked external (``env_mask`` = 0), so TRL's decoding,
  logging and padding work unchanged;
- rewards are scored during the rollout (the guidance decisions need them): ``_calculate_rewards`` hands TRL those;
- ``_trapo_step_output`` is the one place where TRAPO replaces TRL's step output: the prefix and imitated masks, the
  advantages (`trapo.core.group_advantages` over each prompt's whole group, also shown in the completions table), the
  headline reward and the prefix marks;
- ``_compute_loss`` is `trapo.core.mixed_loss` on the log-probs of TRL's one forward pass.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from trl import GRPOTrainer
from trl.data_utils import is_conversational

from trapo.checkpointing import CrashSafeCheckpoints
from trapo.config import TRAPOConfig
from trapo.core import MicroGroup, group_advantages, mixed_loss
from trapo.data.validation import validate_training_rows, validate_with_tokenizer
from trapo.distributed import CPUFullyShardedMixin, DeepSpeedGuardMixin
from trapo.engines import TRLBatchGenerate, WaitThrough, enable_vllm_cpu_weight_sync, request_engine
from trapo.guards import BoundedRewardCalls, NonFiniteStepGuard, UnscorableRewards
from trapo.ledger import BudgetLedgerMixin
from trapo.logs import RolloutLogs
from trapo.relift import ReliftMixin
from trapo.rollout import ROLLOUTS, ExpertPrefix, RolloutBatch, choose_rollout, whole_groups
from trapo.scoring import RolloutScorer, check_reward_scores_experts

logger = logging.getLogger(__name__)


@dataclass
class _PendingRollout:
    """The step in flight: TRL's input rows (its ``rollout_func`` sees only prompts) and, once drawn, the batch."""

    rows: list[dict]
    batch: RolloutBatch | None = None


class TRAPOTrainer(
    CrashSafeCheckpoints,
    NonFiniteStepGuard,
    BudgetLedgerMixin,
    ReliftMixin,
    DeepSpeedGuardMixin,
    CPUFullyShardedMixin,
    RolloutLogs,
    GRPOTrainer,
):
    """GRPO with adaptive expert guidance: staged micro-group rollouts and trust-region SFT on prefixes.

    Dataset rows need ``prompt`` (text or chat messages), the expert column (a list of ≥ 1 solution strings)
    and whatever the reward functions read (e.g. ``answer``). Reward functions follow TRL's signature.
    """

    _tag_names = ["trl", "trapo"]
    # The methods `trapo bench` times, by phase. The meter refuses a name that does not exist, so renaming one of
    # them fails the benchmark instead of silently moving its time into another phase.
    timed_methods = {
        "generation": ("_generate_single_turn", "_next_finished"),
        "reward": ("_score_responses", "_calculate_rewards"),
        "rollout": ("_generate_and_score_completions",),
        "forward": ("compute_loss",),
    }

    def __init__(self, model, reward_funcs, args: TRAPOConfig | None = None, train_dataset=None, **kwargs):
        if args is None:
            raise ValueError("TRAPOTrainer needs a TRAPOConfig (args=TRAPOConfig(output_dir=...))")
        if not isinstance(args, TRAPOConfig):
            raise TypeError(f"args must be a TRAPOConfig, got {type(args).__name__}")
        if kwargs.get("rollout_func") is not None:
            raise ValueError("TRAPOTrainer supplies its own rollout_func (the staged micro-group sampler)")
        for name in ("tools", "environment_factory"):
            if kwargs.get(name):
                raise ValueError(f"TRAPOTrainer does not support {name}: its rollout is its own micro-group sampler")
        validate_training_rows(train_dataset, args)  # before a model is loaded: bad rows fail at once
        if args.use_vllm:
            enable_vllm_cpu_weight_sync()  # before TRL builds the engine (docs/scale.md)
        kwargs["rollout_func"] = self._rollout
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*'rollout_func'.*experimental")
            super().__init__(model=model, reward_funcs=reward_funcs, args=args, train_dataset=train_dataset, **kwargs)
        if any(isinstance(f, nn.Module) for f in self.reward_funcs):
            raise ValueError(
                "TRAPOTrainer scores samples between stages and supports function rewards only "
                "(e.g. trapo.rewards.math_reward), not reward models"
            )
        sharded_generation = self.is_fsdp_enabled and not self.use_vllm
        if sharded_generation and (self.rollout_kind == "pipelined" or args.use_transformers_continuous_batching):
            raise ValueError(
                "continuous batching (rollout='pipelined', use_transformers_continuous_batching) runs each rank's "
                "generation on its own schedule, which FSDP's per-layer all-gathers cannot follow: use "
                "rollout='staged' or 'speculative', or vLLM for generation"
            )
        # The tokenizer TRL ended up with, however it was given (passed in, or loaded from the model's name).
        config = getattr(self.model, "config", None)
        context = getattr(getattr(config, "text_config", config), "max_position_embeddings", None)
        self.train_dataset = validate_with_tokenizer(self.train_dataset, self._tokenizer, args, context)
        self.micro_groups = args.micro_groups
        self._pending: _PendingRollout | None = None
        self._boundary_ids: frozenset[int] | None = None
        # Cumulative rollout counters (benchmarks and the demo read them); saved in checkpoints.
        self.rollout_stats: Counter = Counter()
        reward_calls = BoundedRewardCalls(
            args.reward_timeout, args.max_reward_failures, self.rollout_stats, getattr(self, "async_loop", None)
        )
        unscorable = UnscorableRewards(args.max_unscorable_share, args.max_unscorable_steps, self.rollout_stats)
        sample_prompt = self.train_dataset[0]["prompt"] if hasattr(self.train_dataset, "__getitem__") else ""
        self._scorer = RolloutScorer(
            self.reward_funcs,
            self.reward_func_names,
            self.reward_weights,
            lambda ids: self._tokenizer.batch_decode(ids, skip_special_tokens=True),
            chat=is_conversational({"prompt": sample_prompt}),
            calls=reward_calls,
            unscorable=unscorable,
            log_metric=self._log_metric,
            trainer_state=lambda: self.state,
        )
        self._relift_setup()

    def train(self, *args, **kwargs):
        self._write_run_config()
        if hasattr(self.train_dataset, "__getitem__") and self.accelerator.is_main_process:
            check_reward_scores_experts(self._scorer, self.train_dataset, self.args.expert_column, seed=self.args.seed)
        return super().train(*args, **kwargs)

    def _write_run_config(self) -> None:
        """``<output_dir>/trapo_config.yaml`` at the start of training: every `TRAPOConfig` field as resolved (preset
        values filled in), the model, the data and the reward functions, so a run folder says what produced it."""
        if not self.args.should_save:
            return
        import yaml

        model = getattr(getattr(self.model, "config", None), "_name_or_path", None)
        data = self.train_dataset
        resolved = {
            "model": model,
            "dataset": {"rows": len(data) if hasattr(data, "__len__") else None,
                        "columns": getattr(data, "column_names", None)},
            "reward_functions": list(self.reward_func_names),
            "rollout": self.rollout_kind,
            "config": {k: v for k, v in self.args.to_dict().items() if not k.startswith("_")},
        }  # fmt: skip
        path = Path(self.args.output_dir) / "trapo_config.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(resolved, sort_keys=False, default_flow_style=None, allow_unicode=True))

    # ------------------------------------------------------------------ checkpoints

    def _extra_checkpoint_state(self) -> dict:
        return {"rollout_stats": dict(self.rollout_stats), **self._relift_checkpoint_state()}

    def _load_extra_checkpoint_state(self, state: dict) -> None:
        self.rollout_stats.clear()
        self.rollout_stats.update(state.get("rollout_stats", {}))
        self._relift_load_checkpoint_state(state)

    # ------------------------------------------------------------------ rollout

    def _generate_and_score_completions(self, inputs):
        """TRL's step preparation around our rollout (``rollout_func``), then TRAPO's part of the step output."""
        self._pending = _PendingRollout(rows=list(inputs))
        try:
            output = super()._generate_and_score_completions(inputs)
            return self._trapo_step_output(output, self._pending.batch)
        finally:
            self._pending = None

    def _trapo_step_output(self, output: dict, batch: RolloutBatch) -> dict:
        """The one place where TRAPO replaces TRL's step output (docs/method.md, "Where TRAPO meets TRL").

        - ``prefix_mask``: each sample's expert-prefix tokens; ``imitated_mask``: those that carry the prefix loss
          (one copy per distinct prefix). Both within ``completion_mask``, so ``mask_truncated_completions`` drops a
          truncated sample's prefix too. TRL's ``tool_mask`` (the same prefix, from ``env_mask``) is dropped: the loss
          reads only these.
        - ``advantages``: `trapo.core.group_advantages` over each prompt's whole group, also in the completions table;
        - the headline ``reward`` (the policy's own) and the prefix marks in logged completions.
        """
        completion_mask = output["completion_mask"].bool()
        prefix = torch.zeros_like(completion_mask)
        imitated = torch.zeros_like(completion_mask)
        for i, (sample, n) in enumerate(zip(batch.samples, batch.imitated_lengths(), strict=True)):
            prefix[i, : len(sample.prefix)] = True
            imitated[i, :n] = True
        output["prefix_mask"] = prefix & completion_mask
        output["imitated_mask"] = imitated & completion_mask
        output.pop("tool_mask", None)
        rewards = torch.tensor([x.reward for x in batch.samples], dtype=torch.float32)
        advantages = group_advantages(rewards, batch.group_ids, scale=self.args.scale_rewards == "group")
        output["advantages"] = advantages.to(completion_mask.device)
        self._show_trained_advantages(output["advantages"])
        self._headline_reward(batch)
        if self.args.log_completions:
            self._mark_prefixes_in_logged_completions(batch)
        return output

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        """Rewards were computed during the rollout; hand TRL those (gathered) instead of scoring again."""
        if self._pending is None or self._pending.batch is None:
            return super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        per_func = [x.rewards_per_func for x in self._pending.batch.samples]
        local = torch.tensor(per_func, dtype=torch.float32, device=self.accelerator.device)
        return self.accelerator.gather(local)

    def _rollout(self, prompts: list, trainer: GRPOTrainer) -> dict[str, Any]:
        """TRL's ``rollout_func``: draw every prompt's group in stages, return prefix + continuation per sample."""
        mode = "train" if self.model.training else "eval"
        num_generations = self.num_generations if mode == "train" else self.num_generations_eval
        starts = whole_groups(prompts, num_generations)
        prompt_ids, _, _ = self._tokenize_prompts([prompts[i] for i in starts])
        rows = [self._pending.rows[i] for i in starts]
        stages = self.micro_groups if mode == "train" else (MicroGroup(num_generations),)
        self._scorer.chat = is_conversational({"prompt": prompts[0]})
        kind = self.rollout_kind if len(stages) > 1 or self.rollout_kind == "pipelined" else "staged"
        prompt_ids = [list(ids) for ids in prompt_ids]
        if kind == "pipelined":
            tokens = max(len(ids) for ids in prompt_ids) + self.max_completion_length
            with request_engine(self, len(rows) * num_generations, tokens) as engine:
                waited = WaitThrough(engine, self._next_finished)
                batch = self._make_rollout(stages, waited, kind).run(rows, prompt_ids)
            generation = Counter(generation_requests=engine.requests)
        else:
            generate = TRLBatchGenerate(self, filler=prompt_ids[0])
            batch = self._make_rollout(stages, generate, kind).run(rows, prompt_ids)
            generation = Counter(generation_calls=generate.calls)
        self._pending.batch = batch
        if mode == "train" and self.args.relift:
            self._relift_collect(batch, rows, prompt_ids)
        for column, values in self._scorer.extra_columns(batch.score_calls, batch.samples).items():
            self._log_completion_extra(column, values)
        counts = batch.counts()
        if mode == "train":
            self._spend(generated_tokens=counts["generated_tokens"])
        self.rollout_stats.update(counts)  # update, not +: a count of 0 (discarded tokens) stays a key
        self.rollout_stats.update(generation)
        # Cumulative failed reward calls (timeouts + exceptions) of this process, scored 0 (docs/errors.md).
        failures = self.rollout_stats["reward_timeouts"] + self.rollout_stats["reward_errors"]
        self._log_means(mode, {**batch.metrics(), "reward_failures": failures}, prefix="trapo/")
        counts = torch.tensor(
            [self._scorer.unscorable.step_unscorable, self._scorer.unscorable.step_total],
            device=self.accelerator.device,
        )
        unscorable, total = (int(x) for x in self.accelerator.reduce(counts, reduction="sum"))
        self._metrics[mode]["trapo/unscorable_share"].append(self._scorer.unscorable.end_step(unscorable, total))
        return self._rollout_output(batch, prompt_ids, with_logprobs=self.use_vllm)

    @property
    def rollout_kind(self) -> str:
        """The rollout this trainer runs: ``args.rollout``, with ``auto`` resolved for where generation runs."""
        return choose_rollout(self.args.rollout, self.accelerator.device.type, self.use_vllm)

    def _make_rollout(self, stages, generate, kind: str):
        expert_prefix = ExpertPrefix(
            lambda text: self._tokenizer(text, add_special_tokens=False)["input_ids"],
            self.max_completion_length,
            self.eos_token_ids[0],
            self._paragraph_boundary_ids(),
            self.args.prefix_lookahead,
            self.args.second_trace_for_full,
            self.args.expert_column,
        )
        return ROLLOUTS[kind](
            stages,
            expert_prefix,
            generate=generate,
            score=self._score_responses,
            budget=self.max_completion_length,
            eos_token_ids=self.eos_token_ids,
        )

    @staticmethod
    def _rollout_output(batch: RolloutBatch, prompt_ids, with_logprobs: bool = False) -> dict[str, Any]:
        """The batch in TRL's ``rollout_func`` format: the prefix is external to the model (``env_mask`` 0), and has no
        sampling log-probs (None), so it never enters vLLM's importance-sampling ratio. With vLLM, log-probs are
        always returned, even when no sample of this process generated anything (TRL needs the list)."""
        samples = batch.samples
        output = {
            "prompt_ids": [list(prompt_ids[x.group]) for x in samples],
            "completion_ids": [x.response for x in samples],
            "env_mask": [[0] * len(x.prefix) + [1] * len(x.continuation) for x in samples],
            "logprobs": None,
        }
        if with_logprobs or any(x.logprobs is not None for x in samples):
            output["logprobs"] = [
                [None] * len(x.prefix) + (x.logprobs or [None] * len(x.continuation)) for x in samples
            ]
        return output

    def _paragraph_boundary_ids(self) -> frozenset[int]:
        """Ids of every vocabulary token whose text contains the paragraph boundary, as the released code matches
        them (computed once)."""
        if self._boundary_ids is None:
            boundary = self.args.paragraph_boundary
            texts = self._tokenizer.batch_decode([[i] for i in range(len(self._tokenizer))])
            self._boundary_ids = frozenset(i for i, t in enumerate(texts) if boundary in t)
        return self._boundary_ids

    def _next_finished(self, engine):
        """The wait for a pipelined rollout's next finished request (its own method so `trapo bench` times it as
        generation)."""
        return engine.next_finished()

    def _score_responses(self, rows: list[dict], responses: list[list[int]]):
        """The rollout's ``score``: every reward function on whole responses (prefix + continuation), locally
        (`trapo.scoring.RolloutScorer`)."""
        return self._scorer(rows, responses)

    def _log_means(self, mode: str, values: dict[str, float], prefix: str = "") -> None:
        """Log each value's mean over processes, in one gather (every process must pass the same keys); NaN marks a
        value a process does not have, and a value no process has is not logged."""
        local = torch.tensor([list(values.values())], dtype=torch.float32, device=self.accelerator.device)
        means = self.accelerator.gather(local).nanmean(dim=0).tolist()
        for name, mean in zip(values, means, strict=True):
            if not math.isnan(mean):
                self._metrics[mode][prefix + name].append(mean)

    # ------------------------------------------------------------------ loss

    STEP_KEYS = ("prefix_mask", "imitated_mask", "advantages")

    def _compute_loss(self, model, inputs):
        """The mixed TRAPO loss (`trapo.core.mixed_loss`) on TRL's single forward pass, on the masks and advantages
        `_trapo_step_output` built (nothing else marks the prefix)."""
        missing = [key for key in self.STEP_KEYS if key not in inputs]
        if missing:
            raise RuntimeError(
                f"the step inputs lack {missing}, which TRAPOTrainer._trapo_step_output adds: an override or a TRL "
                "change bypassed it (tests/test_trl_contract.py pins the TRL internals it relies on)"
            )
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        input_ids = torch.cat([inputs["prompt_ids"], completion_ids], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"], completion_mask], dim=1)
        logps, entropies, aux_loss = self._get_per_token_logps_and_entropies(
            model,
            input_ids,
            attention_mask,
            completion_ids.size(1),
            compute_entropy=True,
            compute_aux_loss=self.aux_loss_enabled,
        )
        pg_weights = None
        if self.use_vllm and self.vllm_importance_sampling_correction:
            pg_weights = inputs["importance_sampling_ratio"]
        loss, metrics = mixed_loss(
            logps,
            inputs["advantages"],
            completion_mask,
            inputs["prefix_mask"],
            inputs["imitated_mask"],
            old_logps=inputs.get("old_per_token_logps"),
            prefix_loss=self.args.prefix_loss,
            alpha=self.args.alpha,
            gamma=self.args.luffy_gamma,
            prefix_weight=self.args.prefix_weight,
            pg_weight=self.args.pg_weight,
            clip_eps=self._clip_range(),
            max_completion_length=self.max_completion_length,
            entropies=entropies,
            entropy_coef=self.args.entropy_coef,
            pg_weights=pg_weights,
            loss_normalization=self.args.loss_normalization,
            entropy_tokens=self.args.entropy_tokens,
            entropy_token_budget=self.args.entropy_token_budget,
        )
        mode = "train" if self.model.training else "eval"
        if mode == "train":
            imitated = int(inputs["imitated_mask"].sum()) if self.args.prefix_loss != "none" else 0
            self._spend(trained_tokens=int(attention_mask.sum()), expert_tokens=imitated)
        accumulation = self.current_gradient_accumulation_steps if mode == "train" else 1
        if self.args.loss_normalization == "batch_budget":
            loss = loss / accumulation  # sequence_budget sums over micro-batches
        if self.aux_loss_enabled:  # a mixture-of-experts model's load-balancing loss, as TRL adds it
            loss = loss + self.router_aux_loss_coef * aux_loss / accumulation
            metrics["aux_loss"] = aux_loss.item()
        self._log_means(mode, {("entropy" if k == "entropy" else f"trapo/{k}"): v for k, v in metrics.items()})
        return loss

    def _clip_range(self) -> tuple[float, float] | None:
        """The ratio clip ``(low, high)`` from ``epsilon`` / ``epsilon_high``; None = no clip (the default)."""
        if self.args.epsilon is None:
            return None
        return (self.args.epsilon, self.args.epsilon_high if self.args.epsilon_high is not None else self.args.epsilon)
