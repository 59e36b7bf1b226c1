"""`TRAPOConfig` and `TRAPOTrainer`: TRAPO on TRL's `GRPOTrainer` (DESIGN.md §2, §3, §7).

How it plugs into TRL (1.16, pinned; `tests/test_trl_contract.py` fails loudly if these move):
- the staged micro-group rollout is TRL's public ``rollout_func`` hook: for each stage, one batched call of
  ``_generate_single_turn`` over every prompt of the step that needs it; a full-trace stage generates nothing.
  It returns prefix + continuation as the completion and marks the prefix as external (``env_mask`` = 0),
  so TRL's decoding, logging and padding work unchanged;
- rewards are scored once, during the rollout (the guidance decisions need them); ``_calculate_rewards``
  returns that cache instead of scoring again;
- advantages and the loss come from `trapo.core`: ``group_advantages`` and ``mixed_loss``, fed by the
  log-probs of TRL's one forward pass (``_get_per_token_logps_and_entropies``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from trl import GRPOConfig, GRPOTrainer
from trl.data_utils import is_conversational

from trapo.checkpointing import CrashSafeCheckpoints
from trapo.core import (
    PREFIX_LOSS_KINDS,
    MicroGroup,
    cut_prefix,
    group_advantages,
    is_guided,
    mixed_loss,
    schedule_size,
    validate_schedule,
)
from trapo.data.validation import validate_training_inputs
from trapo.guards import RewardTimeout, call_with_timeout, skip_nonfinite_steps
from trapo.presets import rl_preset

logger = logging.getLogger(__name__)


@dataclass
class TRAPOConfig(GRPOConfig):
    """`GRPOConfig` plus TRAPO's settings. Defaults reproduce the paper (DESIGN.md §2-3).

    RL defaults changed from TRL's: ``loss_type="dr_grpo"`` (token sum ÷ batch × max_completion_length, so
    SFT and RL tokens weigh 1:1), ``scale_rewards="none"`` (Â = r − group mean), ``entropy_coef=0.001``,
    ``beta=0`` (no KL), one update per rollout batch.
    """

    method: str = field(
        default="trapo",
        metadata={
            "help": "Preset: trapo | grpo | fixed-prefix | context-only | naive-sft | luffy. Sets `schedule`, "
            "`sft_loss` and `prefix_weight` unless you set them yourself."
        },
    )
    schedule: list[dict] | None = field(
        default=None,
        metadata={
            "help": "Micro-group stages, each {n, prefix_ratio, threshold}: stage k shows prefix_ratio of the expert "
            "trace when the mean reward of all earlier samples of the prompt is < threshold. Sizes must sum to "
            "num_generations. None = the method's schedule (trapo: the paper's 4/2/1/1)."
        },
    )
    alpha: float = field(default=0.1, metadata={"help": "TrSFT trust-region bound: gradient 1/max(p, alpha)."})
    sft_loss: str | None = field(
        default=None,
        metadata={"help": "Loss on imitated prefix tokens: trsft | nll | luffy | none. None = the method's."},
    )
    luffy_gamma: float = field(default=0.1, metadata={"help": "γ of the luffy loss -p/(p+γ)."})
    prefix_weight: str | None = field(
        default=None,
        metadata={
            "help": "Weight of the prefix loss: 'one' (TRAPO: plain imitation) or 'advantage' (LUFFY: times Â). "
            "None = the method's."
        },
    )
    pg_clip: float | None = field(
        default=None, metadata={"help": "PPO clip ε of the policy-gradient term; None = no clip (reference)."}
    )
    expert_column: str = field(default="expert", metadata={"help": "Dataset column: list of expert solutions."})
    answer_column: str | None = field(
        default="answer",
        metadata={"help": "Dataset column: ground-truth answer (a string). None if no reward function needs one."},
    )
    paragraph_boundary: str = field(
        default="\n\n", metadata={"help": "Prefixes end after a token ending with this text when one is near."}
    )
    prefix_lookahead: float = field(
        default=0.3, metadata={"help": "How far past ⌊ratio·len⌋ (as a share of the trace) to look for a boundary."}
    )
    rollout: str = field(
        default="staged",
        metadata={
            "help": "How the stages are generated. 'staged' (default): one generate call per stage, after the previous "
            "stage is scored. 'speculative': one generate call per step that draws, for every prompt, each later "
            "stage's unguided and guided candidates; the guidance decisions, taken stage by stage as before, then "
            "pick one and the other is discarded. Every candidate is an independent draw given its context, so the "
            "samples have the same distribution as 'staged', in one decode loop instead of up to four, at the cost "
            "of the discarded rows (11 rows per prompt instead of 8 with the paper's schedule). See "
            "docs/benchmarks.md for when it pays."
        },
    )
    max_prompt_length: int | None = field(
        default=None,
        metadata={
            "help": "Prompt budget in tokens: a training row whose prompt is longer is an error before training "
            "starts (the paper: 1024). None = no check."
        },
    )
    reward_timeout: float | None = field(
        default=120.0,
        metadata={
            "help": "Seconds one reward-function call (one stage's batch) may take. A call that times out or raises "
            "scores 0 for its batch and is counted (trapo/reward_failures); None or 0 = no limit."
        },
    )
    max_reward_failures: int = field(
        default=10,
        metadata={
            "help": "Consecutive failed reward calls (timeouts or exceptions) after which training stops with the "
            "last error: a few are survivable, a broken reward function is not."
        },
    )
    skip_nonfinite_steps: bool = field(
        default=True,
        metadata={
            "help": "Skip the optimizer step (weights and optimizer state unchanged) when a gradient is NaN/inf; "
            "counted in trapo/skipped_steps."
        },
    )
    second_trace_for_full: bool = field(
        default=True,
        metadata={"help": "The full-trace stage (ratio 1) uses the second expert trace when a row has one."},
    )
    # Changed defaults (DESIGN.md §3, §7).
    loss_type: str = field(default="dr_grpo", metadata={"help": "Only 'dr_grpo' is supported by TRAPOTrainer."})
    scale_rewards: str = field(default="none", metadata={"help": "'none': Â = r − mean; 'group': also ÷ std."})
    entropy_coef: float = field(default=0.001, metadata={"help": "Entropy bonus coefficient (reference: 0.001)."})
    remove_unused_columns: bool | None = field(
        default=False, metadata={"help": "Kept False: the trainer needs the expert and answer columns."}
    )

    def __post_init__(self):
        super().__post_init__()
        preset = rl_preset(self.method, self.num_generations)
        if self.schedule is None:
            self.schedule = preset["schedule"]
        if self.sft_loss is None:
            self.sft_loss = preset["sft_loss"]
        if self.prefix_weight is None:
            self.prefix_weight = preset.get("prefix_weight", "one")
        self.micro_groups = parse_schedule(self.schedule)
        if schedule_size(self.micro_groups) != self.num_generations:
            raise ValueError(
                f"num_generations ({self.num_generations}) must equal the schedule's total "
                f"({' + '.join(str(s.n) for s in self.micro_groups)} = {schedule_size(self.micro_groups)}); "
                "change one of them"
            )
        if self.sft_loss not in PREFIX_LOSS_KINDS:
            raise ValueError(f"sft_loss must be one of {PREFIX_LOSS_KINDS}, got {self.sft_loss!r}")
        if self.prefix_weight not in ("one", "advantage"):
            raise ValueError(f"prefix_weight must be 'one' or 'advantage', got {self.prefix_weight!r}")
        if not 0.0 < self.alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {self.alpha}")
        if self.luffy_gamma <= 0.0:
            raise ValueError(f"luffy_gamma must be > 0, got {self.luffy_gamma}")
        if self.loss_type != "dr_grpo":
            raise ValueError(
                f"TRAPOTrainer implements the Dr. GRPO normalisation only; got loss_type={self.loss_type!r}"
            )
        if self.rollout not in ("staged", "speculative"):
            raise ValueError(f"rollout must be 'staged' or 'speculative', got {self.rollout!r}")
        if self.max_reward_failures < 1:
            raise ValueError(f"max_reward_failures must be >= 1, got {self.max_reward_failures}")
        if self.scale_rewards not in ("none", "group"):
            raise ValueError(f"scale_rewards must be 'none' or 'group' (per prompt), got {self.scale_rewards!r}")
        if self.use_adaptive_entropy:
            raise ValueError("use_adaptive_entropy is not supported by TRAPOTrainer; set entropy_coef instead")
        local_batch = self.per_device_train_batch_size * self.steps_per_generation
        if local_batch % self.num_generations != 0:
            raise ValueError(
                f"per_device_train_batch_size × steps_per_generation ({local_batch}) must be a multiple of "
                f"num_generations ({self.num_generations}): each process must hold whole prompt groups, because "
                "the guidance decisions of a prompt need all its samples"
            )


def parse_schedule(schedule: list[dict] | tuple[MicroGroup, ...]) -> tuple[MicroGroup, ...]:
    """Turn the config's list of stage dicts (or MicroGroups) into validated `MicroGroup`s."""
    stages = []
    for i, stage in enumerate(schedule, start=1):
        if isinstance(stage, MicroGroup):
            stages.append(stage)
            continue
        if not isinstance(stage, dict) or "n" not in stage:
            raise ValueError(f"schedule stage {i} must be a mapping with at least 'n', got {stage!r}")
        unknown = set(stage) - {"n", "prefix_ratio", "threshold"}
        if unknown:
            raise ValueError(f"schedule stage {i} has unknown keys {sorted(unknown)}; use n, prefix_ratio, threshold")
        threshold = stage.get("threshold")
        stages.append(
            MicroGroup(
                n=stage["n"],
                prefix_ratio=float(stage.get("prefix_ratio", 0.0)),
                threshold=None if threshold is None else float(threshold),
            )
        )
    return validate_schedule(stages)


