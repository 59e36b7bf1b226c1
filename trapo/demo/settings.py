"""What defines a `trapo demo` run: methods, budget, learning rate, the base model, where results go."""

from __future__ import annotations

from dataclasses import dataclass, field

from trapo.tasks.base import BaseSpec, default_cache_dir

DEMO_METHODS = ("trapo", "grpo", "sft", "sft-then-grpo", "luffy", "fixed-prefix", "naive-sft")


@dataclass
class DemoSettings:
    """Everything that defines a demo run; the base-model part keys the on-disk cache."""

    methods: tuple[str, ...] = DEMO_METHODS
    seeds: int = 1
    steps: int = 40
    prompts_per_step: int = 8
    num_generations: int = 8
    learning_rate: float = 3e-4  # 1e-3 collapsed GRPO within 20 steps here (docs/demo.md)
    # No entropy bonus: most groups here have zero advantage (all right or all wrong), and Adam scales the tiny
    # entropy gradient of such a batch up to a full learning-rate step, which alone collapsed GRPO (docs/demo.md).
    entropy_coef: float = 0.0
    alpha: float = 0.1  # TrSFT's trust-region bound (the paper's); trapo and fixed-prefix use it
    max_completion_length: int = 64
    train_problems: int = 600
    eval_per_tier: int = 60
    eval_every: int = 10
    base: BaseSpec = field(default_factory=BaseSpec)  # the tiny model and its warm start
    output_dir: str = "trapo-demo"
    cache_dir: str = field(default_factory=default_cache_dir)

    @classmethod
    def quick(cls, **overrides) -> DemoSettings:
        """A smoke run (about 2 minutes): few steps, a short warm start, a small eval."""
        values = dict(steps=4, prompts_per_step=4, eval_per_tier=12, eval_every=2, train_problems=64)
        values["base"] = BaseSpec(warm_steps=200)
        values.update(overrides)
        return cls(**values)
