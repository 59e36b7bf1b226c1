"""TRAPOConfig (trapo.config): presets, schedules, and every setting honoured or refused at construction."""

from __future__ import annotations

import pytest
from conftest import tiny_config

from trapo.config import TRAPOConfig


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"schedule": [{"n": 4}, {"n": 2, "prefix_ratio": 0.5, "threshold": 1}]}, "must equal the schedule's total"),
        (
            {"schedule": [{"n": 4}, {"n": 2, "prefix_ratio": 0.5, "threshold": 1}, {"n": 2, "prefix_ratio": 0.25}]},
            "ascending",
        ),
        ({"alpha": 1.5}, r"alpha must be in \(0, 1\]"),
        ({"alpha": -0.1}, r"alpha must be in \(0, 1\]"),
        ({"method": "trapo-v2"}, "unknown method 'trapo-v2'"),
        ({"max_reward_failures": 0}, "max_reward_failures must be >= 1"),
    ],
)
def test_bad_method_settings_fail_at_config_time(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(tmp_path, **overrides)


def test_schedule_size_must_match_num_generations(tmp_path):
    with pytest.raises(
        ValueError, match=r"num_generations \(6\) must equal the schedule's total \(4 \+ 2 \+ 1 \+ 1 = 8\)"
    ):
        tiny_config(tmp_path, num_generations=6, per_device_train_batch_size=12)


def test_custom_schedule_from_config_and_grpo_sized_by_num_generations(tmp_path):
    args = tiny_config(
        tmp_path, num_generations=4, schedule=[{"n": 3}, {"n": 1, "prefix_ratio": 0.5, "threshold": 0.5}]
    )
    assert [(s.n, s.prefix_ratio, s.threshold) for s in args.micro_groups] == [(3, 0.0, None), (1, 0.5, 0.5)]
    grpo = tiny_config(tmp_path, method="grpo", num_generations=4)
    assert [s.n for s in grpo.micro_groups] == [4] and grpo.prefix_loss == "none"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"method": "ppo"}, "unknown method 'ppo'"),
        ({"method": "sft"}, "has an SFT phase"),
        ({"prefix_loss": "kl"}, "prefix_loss must be one of"),
        ({"alpha": 0.0}, r"alpha must be in \(0, 1\]"),
        ({"schedule": [{"n": 4}, {"n": 4, "prefix_ratio": 0.5}]}, "needs a threshold"),
        ({"schedule": [{"n": 8, "ratio": 0.5}]}, "unknown keys"),
        ({"loss_type": "grpo"}, "Dr. GRPO"),
        ({"per_device_train_batch_size": 4}, r"\(4 × 1\) must be a multiple of num_generations \(8\): each process"),
    ],
)
def test_config_rejects_bad_settings(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(tmp_path, **overrides)


def test_default_config_is_the_paper_recipe(tmp_path):
    args = TRAPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    assert [(s.n, s.prefix_ratio, s.threshold) for s in args.micro_groups] == [
        (4, 0.0, None),
        (2, 0.25, 0.5),
        (1, 0.5, 0.7),
        (1, 1.0, 0.9),
    ]
    assert (args.alpha, args.prefix_loss, args.loss_type, args.scale_rewards, args.beta) == (
        0.1,
        "trsft",
        "dr_grpo",
        "none",
        0.0,
    )
    assert args.entropy_coef == 0.001 and args.num_iterations == 1 and args.epsilon is None
