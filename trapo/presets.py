"""Deprecated: the RL presets live in `trapo.config`, the method names in `trapo.recipes`."""

from trapo._deprecated import reexport

globals().update(
    reexport(
        __name__,
        {"RL_PRESETS": "trapo.config", "rl_preset": "trapo.config", "METHODS": "trapo.recipes"},
    )
)
ALL_METHODS = METHODS  # noqa: F821 (re-exported above)
SFT_PRESETS = ("sft", "sft-then-grpo")
