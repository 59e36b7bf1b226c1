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
        ({"entropy_token_budget": 32768}, "needs loss_normalization='sequence_budget'"),
        ({"entropy_token_budget": 0, "loss_normalization": "sequence_budget"}, "must be >= 1"),
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


# A value other than the one TRAPO needs, for every inherited setting it does not read (trapo.config.FIXED_SETTINGS).
OTHER_VALUES = {
    "loss_type": "grpo",
    "beta": 0.04,
    "use_bias_correction_kl": False,
    "sync_ref_model": True,
    "ref_model_mixup_alpha": 0.9,
    "ref_model_sync_steps": 64,
    "delta": 2.0,
    "importance_sampling_level": "sequence",
    "off_policy_mask_threshold": 0.5,
    "top_entropy_quantile": 0.2,
    "multi_objective_aggregation": "normalize_then_sum",
    "use_adaptive_entropy": True,
    "entropy_coef_min": 0.01,
    "entropy_coef_max": 0.5,
    "entropy_coef_delta": 0.01,
    "entropy_target": 0.5,
    "sapo_temperature_neg": 2.0,
    "sapo_temperature_pos": 2.0,
    "vespo_k_pos": 1.0,
    "vespo_lambda_pos": 1.0,
    "vespo_k_neg": 1.0,
    "vespo_lambda_neg": 1.0,
    "max_tool_calling_iterations": 3,
    "remove_unused_columns": True,
}


def test_every_fixed_setting_has_a_test_value():
    from trapo.config import FIXED_SETTINGS

    assert set(OTHER_VALUES) == set(FIXED_SETTINGS)


@pytest.mark.parametrize("name", sorted(OTHER_VALUES))
def test_an_inherited_setting_trapo_does_not_read_is_refused_naming_what_to_do(tmp_path, name):
    from trapo.config import FIXED_SETTINGS

    tiny_config(tmp_path, **{name: FIXED_SETTINGS[name][0]})  # the value TRAPO needs is accepted
    with pytest.raises(ValueError, match=rf"^{name}=.* is not supported by TRAPOTrainer: "):
        tiny_config(tmp_path, **{name: OTHER_VALUES[name]})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"temperature": 0.0}, r"temperature must be > 0"),
        ({"top_p": 0.0}, r"top_p must be in \(0, 1\]"),
        ({"top_p": 1.5}, r"top_p must be in \(0, 1\]"),
        ({"top_k": -1}, "top_k must be >= 0"),
        ({"min_p": 1.5}, r"min_p must be in \[0, 1\]"),
        ({"repetition_penalty": 0.0}, "repetition_penalty must be > 0"),
        ({"max_completion_length": 0}, "max_completion_length must be >= 1"),
        ({"max_prompt_length": 0}, "max_prompt_length must be >= 1"),
        ({"epsilon": 1.5}, r"epsilon must be in \(0, 1\)"),
        ({"epsilon_high": 0.3}, "epsilon_high needs epsilon"),
        ({"schedule": "papr"}, "schedule 'papr' is not a known schedule"),
    ],
)
def test_sampling_length_and_clip_settings_that_would_fail_later_are_refused_now(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(tmp_path, **overrides)


def test_a_schedule_can_be_named_and_the_config_records_its_stages(tmp_path):
    from trapo.core import REFERENCE_CODE_SCHEDULE
    from trapo.core.schedule import schedule_as_data

    args = tiny_config(tmp_path, schedule="released")
    assert args.micro_groups == REFERENCE_CODE_SCHEDULE
    assert args.schedule == schedule_as_data(REFERENCE_CODE_SCHEDULE)


def test_epsilon_is_the_ratio_clip_and_off_by_default(make_trainer):
    assert make_trainer()._clip_range() is None
    assert make_trainer(out="sym", epsilon=0.2)._clip_range() == (0.2, 0.2)
    assert make_trainer(out="dapo", epsilon=0.2, epsilon_high=0.28)._clip_range() == (0.2, 0.28)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"use_vllm": True, "vllm_mode": "server"}, "vllm_mode='server' syncs weights to the server over NCCL"),
        (
            {"use_vllm": True, "vllm_mode": "server", "rollout": "pipelined"},
            "rollout='pipelined' submits requests one by one to a colocated engine",
        ),
        (
            {"use_vllm": True, "vllm_tensor_parallel_size": 2, "rollout": "pipelined"},
            "tensor parallelism needs every rank of the group to step together",
        ),
    ],
)
def test_generation_setups_that_cannot_work_are_refused(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(tmp_path, **overrides)
