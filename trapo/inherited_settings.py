"""The inherited `GRPOConfig` fields that TRAPO's rollout, advantage and loss do not read, each with the value it must
keep and what to use instead. `TRAPOConfig` refuses any other value when it is built, so a setting is never accepted
and silently ignored (docs/method.md, "Settings")."""

from __future__ import annotations

import math

_KL_ONLY = "only the KL term reads it, and TRAPO has none (beta=0)"
_ADAPTIVE_ONLY = "only use_adaptive_entropy reads it, which TRAPO does not support"
# Inherited `GRPOConfig` fields that TRAPO's rollout, advantage and loss do not read: each must keep the value given
# here, and any other is refused when the config is built, with what to do instead (docs/method.md, "Settings").
# tests/test_trl_contract.py pins every GRPOConfig field as honoured or listed here, so a TRL upgrade that adds one
# fails loudly.
FIXED_SETTINGS: dict[str, tuple[object, str]] = {
    "loss_type": ("dr_grpo", "TRAPO's loss is its own (mixed_loss), normalised as Dr. GRPO; see loss_normalization"),
    "beta": (0.0, "TRAPO has no KL term (neither the paper nor its released code has one)"),
    "use_bias_correction_kl": (True, _KL_ONLY),
    "sync_ref_model": (False, _KL_ONLY),
    "ref_model_mixup_alpha": (0.6, _KL_ONLY),
    "ref_model_sync_steps": (512, _KL_ONLY),
    "delta": (None, "two-sided ratio clipping is not in TRAPO's loss; epsilon / epsilon_high clip the ratio"),
    "importance_sampling_level": ("token", "TRAPO's ratio is per token (a sequence ratio would mix in prefixes)"),
    "off_policy_mask_threshold": (None, "off-policy sequence masking is not in TRAPO's loss"),
    "top_entropy_quantile": (1.0, "TRAPO trains on every generated token"),
    "multi_objective_aggregation": (
        "sum_then_normalize",
        "rewards are summed with reward_weights, then centred per prompt group (scale_rewards)",
    ),
    "use_adaptive_entropy": (False, "set a fixed entropy_coef (the paper: 0.001)"),
    "entropy_coef_min": (0.0, _ADAPTIVE_ONLY),
    "entropy_coef_max": (1.0, _ADAPTIVE_ONLY),
    "entropy_coef_delta": (0.005, _ADAPTIVE_ONLY),
    "entropy_target": (0.2, _ADAPTIVE_ONLY),
    "sapo_temperature_neg": (1.05, "only loss_type='sapo' reads it"),
    "sapo_temperature_pos": (1.0, "only loss_type='sapo' reads it"),
    "vespo_k_pos": (2.0, "only loss_type='vespo' reads it"),
    "vespo_lambda_pos": (3.0, "only loss_type='vespo' reads it"),
    "vespo_k_neg": (3.0, "only loss_type='vespo' reads it"),
    "vespo_lambda_neg": (2.0, "only loss_type='vespo' reads it"),
    "max_tool_calling_iterations": (None, "TRAPOTrainer does not support tool calling"),
    "remove_unused_columns": (False, "the trainer reads the expert and answer columns, which the model does not take"),
}


def keeps_fixed_value(a, b) -> bool:
    """``a`` is the fixed value ``b`` (floats within rounding: YAML and the CLI may spell them differently)."""
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isclose(a, b))
