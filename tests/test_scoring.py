"""Scoring during the rollout (trapo.scoring, trapo.guards.reward_value): reward functions are called as TRL calls
them, their values checked, async ones awaited, and what they log reaches the logs in the step's sample order."""

from __future__ import annotations

import math

import pytest
import torch

from trapo.guards import reward_value
from trapo.preflight import RewardError


@pytest.mark.parametrize(("value", "expected"), [(1, 1.0), (0.5, 0.5), (True, 1.0), (torch.tensor(0.25), 0.25)])
def test_numbers_of_any_numeric_type_are_rewards(value, expected):
    assert reward_value(value, "f", 0) == expected


def test_none_and_nan_mark_an_unscorable_completion():
    assert math.isnan(reward_value(None, "f", 0)) and math.isnan(reward_value(float("nan"), "f", 0))


@pytest.mark.parametrize("value", ["1.0", [1.0], {"score": 1}, float("inf"), torch.ones(2)])
def test_anything_else_is_an_error_naming_the_function_and_the_value(value):
    with pytest.raises(RewardError, match=r"reward function 'judge' returned .* for completion 3: a reward must be"):
        reward_value(value, "judge", 3)


def test_a_reward_returning_strings_stops_training_naming_it(make_trainer):
    def stringly(completions, **kwargs):
        return ["1"] * len(completions)

    with pytest.raises(RewardError, match=r"'stringly' returned '1' \(str\) for completion 0"):
        make_trainer(reward=stringly, max_steps=1).train()


def test_async_rewards_are_awaited(make_trainer):
    import asyncio

    async def slow_parity(completions, **kwargs):
        await asyncio.sleep(0)
        return [float(len(c) % 2) for c in completions]

    trainer = make_trainer(reward=slow_parity, max_steps=1, per_device_train_batch_size=8)
    trainer.train()
    (log,) = [h for h in trainer.state.log_history if "trapo/reward_with_guidance" in h]
    assert 0.0 < log["trapo/reward_with_guidance"] < 1.0  # real parity values, not a coroutine scored 0


def test_what_rewards_log_reaches_the_logs_in_the_steps_sample_order(make_trainer, addition_dataset):
    def logging_reward(completions, log_metric, log_extra, **kwargs):
        log_metric("custom/calls", 1.0)
        log_extra("chars", [len(c) for c in completions])
        return [0.0] * len(completions)

    trainer = make_trainer(reward=logging_reward, max_completion_length=24)
    rows = [addition_dataset[i] for i in range(2) for _ in range(8)]
    trainer.model.train()
    trainer._generate_and_score_completions(rows)
    # Scored stage by stage (4 calls: stages 1-4), each with a subset of samples, out of the step's order; the column
    # comes back aligned with the completions table.
    completions = list(trainer._logs["completion"])[-16:]
    assert list(trainer._logs["extra"]["chars"])[-16:] == [len(c) for c in completions]
    assert trainer._metrics["train"]["custom/calls"] == [1.0]


def test_math_rewards_own_counters_reach_the_logs(make_trainer):
    from trapo.rewards import MathReward

    reward = MathReward(num_workers=0)
    trainer = make_trainer(reward=reward, max_steps=1, per_device_train_batch_size=8)
    trainer.train()
    assert any("rewards/math_parse_failures" in h for h in trainer.state.log_history)
