"""What defines a `trapo demo` run: methods, budget, learning rate, the base model, where results go."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

from trapo.recipes import METHODS
from trapo.tasks.base import BaseSpec, default_cache_dir
from trapo.tasks.chains import ORDERS, Expert

DEMO_METHODS = tuple(METHODS)  # every method (trapo.recipes), in the table's order
# What `make demo` trains by default: the rows of the paper's table that run here, and fixed-prefix (the control for
# adaptivity, in every headline). The other controls (context-only, naive-sft, imitation-only, sft-trsft) train with
# `--methods all`, as the published run does; the tuning always covers every method.
HEADLINE_METHODS = tuple(m for m in DEMO_METHODS if m in ("trapo", "grpo", "fixed-prefix", "luffy", "relift", "sft",
                                                          "sft-then-grpo"))  # fmt: skip
# What `--sweep` can vary: a TRAPO setting (only TRAPO is trained at each value), a setting of the task (every
# selected method is, since it changes what all of them learn from), or of the run's optimisation and budget (every
# selected method too: the tuning grid, the budget-matched SFT runs).
TRAPO_SWEEPABLE = ("alpha",)
TASK_SWEEPABLE = ("expert_deviation", "expert_mixture")
RUN_SWEEPABLE = ("learning_rate", "rl_learning_rate", "rl_warmup_steps", "steps", "prompts_per_step", "temperature")
SWEEPABLE = TRAPO_SWEEPABLE + TASK_SWEEPABLE + RUN_SWEEPABLE
INTEGER_SETTINGS = ("rl_warmup_steps", "steps", "prompts_per_step")
EVAL_SPLITS = ("valid", "test")
# Each method's learning rate (and sft-then-grpo's RL phase's), chosen on the validation split by the tuning run:
# `trapo demo --tune` wrote docs/demo/tuning.json, and tests/test_demo_doc.py checks these are its choices.
TUNED: dict[str, dict] = {
    "trapo": {"learning_rate": 1e-4},
    "grpo": {"learning_rate": 1e-4},
    "fixed-prefix": {"learning_rate": 1e-4},
    "context-only": {"learning_rate": 3e-5},
    "naive-sft": {"learning_rate": 3e-4},
    "luffy": {"learning_rate": 1e-4},
    "imitation-only": {"learning_rate": 1e-4},
    "relift": {"learning_rate": 1e-4},
    "sft": {"learning_rate": 1e-4},
    "sft-trsft": {"learning_rate": 1e-4},
    "sft-then-grpo": {"learning_rate": 1e-4, "rl_learning_rate": 3e-5, "rl_warmup_steps": 0},
}


@dataclass
class DemoSettings:
    """Everything that defines a demo run (docs/demo.md); ``base`` keys the on-disk cache of the base model."""

    methods: tuple[str, ...] = HEADLINE_METHODS
    seeds: int = 1
    first_seed: int = 0  # the seeds are first_seed, first_seed + 1, …: more seeds can be added to a run later
    steps: int = 40
    prompts_per_step: int = 8
    num_generations: int = 8
    # None: each method's own, tuned on the validation split (TUNED, from docs/demo/tuning.json); a number: that one
    # learning rate for every method.
    learning_rate: float | None = None
    # Linear warm-up of the learning rate at the start of each training phase (0: constant from the first step).
    warmup_steps: int = 0
    # sft-then-grpo's RL phase restarts Adam: its own learning rate and warm-up (None: the method's tuned ones).
    rl_learning_rate: float | None = None
    rl_warmup_steps: int | None = None
    # No entropy bonus: most groups here have zero advantage (all right or all wrong), and Adam scales the tiny
    # entropy gradient of such a batch up to a full learning-rate step, which alone collapsed GRPO (docs/demo.md).
    entropy_coef: float = 0.0
    # The RL methods' rollout temperature. Lower, the policy solves more easy prompts alone and TRAPO's later stages
    # fire less often: the setting where its adaptivity (guiding only what fails) is exercised.
    temperature: float = 1.0
    alpha: float = 0.1  # TrSFT's trust-region bound (the paper's); trapo and fixed-prefix use it
    # How the expert writes its derivations (`trapo.tasks.chains.Expert`, docs/demo.md "The expert"): the
    # convention it follows ("left", the base model's own; "right", the other end) and the probability that a step
    # reduces another pair instead. At 0.1 most of its tokens are the policy's own and some are unlikely under it,
    # as a stronger model's traces are for a smaller one: the case TrSFT is for. Every derivation it writes is
    # correct. (0: the expert writes exactly what the base was trained on; research record, items 13-15.)
    expert_order: str = "left"
    expert_deviation: float = 0.1
    # A structured difference instead: the share of derivations written wholly in the other convention.
    expert_mixture: float = 0.0
    max_completion_length: int = 64  # the longest derivation (7 digits) is 57 tokens with its EOS
    train_problems: int = 2000
    # Held-out problems: "valid" for every choice (the tuning, the settings), "test" read once, for the published run.
    eval_split: str = "valid"
    eval_per_tier: int = 40
    eval_hard: int = 200  # problems of each hard tier (one problem is 0.005 of its accuracy, not 0.025)
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
        if self.eval_split not in EVAL_SPLITS:
            raise ValueError(f"eval_split must be one of {EVAL_SPLITS}, got {self.eval_split!r}")
        if not 0.0 <= self.expert_mixture <= 1.0:
            raise ValueError(f"expert_mixture must be a probability in [0, 1], got {self.expert_mixture!r}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature!r}")
        if self.sampled_eval_k < 0 or not self.sampled_eval_temperature > 0:
            raise ValueError("sampled_eval_k must be >= 0 (0: skip) and sampled_eval_temperature > 0")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {self.device!r}")
        for key, values in (self.sweep or {}).items():
            methods, key = sweep_target(key)
            if key not in SWEEPABLE:
                raise ValueError(f"cannot sweep {key!r}; sweepable: {', '.join(SWEEPABLE)}")
            unknown = [m for m in methods or () if m not in DEMO_METHODS]
            if unknown:
                raise ValueError(f"--sweep names unknown method(s) {unknown}; choose from {', '.join(DEMO_METHODS)}")
            if key in TASK_SWEEPABLE:
                for value in values:
                    replace(self, sweep=None, **{key: value})  # each value checked as a setting of its own

    @property
    def expert(self) -> Expert:
        return Expert(self.expert_order, self.expert_deviation, self.expert_mixture)

    def with_overrides(self, overrides: dict) -> DemoSettings:
        """These settings with a run's task- and run-level sweep values applied (TRAPO-level ones go to its
        config)."""
        values = {k: (int(v) if k in INTEGER_SETTINGS else v) for k, v in overrides.items() if k not in TRAPO_SWEEPABLE}
        if "steps" in values:  # as many evaluations over a longer (or shorter) run
            values["eval_every"] = max(1, round(self.eval_every * values["steps"] / self.steps))
        return replace(self, **values) if values else self

    def learning_rate_for(self, method: str) -> float:
        """``learning_rate`` when set, else the method's tuned one (`TUNED`)."""
        return self.learning_rate if self.learning_rate is not None else TUNED[method]["learning_rate"]

    def rl_phase(self, method: str) -> tuple[float, int]:
        """Learning rate and warm-up of an RL phase that follows an SFT phase (sft-then-grpo): ``rl_learning_rate``
        and ``rl_warmup_steps`` when set. Otherwise the rate: with one ``learning_rate`` for every method, that one,
        else the method's tuned one; the warm-up: a ``warmup_steps`` asked for (> 0: every phase warms up), else the
        tuned one."""
        tuned = TUNED.get(method, {})
        lr = self.rl_learning_rate or (None if self.learning_rate is not None else tuned.get("rl_learning_rate"))
        warmup = self.rl_warmup_steps
        if warmup is None:
            warmup = self.warmup_steps or tuned.get("rl_warmup_steps", 0)
        return lr or self.learning_rate_for(method), int(warmup)

    @classmethod
    def quick(cls, **overrides) -> DemoSettings:
        """A smoke run (under 2 minutes once the base is cached): few steps, a small eval."""
        values = dict(steps=4, prompts_per_step=4, eval_per_tier=8, eval_hard=8, eval_every=2, regime_problems=4,
                      train_problems=64)  # fmt: skip
        values["base"] = BaseSpec.smoke()
        values.update(overrides)
        return cls(**values)

    def runs(self) -> list[tuple[str, int, dict]]:
        """Every (method, seed, overrides) the demo trains: each method per seed, then each sweep value per seed (for
        TRAPO, or for every method when the swept setting is the task's)."""
        seeds = range(self.first_seed, self.first_seed + self.seeds)
        runs = [(m, seed, {}) for seed in seeds for m in self.methods]
        for target, values in (self.sweep or {}).items():
            methods, key = sweep_target(target)
            methods = methods or (("trapo",) if key in TRAPO_SWEEPABLE else self.methods)
            for method in methods:
                # The value the plain runs already use is not trained twice: they are that point of the sweep.
                todo = [v for v in values if not (method in self.methods and v == getattr(self, key))]
                runs += [(method, seed, {key: v}) for seed in seeds for v in todo]
        return runs


def sweep_target(key: str) -> tuple[tuple[str, ...] | None, str]:
    """A sweep's key → (the methods it is for, the setting): ``"alpha"`` → (None, "alpha"), the default methods;
    ``"sft+sft-trsft:steps"`` → (("sft", "sft-trsft"), "steps"), only those (a control such as SFT at matched
    compute)."""
    methods, sep, setting = key.rpartition(":")
    return (tuple(m.strip() for m in methods.split("+")) if sep else None), setting.strip()
