"""`TRAPOConfig`: `GRPOConfig` plus TRAPO's settings; every method of `TRAPOTrainer` is a preset of them
(`trapo.recipes`).

Split like TRL's ``grpo_config.py`` / ``grpo_trainer.py``: this module holds settings and their validation only, so
a config can be built, printed and checked (``trapo train --dry-run``) without touching a model. The rules the
settings select are in ``docs/method.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import GRPOConfig

from trapo.core import (
    ENTROPY_TOKENS,
    LOSS_NORMALIZATIONS,
    PREFIX_LOSS_KINDS,
    parse_schedule,
    schedule_size,
)
from trapo.core.schedule import schedule_as_data
from trapo.inherited_settings import FIXED_SETTINGS, keeps_fixed_value
from trapo.recipes import RL_METHODS, rl_preset
from trapo.rollout import ROLLOUT_CHOICES


@dataclass
class TRAPOConfig(GRPOConfig):
    """`GRPOConfig` plus TRAPO's settings. Defaults reproduce the paper (docs/method.md).

    RL defaults changed from TRL's: ``loss_type="dr_grpo"`` (token sum ÷ batch × max_completion_length, so
    prefix and RL tokens weigh 1:1), ``scale_rewards="none"`` (Â = r − group mean), ``entropy_coef=0.001``,
    ``beta=0`` (no KL), one update per rollout batch.
    """

    method: str = field(
        default="trapo",
        metadata={
            "help": f"Preset: {' | '.join(RL_METHODS)} (trapo.recipes.METHODS). Sets `schedule`, `prefix_loss`, "
            "`prefix_weight` and `second_trace_for_full` unless you set them yourself."
        },
    )
    schedule: list[dict] | None = field(
        default=None,
        metadata={
            "help": "Micro-group stages, each {n, prefix_ratio, threshold}: stage k shows prefix_ratio of the expert "
            "trace when the mean reward of all earlier samples of the prompt is < threshold. Sizes must sum to "
            "num_generations. A name is one of trapo.core.SCHEDULES ('paper': 4/2/1/1 with thresholds 0.5/0.7/0.9; "
            "'released': the released code's, 0.66 at stage 3). None = the method's schedule (trapo: 'paper')."
        },
    )
    alpha: float = field(default=0.1, metadata={"help": "TrSFT trust-region bound: gradient 1/max(p, alpha)."})
    prefix_loss: str | None = field(
        default=None,
        metadata={"help": "Loss on imitated expert-prefix tokens: trsft | nll | luffy | none. None = the method's."},
    )
    luffy_gamma: float = field(default=0.1, metadata={"help": "γ of the luffy loss -p/(p+γ)."})
    prefix_weight: str | None = field(
        default=None,
        metadata={
            "help": "Weight of the prefix loss: 'one' (TRAPO: plain imitation) or 'advantage' (LUFFY: times Â). "
            "None = the method's."
        },
    )
    pg_weight: float | None = field(
        default=None,
        metadata={
            "help": "Weight of the policy-gradient term. None = the method's: 1 (TRAPO), 0 for `imitation-only` (the "
            "control that trains on the imitated prefixes alone, asking how much of TRAPO is its prefix loss)."
        },
    )
    relift: bool | None = field(
        default=None,
        metadata={
            "help": "ReLIFT's interleaved fine-tuning (docs/method.md, ReLIFT): prompts whose every sample fails are "
            "buffered, and once relift_batch have gathered, one SFT step is taken on their expert traces. None = the "
            "method's (on for `relift` only)."
        },
    )
    relift_batch: int | None = field(
        default=None,
        metadata={
            "help": "Buffered prompts that trigger a ReLIFT SFT step, and that step's batch. None = the prompts of one "
            "rollout batch over every process (the released 128)."
        },
    )
    relift_learning_rate: float = field(
        default=1e-6, metadata={"help": "Learning rate of ReLIFT's own SFT optimizer (AdamW, constant; released 1e-6)."}
    )
    relift_entropy_coef: float = field(
        default=0.001, metadata={"help": "Entropy bonus of the ReLIFT SFT loss (released 0.001)."}
    )
    relift_max_grad_norm: float = field(
        default=1.0, metadata={"help": "Gradient-norm clip of the ReLIFT SFT step (released 1.0)."}
    )
    relift_micro_batch_size: int = field(
        default=4, metadata={"help": "Sequences per forward pass of the ReLIFT SFT step, per process (released 4)."}
    )
    epsilon: float | None = field(
        default=None,
        metadata={
            "help": "PPO clip of the policy-gradient ratio: ρ is clipped to [1 − epsilon, 1 + epsilon_high]. It acts "
            "only when a rollout batch trains several optimizer steps (num_iterations or steps_per_generation), where "
            "ρ ≠ 1. None (default) = no clip, as TRAPO's and LUFFY's released code (TRL's default is 0.2)."
        },
    )
    epsilon_high: float | None = field(
        default=None, metadata={"help": "Upper clip of the ratio (DAPO's clip-higher); None = epsilon."}
    )
    expert_column: str = field(default="expert", metadata={"help": "Dataset column: list of expert solutions."})
    answer_column: str | None = field(
        default="answer",
        metadata={"help": "Dataset column: ground-truth answer (a string). None if no reward function needs one."},
    )
    paragraph_boundary: str = field(
        default="\n\n", metadata={"help": "Prefixes end after a token containing this text when one is near."}
    )
    prefix_lookahead: float = field(
        default=0.3, metadata={"help": "How far past ⌊ratio·len⌋ (as a share of the trace) to look for a boundary."}
    )
    second_trace_for_full: bool | None = field(
        default=None,
        metadata={
            "help": "The full-trace stage (ratio 1) uses the second expert trace when a row has one (TRAPO's "
            "released code). None = the method's (luffy: False, it imitates its own first trace)."
        },
    )
    rollout: str = field(
        default="auto",
        metadata={
            "help": "How the stages are generated. 'staged': one generate call per stage, after the previous stage is "
            "scored. 'speculative': one generate call per step that draws, for every prompt, each later stage's "
            "unguided and guided candidates; the guidance decisions, taken stage by stage as before, then pick one "
            "and the other is discarded (the same samples in distribution, in one decode loop instead of up to "
            "four, at the cost of 11 rows per prompt instead of 8). 'pipelined': each prompt's next stage is "
            "submitted to an engine that serves requests independently (vLLM colocate, else transformers' "
            "continuous batching) as soon as its own previous stage is scored: the staged decisions, nothing "
            "discarded, no prompt waiting for the batch. 'auto' (default): the fastest measured, speculative on "
            "2 CPU cores and on an H200 (docs/benchmarks.md); the run folder's trapo_config.yaml records it."
        },
    )
    max_prompt_length: int | None = field(
        default=None,
        metadata={
            "help": "Prompt budget in tokens: a training row whose prompt is longer is an error before training "
            "starts (the paper: 1024). None = no check."
        },
    )
    overlong_traces: str = field(
        default="keep",
        metadata={
            "help": "Expert traces longer than max_completion_length (with their EOS), counted and reported before "
            "training: 'keep' (warn; they are cut at the budget and the full-trace sample loses its EOS), 'drop' "
            "(warn and drop those rows) or 'error'."
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
    max_unscorable_share: float = field(
        default=1.0,
        metadata={
            "help": "A step counts as unscorable when at least this share of its samples got None or NaN from every "
            "reward function (they score 0; trapo/unscorable_share)."
        },
    )
    max_unscorable_steps: int = field(
        default=3,
        metadata={"help": "Unscorable steps in a row after which training stops: the reward is broken."},
    )
    skip_nonfinite_steps: bool = field(
        default=True,
        metadata={
            "help": "Skip the optimizer step (weights and optimizer state unchanged) when a gradient is NaN/inf; "
            "counted in trapo/skipped_steps."
        },
    )
    # Changed defaults (docs/method.md, "The loss").
    loss_type: str = field(default="dr_grpo", metadata={"help": "Only 'dr_grpo' is supported by TRAPOTrainer."})
    scale_rewards: str = field(default="none", metadata={"help": "'none': Â = r − mean; 'group': also ÷ std."})
    entropy_coef: float = field(default=0.001, metadata={"help": "Entropy bonus coefficient (reference: 0.001)."})
    loss_normalization: str = field(
        default="batch_budget",
        metadata={
            "help": "What the token-summed loss is divided by. 'batch_budget': micro-batch size × "
            "max_completion_length, then ÷ gradient-accumulation steps (TRL's Dr. GRPO: a per-token-slot average). "
            "'sequence_budget': max_completion_length only, summed over micro-batches (the released code: the "
            "loss, and so what max_grad_norm clips, grows with the number of sequences per process)."
        },
    )
    entropy_tokens: str = field(
        default="loss",
        metadata={
            "help": "Tokens the entropy bonus averages over, per micro-batch: 'loss' (those that carry a loss) or "
            "'response' (every response token, expert prefixes included: the released code)."
        },
    )
    entropy_token_budget: int | None = field(
        default=None,
        metadata={
            "help": "Weight the entropy bonus as the released actor does (docs/method.md, The loss): it subtracts each "
            "packed micro-batch's mean entropy (up to this many tokens; released 32768) and sums over micro-batches, "
            "so the bonus grows with the tokens trained. None: one mean per micro-batch as it comes. Needs "
            "loss_normalization='sequence_budget' (the released sum over micro-batches)."
        },
    )
    vllm_importance_sampling_correction: bool = field(
        default=False,
        metadata={
            "help": "Correct for the vLLM sampler/trainer mismatch (TRL's option, on by default in TRL, off here: "
            "neither the paper nor its released code has it). When on, expert-prefix tokens, which vLLM never "
            "sampled, are left out of the ratio."
        },
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "A fresh run in an output_dir that holds checkpoints is refused (resume it, or choose another "
            "folder); True deletes those checkpoints and starts over."
        },
    )
    remove_unused_columns: bool | None = field(
        default=False, metadata={"help": "Kept False: the trainer needs the expert and answer columns."}
    )

    def __post_init__(self):
        # Before TRL's own checks, whose message speaks of generation_batch_size: each process needs whole groups.
        steps = self.steps_per_generation or self.gradient_accumulation_steps
        if self.generation_batch_size is None and (self.per_device_train_batch_size * steps) % self.num_generations:
            raise ValueError(
                f"per_device_train_batch_size × steps_per_generation ({self.per_device_train_batch_size} × {steps}) "
                f"must be a multiple of num_generations ({self.num_generations}): each process must hold whole "
                "prompt groups, because the guidance decisions of a prompt need all its samples"
            )
        super().__post_init__()
        preset = rl_preset(self.method, self.num_generations)
        for key, value in preset.items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        self.micro_groups = parse_schedule(self.schedule)
        self.schedule = schedule_as_data(self.micro_groups)  # a name becomes its stages: configs record what ran
        self._validate()

    @property
    def updates_per_rollout(self) -> int:
        """Optimizer steps trained on one rollout batch: TRL's steps_per_generation × num_iterations micro-batches, a
        step every gradient_accumulation_steps of them (LUFFY's and ReLIFT's released recipes take 2)."""
        return max(1, self.steps_per_generation * self.num_iterations // self.gradient_accumulation_steps)

    def _validate(self) -> None:
        for name, (value, reason) in FIXED_SETTINGS.items():
            if not keeps_fixed_value(getattr(self, name), value):
                raise ValueError(f"{name}={getattr(self, name)!r} is not supported by TRAPOTrainer: {reason}")
        self._validate_sampling()
        if schedule_size(self.micro_groups) != self.num_generations:
            raise ValueError(
                f"num_generations ({self.num_generations}) must equal the schedule's total "
                f"({' + '.join(str(s.n) for s in self.micro_groups)} = {schedule_size(self.micro_groups)}); "
                "change one of them"
            )
        if self.prefix_loss not in PREFIX_LOSS_KINDS:
            raise ValueError(f"prefix_loss must be one of {PREFIX_LOSS_KINDS}, got {self.prefix_loss!r}")
        if self.prefix_weight not in ("one", "advantage"):
            raise ValueError(f"prefix_weight must be 'one' or 'advantage', got {self.prefix_weight!r}")
        if not 0.0 < self.alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {self.alpha}")
        if self.luffy_gamma <= 0.0:
            raise ValueError(f"luffy_gamma must be > 0, got {self.luffy_gamma}")
        if self.rollout not in ROLLOUT_CHOICES:
            raise ValueError(f"rollout must be one of {ROLLOUT_CHOICES}, got {self.rollout!r}")
        if self.loss_normalization not in LOSS_NORMALIZATIONS:
            raise ValueError(
                f"loss_normalization must be one of {LOSS_NORMALIZATIONS}, got {self.loss_normalization!r}"
            )
        if self.entropy_token_budget is not None and (
            self.entropy_token_budget < 1 or self.loss_normalization != "sequence_budget"
        ):
            raise ValueError(
                f"entropy_token_budget ({self.entropy_token_budget}) must be >= 1 and needs "
                "loss_normalization='sequence_budget': the released bonus is summed over micro-batches"
            )
        if self.entropy_tokens not in ENTROPY_TOKENS:
            raise ValueError(f"entropy_tokens must be one of {ENTROPY_TOKENS}, got {self.entropy_tokens!r}")
        if not 0.0 < self.max_unscorable_share <= 1.0 or self.max_unscorable_steps < 1:
            raise ValueError(
                "max_unscorable_share must be in (0, 1] and max_unscorable_steps >= 1, got "
                f"{self.max_unscorable_share} and {self.max_unscorable_steps}"
            )
        if self.overlong_traces not in ("keep", "drop", "error"):
            raise ValueError(f"overlong_traces must be 'keep', 'drop' or 'error', got {self.overlong_traces!r}")
        if self.max_reward_failures < 1:
            raise ValueError(f"max_reward_failures must be >= 1, got {self.max_reward_failures}")
        if self.scale_rewards not in ("none", "group"):
            raise ValueError(f"scale_rewards must be 'none' or 'group' (per prompt), got {self.scale_rewards!r}")
        self._validate_engines()
        if self.epsilon is None and self.epsilon_high is not None:
            raise ValueError("epsilon_high needs epsilon (the lower clip); set both, or neither for no clip")
        if self.relift_batch is not None and self.relift_batch < 1:
            raise ValueError(f"relift_batch must be >= 1 or None, got {self.relift_batch}")
        if not (self.relift_learning_rate > 0 and self.relift_max_grad_norm > 0 and self.relift_micro_batch_size >= 1):
            raise ValueError(
                "relift_learning_rate and relift_max_grad_norm must be > 0 and relift_micro_batch_size >= 1, got "
                f"{self.relift_learning_rate}, {self.relift_max_grad_norm}, {self.relift_micro_batch_size}"
            )
        if not self.pg_weight >= 0.0:
            raise ValueError(f"pg_weight must be >= 0, got {self.pg_weight}")
        if self.epsilon is not None and not 0.0 < self.epsilon < 1.0:
            raise ValueError(f"epsilon must be in (0, 1), got {self.epsilon}")
        if self.epsilon_high is not None and self.epsilon_high <= 0.0:
            raise ValueError(f"epsilon_high must be > 0, got {self.epsilon_high}")
        local_batch = self.per_device_train_batch_size * self.steps_per_generation
        if local_batch % self.num_generations != 0:
            raise ValueError(
                f"per_device_train_batch_size × steps_per_generation ({local_batch}) must be a multiple of "
                f"num_generations ({self.num_generations}): each process must hold whole prompt groups, because "
                "the guidance decisions of a prompt need all its samples"
            )

    def _validate_sampling(self) -> None:
        """Sampling and length settings that would otherwise fail only at the first generation, inside a library."""
        checks = [
            ("temperature", self.temperature > 0, "> 0 (TRAPO samples; for near-greedy use a small value)"),
            ("top_p", 0.0 < self.top_p <= 1.0, "in (0, 1]"),
            ("top_k", self.top_k is None or self.top_k >= 0, ">= 0 (0 = no top-k)"),
            ("min_p", self.min_p is None or 0.0 <= self.min_p <= 1.0, "in [0, 1]"),
            ("repetition_penalty", self.repetition_penalty > 0, "> 0 (1 = none)"),
            ("max_completion_length", self.max_completion_length >= 1, ">= 1"),
            ("max_prompt_length", self.max_prompt_length is None or self.max_prompt_length >= 1, ">= 1 or None"),
            ("num_generations_eval", self.num_generations_eval is None or self.num_generations_eval >= 1, ">= 1"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise ValueError(f"{name} must be {expected}, got {getattr(self, name)!r}")
        if self.generation_kwargs is not None and not isinstance(self.generation_kwargs, dict):
            raise ValueError(f"generation_kwargs must be a mapping, got {type(self.generation_kwargs).__name__}")

    def _validate_engines(self) -> None:
        """Generation setups that cannot work, refused now rather than at the first weight sync or generation."""
        if self.rollout == "pipelined" and self.use_vllm and self.vllm_mode == "server":
            raise ValueError(
                "rollout='pipelined' submits requests one by one to a colocated engine; vLLM's server mode takes "
                "whole batches over HTTP: use vllm_mode='colocate', or rollout='speculative' with the server"
            )
        if self.use_vllm and self.vllm_mode == "server" and self.use_cpu:
            raise ValueError(
                "vllm_mode='server' syncs weights to the server over NCCL, which needs CUDA GPUs on the trainer side; "
                "on a CPU use vllm_mode='colocate' (docs/scale.md)"
            )
        if self.rollout == "pipelined" and self.use_vllm and self.vllm_tensor_parallel_size > 1:
            raise ValueError(
                "rollout='pipelined' drives each process's vLLM engine on its own; tensor parallelism needs every "
                "rank of the group to step together: use vllm_tensor_parallel_size=1 or rollout='speculative'"
            )
