"""Reward functions usable directly as TRL ``reward_funcs``."""

from trapo.rewards.math import MathReward, math_reward, math_think_reward, reward_stats

__all__ = ["MathReward", "math_reward", "math_think_reward", "reward_stats"]
