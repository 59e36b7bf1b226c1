"""What defines a `trapo demo` run: methods, budget, learning rate, the base model, where results go."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

from trapo.recipes import METHODS
from trapo.tasks.base import BaseSpec, default_cache_dir
from trapo.tasks.chains import ORDERS, Expert

DEMO_METHODS = tuple(METHODS)  # every method (trapo.recipes), in the table's order
# What `--sweep` can vary: a TRAPO setting (only TRAPO is trained at each value) or a setting of the task (every
# selected method is, since it changes what all of them learn from).
TRAPO_SWEEPABLE = ("alpha",)
TASK_SWEEPABLE = ("expert_deviation",)
SWEEPABLE = TRAPO_SWEEPABLE + TASK_SWEEPABLE


@dataclass
class DemoSettings:
    """Everything that defines a demo run (docs/demo.md); ``base`` keys the on-disk cache of the base model."""

    methods: tuple[str, ...] = DEMO_METHODS
    seeds: int = 1
    first_seed: int = 0  # the seeds are first_seed, first_seed + 1, …: more seeds can be added to a run later
    steps: int = 40
    prompts_per_step: int = 8
    num_generations: int = 8
    learning_rate: float = 3e-4  # one learning rate for every method (docs/demo.md: the grid it was chosen from)
    # Linear warm-up of the learning rate at the start of each training phase (0: constant from the first step).
    warmup_steps: int = 0
    # No entropy bonus: most groups here have zero advantage (all right or all wrong), and Adam scales the tiny
    # entropy gradient of such a batch up to a full learning-rate step, which alone collapsed GRPO (docs/demo.md).
    entropy_coef: float = 0.0
    alpha: float = 0.1  # TrSFT's trust-region bound (the paper's); trapo and fixed-prefix use it
    # How the expert writes its derivations (`trapo.tasks.chains.Expert`, docs/demo.md "The expert"): the
    # convention it follows ("left", the base model's own; "right", the other end) and the probability that a step
    # reduces another pair instead. At 0.1 most of its tokens are the policy's own and some are unlikely under it,
    # as a stronger model's traces are for a smaller one: the case TrSFT is for. Every derivation it writes is
    # correct. (0: the expert writes exactly what the base was trained on; research record, items 13-15.)
    expert_order: str = "left"
    expert_deviation: float = 0.1
    max_completion_length: int = 64  # the longest derivation (7 digits) is 57 tokens with its EOS
    train_problems: int = 2000
    eval_per_tier: int = 40
    eval_every: int = 5
    # Besides greedy accuracy (the curves), the final model is scored under the paper's protocol: avg@k, k answers
    # per problem sampled at temperature 0.6 (0: skip).
    sampled_eval_k: int = 8
    sampled_eval_temperature: float = 0.6
    regime_problems: int = 16  # held-out problems per tier for the base's pass@8 alone / with a prefix
    workers: int = field(default_factory=lambda: min(2, os.cpu_count() or 1))  # methods trained side by side
    device: str = "cpu"
    # e.g. {"alpha": (0.01, 0.1, 0.3)}: TRAPO at each value; {"expert_deviation": (0.0, 0.2)}: every method at each
    sweep: dict[str, tuple[float, ...]] | None = None
    base: BaseSpec = field(default_factory=BaseSpec)  # the tiny model and its warm start
    output_dir: str = "trapo-demo"
    cache_dir: str = field(default_factory=default_cache_dir)

    def __post_init__(self):
        unknown = [m for m in self.methods if m not in DEMO_METHODS]
        if unknown:
            raise ValueError(f"unknown demo method(s) {unknown}; choose from {', '.join(DEMO_METHODS)}")
        if not self.methods:
            raise ValueError("give at least one method")
        if self.seeds < 1 or self.steps < 1 or self.workers < 1:
            raise ValueError("seeds, steps and workers must be >= 1")
        if self.first_seed < 0:
            raise ValueError(f"first_seed must be >= 0, got {self.first_seed}")
        if self.expert_order not in ORDERS:
            raise ValueError(f"expert_order must be one of {ORDERS}, got {self.expert_order!r}")
        if not 0.0 <= self.expert_deviation <= 1.0:
            raise ValueError(f"expert_deviation must be a probability in [0, 1], got {self.expert_deviation!r}")
        if self.sampled_eval_k < 0 or not self.sampled_eval_temperature > 0:
            raise ValueError("sampled_eval_k must be >= 0 (0: skip) and sampled_eval_temperature > 0")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {self.device!r}")
        for key, values in (self.sweep or {}).items():
            if key not in SWEEPABLE:
                raise ValueError(f"cannot sweep {key!r}; sweepable: {', '.join(SWEEPABLE)}")
            if key in TASK_SWEEPABLE:
                for value in values:
                    replace(self, sweep=None, **{key: value})  # each value checked as a setting of its own

    @property
    def expert(self) -> Expert:
        return Expert(self.expert_order, self.expert_deviation)

    def with_overrides(self, overrides: dict) -> DemoSettings:
        """These settings with a run's task-level sweep values applied (TRAPO-level ones go to its config)."""
        task = {k: v for k, v in overrides.items() if k in TASK_SWEEPABLE}
        return replace(self, **task) if task else self

    @classmethod
    def quick(cls, **overrides) -> DemoSettings:
        """A smoke run (under 2 minutes once the base is cached): few steps, a small eval."""
        values = dict(steps=4, prompts_per_step=4, eval_per_tier=8, eval_every=2, regime_problems=4, train_problems=64)
        values["base"] = BaseSpec.smoke()
        values.update(overrides)
        return cls(**values)

    def runs(self) -> list[tuple[str, int, dict]]:
        """Every (method, seed, overrides) the demo trains: each method per seed, then each sweep value per seed (for
        TRAPO, or for every method when the swept setting is the task's)."""
        seeds = range(self.first_seed, self.first_seed + self.seeds)
        runs = [(m, seed, {}) for seed in seeds for m in self.methods]
        for key, values in (self.sweep or {}).items():
            methods = self.methods if key in TASK_SWEEPABLE else ("trapo",)
            for method in methods:
                # The value the plain runs already use is not trained twice: they are that point of the sweep.
                todo = [v for v in values if not (method in self.methods and v == getattr(self, key))]
                runs += [(method, seed, {key: v}) for seed in seeds for v in todo]
        return runs
