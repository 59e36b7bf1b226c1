"""`TRAPOTrainer`: TRAPO on TRL's `GRPOTrainer`, as a set of TRL hooks (docs/method.md, "Where TRAPO meets TRL").

The method itself lives elsewhere: the staged rollout in `trapo.rollout`, the advantage and the loss in `trapo.core`,
the settings in `trapo.config`. This class only connects them to TRL 1.16 (pinned; ``tests/test_trl_contract.py``
fails loudly if the internals below move):

- the rollout is TRL's public ``rollout_func`` hook. It runs a `trapo.rollout.StagedRollout` whose ``generate`` is
  TRL's ``_generate_single_turn`` (HF generate or vLLM) and whose ``score`` calls the reward functions, and returns
  prefix + continuation as the completion with the prefix marked external (``env_mask`` = 0), so TRL's decoding,
  logging and padding work unchanged;
- rewards are scored during the rollout (the guidance decisions need them): ``_calculate_rewards`` hands TRL those;
- ``_generate_and_score_completions`` replaces TRL's advantages with `trapo.core.group_advantages` over each prompt's
  whole group and adds the mask of imitated prefix tokens;
- ``_compute_loss`` is `trapo.core.mixed_loss` on the log-probs of TRL's one forward pass.
"""

from __future__ import annotations

import contextlib
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
from trapo.data.validation import validate_training_inputs
from trapo.guards import BoundedRewardCalls, UnscorableRewards, skip_nonfinite_steps
from trapo.logs import RolloutLogs
from trapo.rollout import ROLLOUTS, ExpertPrefix, RolloutBatch, choose_rollout, whole_groups

logger = logging.getLogger(__name__)


@dataclass
class _PendingRollout:
    """The step in flight: TRL's input rows (its ``rollout_func`` sees only prompts) and, once drawn, the batch."""

    rows: list[dict]
    batch: RolloutBatch | None = None
    filler: list[int] | None = None  # a context to pad this process's generate calls with (a prompt of its own)
    generate_calls: int = 0  # calls this process made, padded ones included (every process makes the same number)


