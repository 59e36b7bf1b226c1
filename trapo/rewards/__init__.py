"""Reward functions usable directly as TRL ``reward_funcs``, and the names configs call them by (`REWARDS`)."""

from trapo.rewards.math import MathReward, math_reward, math_think_reward, reward_stats

# Built-in rewards by name (`trapo train`'s ``reward:``, `trapo eval --reward`): ``module:function`` paths, imported
# when used so naming one costs nothing.
REWARDS = {
    "math": "trapo.rewards.math:math_reward",
    "math_think": "trapo.rewards.math:math_think_reward",  # LUFFY's: "</think>" required, the answer after it
    # As released: Math-Verify's extraction on the whole text, several boxes included (TRAPO's v4, LUFFY's v3)
    "math_released": "trapo.rewards.math:math_released_reward",
    "math_think_released": "trapo.rewards.math:math_think_released_reward",
    "chains": "trapo.tasks.chains:chain_reward",
}

__all__ = ["REWARDS", "MathReward", "math_reward", "math_think_reward", "reward_stats"]
