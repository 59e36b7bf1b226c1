"""Baselines and ablations as presets of one trainer (DESIGN.md §5).

A preset is a small dict of `TRAPOConfig` values. RL presets run on `TRAPOTrainer`; ``sft`` and
``sft-then-grpo`` compose TRL's `SFTTrainer` with it (see `trapo.methods`).
"""

from __future__ import annotations

import math

PAPER_STAGES = [
    {"n": 4, "prefix_ratio": 0.0},
    {"n": 2, "prefix_ratio": 0.25, "threshold": 0.5},
    {"n": 1, "prefix_ratio": 0.5, "threshold": 0.7},
    {"n": 1, "prefix_ratio": 1.0, "threshold": 0.9},
]

RL_PRESETS: dict[str, dict] = {
    # The method: adaptive micro-groups + trust-region SFT on each distinct prefix.
    "trapo": {"schedule": PAPER_STAGES, "sft_loss": "trsft"},
    # Plain GRPO (Dr. GRPO loss): one stage of num_generations unguided samples.
    "grpo": {"schedule": None, "sft_loss": "none"},
    # Ablation "no adaptivity": the same stages, every guided stage fires whatever the rewards.
    "fixed-prefix": {
        "schedule": [{**s, "threshold": math.inf} if s["prefix_ratio"] > 0 else s for s in PAPER_STAGES],
        "sft_loss": "trsft",
    },
    # Ablation "micro-groups only": prefixes are context, their tokens get no loss.
    "context-only": {"schedule": PAPER_STAGES, "sft_loss": "none"},
    # Ablation "standard SFT on prefixes": NLL instead of TrSFT (collapses in the paper: 32.3).
    "naive-sft": {"schedule": PAPER_STAGES, "sft_loss": "nll"},
    # LUFFY: 7 on-policy samples + 1 off-policy expert trace, advantage-weighted p/(p+γ) shaping.
    "luffy": {
        "schedule": [{"n": 7, "prefix_ratio": 0.0}, {"n": 1, "prefix_ratio": 1.0, "threshold": math.inf}],
        "sft_loss": "luffy",
        "prefix_weight": "advantage",
    },
}

SFT_PRESETS = ("sft", "sft-then-grpo")
ALL_METHODS = (*RL_PRESETS, *SFT_PRESETS)


def rl_preset(method: str, num_generations: int) -> dict:
    """The config values of an RL preset; ``grpo`` sizes its single stage to ``num_generations``."""
    if method in SFT_PRESETS:
        raise ValueError(
            f"method {method!r} is not an RL preset of TRAPOTrainer: run it with trapo.methods.train_method "
            f"or `trapo train --config configs/{method}.yaml`"
        )
    if method not in RL_PRESETS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(ALL_METHODS)}")
    values = dict(RL_PRESETS[method])
    if values["schedule"] is None:
        values["schedule"] = [{"n": num_generations, "prefix_ratio": 0.0}]
    return values