class TRAPOTrainer(CrashSafeCheckpoints, RolloutLogs, GRPOTrainer):
    """GRPO with adaptive expert guidance: staged micro-group rollouts and trust-region SFT on prefixes.

    Dataset rows need ``prompt`` (text or chat messages), the expert column (a list of ≥ 1 solution strings)
    and whatever the reward functions read (e.g. ``answer``). Reward functions follow TRL's signature.
    """

    _tag_names = ["trl", "trapo"]
    # The methods `trapo bench` times, by phase. The meter refuses a name that does not exist, so renaming one of
    # them fails the benchmark instead of silently moving its time into another phase.
    timed_methods = {
        "generation": ("_generate_single_turn",),
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
        train_dataset = validate_training_inputs(train_dataset, kwargs.get("processing_class"), args)
        kwargs["rollout_func"] = self._rollout
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*'rollout_func'.*experimental")
            super().__init__(model=model, reward_funcs=reward_funcs, args=args, train_dataset=train_dataset, **kwargs)
        if any(isinstance(f, nn.Module) for f in self.reward_funcs):
            raise ValueError(
                "TRAPOTrainer scores samples between stages and supports function rewards only "
                "(e.g. trapo.rewards.math_reward), not reward models"
            )
        if self.tools:
            raise ValueError("TRAPOTrainer does not support tool calling")
        self.micro_groups = args.micro_groups
        self._pending: _PendingRollout | None = None
        self._boundary_ids: frozenset[int] | None = None
        # Cumulative rollout counters (benchmarks and the demo read them); saved in checkpoints.
        self.rollout_stats: Counter = Counter()
        self._reward_calls = BoundedRewardCalls(args.reward_timeout, args.max_reward_failures, self.rollout_stats)
        self._unscorable = UnscorableRewards(args.max_unscorable_share, args.max_unscorable_steps, self.rollout_stats)

    def train(self, *args, **kwargs):
        self._write_run_config()
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

    # ------------------------------------------------------------------ reliability

    def create_optimizer(self, *args, **kwargs):
        """TRL's optimizer, with steps on non-finite gradients skipped (`trapo.guards.skip_nonfinite_steps`)."""
        optimizer = super().create_optimizer(*args, **kwargs)
        if self.args.skip_nonfinite_steps:
            skip_nonfinite_steps(optimizer, self._all_processes_finite, self._on_skipped_step)
        return optimizer

    def _all_processes_finite(self, local_finite: bool) -> bool:
        if self.accelerator.num_processes == 1:
            return local_finite
        flag = torch.tensor([0.0 if local_finite else 1.0], device=self.accelerator.device)
        return bool(self.accelerator.reduce(flag, reduction="sum").item() == 0)

    def _on_skipped_step(self) -> None:
        self.rollout_stats["skipped_steps"] += 1
        logger.warning(
            "step %d: non-finite loss or gradient, optimizer step skipped (%d so far)",
            self.state.global_step + 1,
            self.rollout_stats["skipped_steps"],
        )
        self._metrics["train"]["trapo/skipped_steps"].append(float(self.rollout_stats["skipped_steps"]))

    def _get_train_sampler(self, dataset=None):
        """TRL's sampler, with each epoch's order a function of (seed, epoch) only.

        TRL's `RepeatSampler` draws every epoch's permutation from one generator that runs on across epochs, so a
        run resumed in epoch e ≥ 1 (a fresh sampler) would replay epoch 0's order instead of epoch e's. HF calls
        ``set_epoch`` at the start of every epoch; reseeding there makes straight and resumed runs see the same data.
        """
        sampler = super()._get_train_sampler(dataset)
        seed = getattr(sampler, "seed", None)
        generator = getattr(sampler, "generator", None)
        if seed is not None and generator is not None and not hasattr(sampler, "set_epoch"):
            sampler.set_epoch = lambda epoch: generator.manual_seed(seed + epoch)
        return sampler

    def _extra_checkpoint_state(self) -> dict:
        return {"rollout_stats": dict(self.rollout_stats)}

    def _load_extra_checkpoint_state(self, state: dict) -> None:
        self.rollout_stats.clear()
        self.rollout_stats.update(state.get("rollout_stats", {}))

    # ------------------------------------------------------------------ rollout

    def _generate_and_score_completions(self, inputs):
        """TRL's step preparation around our rollout, with TRAPO's advantages and the imitated-prefix mask."""
        self._pending = _PendingRollout(rows=list(inputs))
        try:
            output = super()._generate_and_score_completions(inputs)
            batch = self._pending.batch
        finally:
            self._pending = None
        width = output["completion_ids"].size(1)
        imitated = torch.zeros_like(output["completion_mask"])
        for i, n in enumerate(batch.imitated_lengths()):
            imitated[i, : min(n, width)] = 1
        output["imitated_mask"] = imitated
        rewards = torch.tensor([x.reward for x in batch.samples], dtype=torch.float32)
        advantages = group_advantages(rewards, batch.group_ids, scale=self.args.scale_rewards == "group")
        output["advantages"] = advantages.to(output["advantages"].device)
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
        self._pending.filler = list(prompt_ids[0])
        stages = self.micro_groups if mode == "train" else (MicroGroup(num_generations),)
        rollout = self._make_rollout(stages, is_conversational({"prompt": prompts[0]}))
        batch = rollout.run(rows, [list(ids) for ids in prompt_ids])
        self._pending.batch = batch
        counts = batch.counts()
        counts["generation_calls"] = self._pending.generate_calls
        self.rollout_stats.update(counts)
        # Cumulative failed reward calls (timeouts + exceptions) of this process, scored 0 (docs/errors.md).
        failures = self.rollout_stats["reward_timeouts"] + self.rollout_stats["reward_errors"]
        self._log_means(mode, {**batch.metrics(), "reward_failures": failures}, prefix="trapo/")
        counts = torch.tensor(
            [self._unscorable.step_unscorable, self._unscorable.step_total], device=self.accelerator.device
        )
        unscorable, total = (int(x) for x in self.accelerator.reduce(counts, reduction="sum"))
        self._metrics[mode]["trapo/unscorable_share"].append(self._unscorable.end_step(unscorable, total))
        return self._rollout_output(batch, prompt_ids, with_logprobs=self.use_vllm)

    @property
    def rollout_kind(self) -> str:
        """The rollout this trainer runs: ``args.rollout``, with ``auto`` resolved for where generation runs."""
        return choose_rollout(self.args.rollout, self.accelerator.device.type, self.use_vllm)

    def _make_rollout(self, stages, chat: bool):
        expert_prefix = ExpertPrefix(
            lambda text: self._tokenizer(text, add_special_tokens=False)["input_ids"],
            self.max_completion_length,
            self.eos_token_ids[0],
            self._paragraph_boundary_ids(),
            self.args.prefix_lookahead,
            self.args.second_trace_for_full,
            self.args.expert_column,
        )
        rollout_class = ROLLOUTS[self.rollout_kind if len(stages) > 1 else "staged"]
        return rollout_class(
            stages,
            expert_prefix,
            generate=self._generate_contexts,
            score=lambda rows, responses: self._score_responses(rows, responses, chat),
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

    def _generate_contexts(self, contexts: list[list[int]], max_new: int):
        """The rollout's ``generate``: TRL's ``_generate_single_turn`` with at most ``max_new`` new tokens.

        Collective generation (vLLM server, ZeRO-3 gathers) needs the same number of calls, requests and sampling
        parameters on every process: the counts and caps are all-reduced and short batches padded with throw-away
        copies of a context.
        """
        count = len(contexts)
        if self.accelerator.num_processes > 1:
            gathered = self.accelerator.gather(torch.tensor([[count, max_new]], device=self.accelerator.device))
            count, max_new = (int(x) for x in gathered.max(dim=0).values)
        if count == 0:
            return [], None
        padding = [self._pending.filler] * (count - len(contexts))
        with self._max_new_tokens(max_new):
            completion_ids, logprobs = self._generate_single_turn(contexts + padding, None, {}, 1)
        self._pending.generate_calls += 1
        n = len(contexts)
        return [list(c) for c in completion_ids[:n]], (None if logprobs is None else [list(lp) for lp in logprobs[:n]])

    @contextlib.contextmanager
    def _max_new_tokens(self, max_new: int):
        """Temporarily cap new tokens in TRL's generation settings (HF ``generate`` and vLLM), then restore them."""
        targets = []
        if getattr(self, "generation_config", None) is not None:
            targets.append((self.generation_config, "max_new_tokens"))
        if isinstance(getattr(self, "generation_kwargs", None), dict) and "max_new_tokens" in self.generation_kwargs:
            targets.append((self.generation_kwargs, "max_new_tokens"))
        if self.use_vllm and getattr(self, "vllm_generation", None) is not None:
            targets.append((self.vllm_generation, "max_completion_length"))

        def get(obj, key):
            return obj[key] if isinstance(obj, dict) else getattr(obj, key)

        def put(obj, key, value):
            if isinstance(obj, dict):
                obj[key] = value
            else:
                setattr(obj, key, value)

        saved = [(obj, key, get(obj, key)) for obj, key in targets]
        for obj, key, _ in saved:
            put(obj, key, max_new)
        try:
            yield
        finally:
            for obj, key, value in saved:
                put(obj, key, value)

    def _score_responses(self, rows: list[dict], responses: list[list[int]], chat: bool):
        """The rollout's ``score``: every reward function on whole responses (prefix + continuation), locally."""
        texts = self.processing_class.batch_decode(responses, skip_special_tokens=True)
        completions = [[{"role": "assistant", "content": t}] for t in texts] if chat else texts
        columns = {k: [row[k] for row in rows] for k in rows[0] if k not in ("prompt", "completion", "completion_ids")}
        per_func = torch.zeros(len(rows), len(self.reward_funcs))
        for j, func in enumerate(self.reward_funcs):
            values = self._reward_calls(
                func,
                self.reward_func_names[j],
                len(rows),
                prompts=[row["prompt"] for row in rows],
                completions=completions,
                completion_ids=responses,
                trainer_state=self.state,
                **columns,
            )
            per_func[:, j] = torch.tensor([math.nan if v is None else float(v) for v in values])
        per_func = self._unscorable.observe(per_func, list(self.reward_func_names), texts)
        totals = (per_func * self.reward_weights.cpu()).sum(dim=1)
        return totals.tolist(), per_func.tolist()

    def _log_means(self, mode: str, values: dict[str, float], prefix: str = "") -> None:
        """Log each value's mean over processes, in one gather (every process must pass the same keys); NaN marks a
        value a process does not have, and a value no process has is not logged."""
        local = torch.tensor([list(values.values())], dtype=torch.float32, device=self.accelerator.device)
        means = self.accelerator.gather(local).nanmean(dim=0).tolist()
        for name, mean in zip(values, means, strict=True):
            if not math.isnan(mean):
                self._metrics[mode][prefix + name].append(mean)

    # ------------------------------------------------------------------ loss

    def _compute_loss(self, model, inputs):
        """The mixed TRAPO loss (`trapo.core.mixed_loss`) on TRL's single forward pass."""
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        input_ids = torch.cat([inputs["prompt_ids"], completion_ids], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"], completion_mask], dim=1)
        logps, entropies, _ = self._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, completion_ids.size(1), compute_entropy=True
        )
        completion_mask = completion_mask.bool()
        if "tool_mask" in inputs:
            prefix_mask = completion_mask & ~inputs["tool_mask"].bool()
        else:
            prefix_mask = torch.zeros_like(completion_mask)
        pg_weights = None
        if self.use_vllm and self.vllm_importance_sampling_correction:
            pg_weights = inputs["importance_sampling_ratio"]
        loss, metrics = mixed_loss(
            logps,
            inputs["advantages"],
            completion_mask,
            prefix_mask,
            inputs["imitated_mask"].bool() & prefix_mask,
            old_logps=inputs.get("old_per_token_logps"),
            prefix_loss=self.args.prefix_loss,
            alpha=self.args.alpha,
            gamma=self.args.luffy_gamma,
            prefix_weight=self.args.prefix_weight,
            clip_eps=self.args.pg_clip,
            max_completion_length=self.max_completion_length,
            entropies=entropies,
            entropy_coef=self.args.entropy_coef,
            pg_weights=pg_weights,
            loss_normalization=self.args.loss_normalization,
            entropy_tokens=self.args.entropy_tokens,
        )
        mode = "train" if self.model.training else "eval"
        if mode == "train" and self.args.loss_normalization == "batch_budget":
            loss = loss / self.current_gradient_accumulation_steps  # sequence_budget sums over micro-batches
        self._log_means(mode, {("entropy" if k == "entropy" else f"trapo/{k}"): v for k, v in metrics.items()})
        return loss