def _get(obj, key: str):
    return obj[key] if isinstance(obj, dict) else getattr(obj, key)


def _set(obj, key: str, value) -> None:
    if isinstance(obj, dict):
        obj[key] = value
    else:
        setattr(obj, key, value)


@dataclass
class _Sample:
    """One rollout sample of a prompt group: where it sits, what prefix it was shown, what it produced."""

    group: int
    stage: int
    prefix: list[int]
    continuation: list[int] = field(default_factory=list)
    logprobs: list[float] | None = None
    reward: float = 0.0
    rewards_per_func: list[float] | None = None


class TRAPOTrainer(CrashSafeCheckpoints, GRPOTrainer):
    """GRPO with adaptive expert guidance: staged micro-group rollouts and trust-region SFT on prefixes.

    Dataset rows need ``prompt`` (text or chat messages), the expert column (a list of ≥ 1 solution strings)
    and whatever the reward functions read (e.g. ``answer``). Reward functions follow TRL's signature.
    """

    _tag_names = ["trl", "trapo"]

    def __init__(self, model, reward_funcs, args: TRAPOConfig | None = None, train_dataset=None, **kwargs):
        if args is None:
            raise ValueError("TRAPOTrainer needs a TRAPOConfig (args=TRAPOConfig(output_dir=...))")
        if not isinstance(args, TRAPOConfig):
            raise TypeError(f"args must be a TRAPOConfig, got {type(args).__name__}")
        if kwargs.get("rollout_func") is not None:
            raise ValueError("TRAPOTrainer supplies its own rollout_func (the staged micro-group sampler)")
        validate_training_inputs(train_dataset, kwargs.get("processing_class"), args)
        kwargs["rollout_func"] = self._staged_rollout
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
        self._boundary_ids: frozenset[int] | None = None
        self._rollout_rows: list[dict] | None = None
        self._rollout_cache: dict[str, Any] | None = None
        self._trace_ids: dict[str, list[int]] = {}
        # Cumulative rollout counters (benchmarks and the demo read them); saved in checkpoints.
        self.rollout_stats: Counter = Counter()
        self._consecutive_reward_failures = 0

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
        self.rollout_stats = Counter(state.get("rollout_stats", {}))

    def _call_reward(self, j: int, count: int, **kwargs) -> list:
        """Reward function ``j`` on one batch, bounded by ``reward_timeout``; a failure scores 0 and is counted."""
        func, name = self.reward_funcs[j], self.reward_func_names[j]
        try:
            values = call_with_timeout(func, self.args.reward_timeout, **kwargs)
        except Exception as error:
            kind = "timeouts" if isinstance(error, RewardTimeout) else "errors"
            self.rollout_stats[f"reward_{kind}"] += 1
            self._consecutive_reward_failures += 1
            if self._consecutive_reward_failures >= self.args.max_reward_failures:
                raise RuntimeError(
                    f"reward function {name!r} failed {self._consecutive_reward_failures} calls in a row; last: "
                    f"{type(error).__name__}: {error}. Fix the function or raise max_reward_failures"
                ) from error
            logger.warning(
                "reward function %r failed (%s: %s); its %d completions score 0",
                name,
                type(error).__name__,
                error,
                count,
            )
            return [0.0] * count
        self._consecutive_reward_failures = 0
        if values is None or len(values) != count:
            raise ValueError(
                f"reward function {name!r} returned {0 if values is None else len(values)} rewards for {count} "
                "completions"
            )
        return values

    # ------------------------------------------------------------------ rollout

    def _generate_and_score_completions(self, inputs):
        self._rollout_rows = inputs
        try:
            output = super()._generate_and_score_completions(inputs)
        finally:
            self._rollout_rows = None
        cache, self._rollout_cache = self._rollout_cache, None
        width = output["completion_ids"].size(1)
        sft_mask = torch.zeros_like(output["completion_mask"])
        for i, n in enumerate(cache["sft_lengths"]):
            sft_mask[i, : min(n, width)] = 1
        output["sft_mask"] = sft_mask
        group_ids = [i // self.num_generations for i in range(len(cache["rewards"]))]
        rewards = torch.tensor(cache["rewards"], dtype=torch.float32)
        output["advantages"] = group_advantages(rewards, group_ids, scale=self.args.scale_rewards == "group").to(
            output["advantages"].device
        )
        return output

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        """Rewards were computed during the staged rollout; hand TRL the cache (gathered) instead of rescoring."""
        if self._rollout_cache is None:
            return super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        local = torch.tensor(
            self._rollout_cache["rewards_per_func"], dtype=torch.float32, device=self.accelerator.device
        )
        return self.accelerator.gather(local)

    def _staged_rollout(self, prompts: list, trainer: GRPOTrainer) -> dict[str, Any]:
        """Sample every prompt's group in stages; return TRL's rollout_func dict (prefix + continuation)."""
        rows = self._rollout_rows
        self._trace_ids = {}
        mode = "train" if self.model.training else "eval"
        num_generations = self.num_generations if mode == "train" else self.num_generations_eval
        prompt_ids_all, _, _ = self._tokenize_prompts(prompts)
        num_groups = len(prompts) // num_generations
        self._check_groups(prompts, num_generations)
        group_prompt_ids = [list(prompt_ids_all[g * num_generations]) for g in range(num_groups)]
        group_rows = [rows[g * num_generations] for g in range(num_groups)]
        stages = self.micro_groups if mode == "train" else (MicroGroup(num_generations),)

        speculative = self.args.rollout == "speculative" and len(stages) > 1
        candidates = self._speculate(stages, group_rows, group_prompt_ids) if speculative else None

        samples: list[list[_Sample]] = [[] for _ in range(num_groups)]
        deepest_guided = [0] * num_groups
        guided_per_stage = [0] * len(stages)
        for s, stage in enumerate(stages):
            requests = []
            for g in range(num_groups):
                guided = s > 0 and is_guided(stage, [x.reward for x in samples[g]])
                if guided:
                    deepest_guided[g] = s
                    guided_per_stage[s] += 1
                if candidates is not None:
                    requests.extend(candidates.pop((g, s, guided)))
                    continue
                prefix = self._expert_prefix(group_rows[g], stage.prefix_ratio) if guided else []
                requests.extend(_Sample(group=g, stage=s, prefix=prefix) for _ in range(stage.n))
            if candidates is None:
                self._generate_stage(requests, group_prompt_ids)
            self._score(requests, group_rows, prompts[0])
            for sample in requests:
                samples[sample.group].append(sample)
        if candidates:  # the variants the decisions did not pick
            discarded = [x for group in candidates.values() for x in group]
            self.rollout_stats["discarded_samples"] += len(discarded)
            self.rollout_stats["discarded_tokens"] += sum(len(x.continuation) for x in discarded)

        return self._rollout_output(samples, group_prompt_ids, deepest_guided, guided_per_stage, mode)

    def _speculate(self, stages, group_rows, group_prompt_ids) -> dict[tuple[int, int, bool], list[_Sample]]:
        """Every candidate a stage may need, generated in one call: ``(group, stage, guided) -> samples``.

        Stage 1 is never guided; a later stage gets an unguided candidate unless it is always guided (threshold
        ∞) and a guided one when it can guide. Decisions are taken afterwards, stage by stage, on rewards of the
        picked samples only: each candidate was drawn independently of the others given its own context, so the
        picked samples are distributed exactly as if each stage had been generated after its decision.
        """
        candidates: dict[tuple[int, int, bool], list[_Sample]] = {}
        for g, row in enumerate(group_rows):
            for s, stage in enumerate(stages):
                can_guide = s > 0 and stage.can_guide
                if not (can_guide and stage.threshold == math.inf):
                    candidates[(g, s, False)] = [_Sample(group=g, stage=s, prefix=[]) for _ in range(stage.n)]
                if can_guide:
                    prefix = self._expert_prefix(row, stage.prefix_ratio)
                    candidates[(g, s, True)] = [_Sample(group=g, stage=s, prefix=prefix) for _ in range(stage.n)]
        self._generate_stage([x for group in candidates.values() for x in group], group_prompt_ids)
        return candidates

    def _check_groups(self, prompts: list, num_generations: int) -> None:
        if len(prompts) % num_generations != 0:
            raise RuntimeError(f"local batch of {len(prompts)} samples is not whole groups of {num_generations}")
        for start in range(0, len(prompts), num_generations):
            if any(p != prompts[start] for p in prompts[start : start + num_generations]):
                raise RuntimeError(
                    "a prompt group is split across processes or shuffled: TRAPO needs each group's samples "
                    "consecutive on one process (per_device_train_batch_size × steps_per_generation must be a "
                    "multiple of num_generations)"
                )

    def _expert_prefix(self, row: dict, ratio: float) -> list[int]:
        """Token ids of the expert prefix at ``ratio`` (the whole trace + EOS at ratio 1), within the budget."""
        traces = row[self.args.expert_column]
        use_second = ratio >= 1.0 and self.args.second_trace_for_full and len(traces) > 1
        text = traces[1] if use_second else traces[0]
        ids = self._trace_ids.get(text)
        if ids is None:  # several stages (and candidates) cut the same trace: tokenize it once per rollout
            ids = self._trace_ids[text] = self._tokenizer(text, add_special_tokens=False)["input_ids"]
        budget = self.max_completion_length
        if ratio >= 1.0:
            return ids + [self.eos_token_ids[0]] if len(ids) < budget else ids[:budget]
        cut = cut_prefix(ids, ratio, self._paragraph_boundary_ids(), self.args.prefix_lookahead)
        return ids[: min(cut, budget - 1)]

    def _paragraph_boundary_ids(self) -> frozenset[int]:
        """Ids of every vocabulary token whose text ends with the paragraph boundary (computed once)."""
        if self._boundary_ids is None:
            boundary = self.args.paragraph_boundary
            vocab_size = len(self._tokenizer)
            texts = self._tokenizer.batch_decode([[i] for i in range(vocab_size)])
            self._boundary_ids = frozenset(i for i, t in enumerate(texts) if t.endswith(boundary))
        return self._boundary_ids

    def _generate_stage(self, requests: list[_Sample], group_prompt_ids: list[list[int]]) -> None:
        """One batched generation call for every request of a stage that has something left to write."""
        budget = self.max_completion_length
        todo = [r for r in requests if not (r.prefix and r.prefix[-1] in self.eos_token_ids) and len(r.prefix) < budget]
        local_count = len(todo)
        count = local_count
        # A prefix uses part of the budget: decode only what the least-prefixed request can keep.
        max_new = budget - min((len(r.prefix) for r in todo), default=0)
        if self.accelerator.num_processes > 1:
            # Collective generation (vLLM server, ZeRO-3 gathers) needs the same number of calls and requests, and
            # the same sampling parameters, on every process: pad with throw-away copies of the first prompt.
            gathered = self.accelerator.gather(torch.tensor([[local_count, max_new]], device=self.accelerator.device))
            count, max_new = (int(x) for x in gathered.max(dim=0).values)
        if count == 0:
            return
        batch = [group_prompt_ids[r.group] + r.prefix for r in todo]
        batch += [group_prompt_ids[0]] * (count - local_count)
        with self._max_new_tokens(max_new):
            completion_ids, logprobs = self._generate_single_turn(batch, None, {}, 1)
        self.rollout_stats["generation_calls"] += 1
        for i, request in enumerate(todo):
            keep = budget - len(request.prefix)
            request.continuation = list(completion_ids[i])[:keep]
            if logprobs is not None:
                request.logprobs = list(logprobs[i])[:keep]
            self.rollout_stats["generated_tokens"] += len(request.continuation)

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
        saved = [(obj, key, _get(obj, key)) for obj, key in targets]
        for obj, key, _ in saved:
            _set(obj, key, max_new)
        try:
            yield
        finally:
            for obj, key, value in saved:
                _set(obj, key, value)

    def _score(self, requests: list[_Sample], group_rows: list[dict], example_prompt) -> None:
        """Score each request's whole response (prefix + continuation) with the reward functions, locally."""
        if not requests:
            return
        rows = [group_rows[r.group] for r in requests]
        ids = [r.prefix + r.continuation for r in requests]
        texts = self.processing_class.batch_decode(ids, skip_special_tokens=True)
        prompts = [row["prompt"] for row in rows]
        if is_conversational({"prompt": example_prompt}):
            completions = [[{"role": "assistant", "content": t}] for t in texts]
        else:
            completions = texts
        columns = {k: [row[k] for row in rows] for k in rows[0] if k not in ("prompt", "completion", "completion_ids")}
        per_func = torch.zeros(len(requests), len(self.reward_funcs))
        for j in range(len(self.reward_funcs)):
            values = self._call_reward(
                j,
                len(requests),
                prompts=prompts,
                completions=completions,
                completion_ids=ids,
                trainer_state=self.state,
                **columns,
            )
            per_func[:, j] = torch.tensor([math.nan if v is None else float(v) for v in values])
        unscorable = per_func.isnan()
        if unscorable.any():
            self.rollout_stats["unscorable_rewards"] += int(unscorable.sum())
            per_func = per_func.nan_to_num(0.0)
        total = (per_func * self.reward_weights.cpu()).sum(dim=1)
        for request, reward, row in zip(requests, total.tolist(), per_func.tolist(), strict=True):
            request.reward, request.rewards_per_func = reward, row

    def _rollout_output(self, samples, group_prompt_ids, deepest_guided, guided_per_stage, mode) -> dict[str, Any]:
        """Flatten groups into TRL's rollout_func output, mark one SFT copy per distinct prefix, log the mix."""
        prompt_ids, completion_ids, env_mask, logprobs = [], [], [], []
        sft_lengths, rewards, rewards_per_func = [], [], []
        any_logprobs = any(x.logprobs is not None for group in samples for x in group)
        prefix_tokens = total_tokens = 0
        unguided_rewards = []
        for g, group in enumerate(samples):
            imitated: set[tuple[int, ...]] = set()
            for x in group:
                prompt_ids.append(group_prompt_ids[g])
                completion_ids.append(x.prefix + x.continuation)
                env_mask.append([0] * len(x.prefix) + [1] * len(x.continuation))
                if any_logprobs:
                    logprobs.append([None] * len(x.prefix) + (x.logprobs or [None] * len(x.continuation)))
                key = tuple(x.prefix)
                marked = bool(x.prefix) and key not in imitated
                imitated.add(key)
                sft_lengths.append(len(x.prefix) if marked else 0)
                rewards.append(x.reward)
                rewards_per_func.append(x.rewards_per_func)
                prefix_tokens += len(x.prefix)
                total_tokens += len(x.prefix) + len(x.continuation)
                if not x.prefix:
                    unguided_rewards.append(x.reward)
        self._rollout_cache = {"rewards": rewards, "rewards_per_func": rewards_per_func, "sft_lengths": sft_lengths}

        num_groups = len(samples)
        self.rollout_stats["samples"] += len(completion_ids)
        self.rollout_stats["guided_samples"] += sum(1 for group in samples for x in group if x.prefix)
        self.rollout_stats["prompts"] += num_groups
        metrics = {"trapo/prefix_token_frac": prefix_tokens / max(total_tokens, 1)}
        for s in range(1, len(guided_per_stage)):
            metrics[f"trapo/guided_frac/stage{s + 1}"] = guided_per_stage[s] / num_groups
        for level in range(len(guided_per_stage)):
            metrics[f"trapo/level_frac/{level}"] = sum(1 for d in deepest_guided if d == level) / num_groups
        metrics["trapo/reward_unguided"] = sum(unguided_rewards) / max(len(unguided_rewards), 1)
        # Cumulative failed reward calls (timeouts + exceptions) of this process, scored 0 (docs/errors.md).
        metrics["trapo/reward_failures"] = self.rollout_stats["reward_timeouts"] + self.rollout_stats["reward_errors"]
        for name, value in metrics.items():
            self._log_mean(mode, name, value)
        return {
            "prompt_ids": prompt_ids,
            "completion_ids": completion_ids,
            "logprobs": logprobs if any_logprobs else None,
            "env_mask": env_mask,
        }

    def _log_mean(self, mode: str, name: str, value: float) -> None:
        gathered = self.accelerator.gather(torch.tensor([value], dtype=torch.float32, device=self.accelerator.device))
        self._metrics[mode][name].append(gathered.mean().item())

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
            inputs["sft_mask"].bool() & prefix_mask,
            old_logps=inputs.get("old_per_token_logps"),
            sft_loss=self.args.sft_loss,
            alpha=self.args.alpha,
            gamma=self.args.luffy_gamma,
            prefix_weight=self.args.prefix_weight,
            clip_eps=self.args.pg_clip,
            max_completion_length=self.max_completion_length,
            entropies=entropies,
            entropy_coef=self.args.entropy_coef,
            pg_weights=pg_weights,
        )
        mode = "train" if self.model.training else "eval"
        if mode == "train":
            loss = loss / self.current_gradient_accumulation_steps
        for name, value in metrics.items():
            self._log_mean(mode, "entropy" if name == "entropy" else f"trapo/{name}", value)
        return loss
