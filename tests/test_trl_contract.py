"""Pins the TRL 1.16 internals that `TRAPOTrainer` relies on (docs/method.md, "Where TRAPO meets TRL"), so an upgrade
fails here, loudly.

If one of these tests fails after a TRL upgrade, re-read TRL's ``grpo_trainer.py`` and adapt ``trapo/trainer.py``
before changing the expectation.
"""

from __future__ import annotations

import dataclasses
import inspect
import warnings

import pytest
import torch
import trl
from conftest import constant_reward
from trl import GRPOConfig, GRPOTrainer


def test_trl_version_is_pinned():
    assert trl.__version__ == "1.16.0", (
        f"TRAPOTrainer was written against TRL 1.16.0, found {trl.__version__}: re-check tests/test_trl_contract.py "
        "and the private methods it pins"
    )


def _params(func) -> list[str]:
    return list(inspect.signature(func).parameters)


@pytest.mark.parametrize(
    ("method", "leading"),
    [
        ("_generate_and_score_completions", ["self", "inputs"]),
        ("_generate", ["self", "prompts"]),
        ("_generate_single_turn", ["self", "prompt_ids", "images", "multimodal_fields", "num_generations"]),
        ("_tokenize_prompts", ["self", "prompts"]),
        ("_calculate_rewards", ["self", "inputs", "prompts", "completions", "completion_ids_list"]),
        (
            "_get_per_token_logps_and_entropies",
            ["self", "model", "input_ids", "attention_mask", "logits_to_keep"],
        ),
        ("_compute_loss", ["self", "model", "inputs"]),
        ("_prepare_inputs", ["self", "generation_batch"]),
    ],
)
def test_grpo_private_method_signatures(method, leading):
    func = getattr(GRPOTrainer, method, None)
    assert func is not None, f"GRPOTrainer.{method} is gone"
    params = _params(func)
    assert params[: len(leading)] == leading, f"GRPOTrainer.{method}{inspect.signature(func)} changed"
    # Any further parameters must be optional: TRAPOTrainer calls these with exactly the leading ones.
    extra = list(inspect.signature(func).parameters.values())[len(leading) :]
    assert all(p.default is not inspect.Parameter.empty for p in extra), f"GRPOTrainer.{method} gained a required arg"


def test_get_per_token_logps_and_entropies_accepts_compute_entropy():
    assert "compute_entropy" in _params(GRPOTrainer._get_per_token_logps_and_entropies)


def test_init_accepts_rollout_func_and_peft_config():
    params = inspect.signature(GRPOTrainer.__init__).parameters
    for name in ("model", "reward_funcs", "args", "train_dataset", "processing_class", "peft_config", "rollout_func"):
        assert name in params, f"GRPOTrainer.__init__ lost {name!r}"


def test_grpo_loss_is_already_scaled_for_gradient_accumulation():
    # TRAPOTrainer._compute_loss divides by current_gradient_accumulation_steps itself, like TRL's _compute_loss;
    # transformers must therefore not divide a second time.
    assert GRPOTrainer.loss_is_scaled_for_ga is True


# Every GRPOConfig field TRAPO honours, and where (the others are in trapo.config.FIXED_SETTINGS, refused unless they
# keep TRAPO's value). A TRL upgrade that adds a field fails test_every_grpo_config_field_is_honoured_or_fixed: decide
# which list it belongs to, and implement or refuse it.
HONOURED = {
    # generation: TRL's own _generate_single_turn, which TRAPO's rollout calls
    **dict.fromkeys(
        (
            "temperature",
            "top_p",
            "top_k",
            "min_p",
            "repetition_penalty",
            "generation_kwargs",
            "cache_implementation",
            "max_completion_length",
            "chat_template_kwargs",
            "pad_to_multiple_of",
            "ds3_gather_for_generation",
            "use_transformers_continuous_batching",
            "transformers_continuous_batching_config",
            "use_transformers_paged",
        ),
        "generation",
    ),  # fmt: skip
    **dict.fromkeys(
        (
            "use_vllm",
            "vllm_mode",
            "vllm_model_impl",
            "vllm_enable_sleep_mode",
            "vllm_structured_outputs_regex",
            "vllm_server_base_url",
            "vllm_server_host",
            "vllm_server_port",
            "vllm_server_timeout",
            "vllm_group_port",
            "vllm_gpu_memory_utilization",
            "vllm_max_model_length",
            "vllm_tensor_parallel_size",
        ),
        "vLLM generation",
    ),  # fmt: skip
    **dict.fromkeys(
        (
            "vllm_importance_sampling_correction",
            "vllm_importance_sampling_mode",
            "vllm_importance_sampling_clip_max",
            "vllm_importance_sampling_clip_min",
            "vllm_importance_sampling_cap",
        ),
        "TRL's ratio, passed to mixed_loss as pg_weights (prefixes left out)",
    ),  # fmt: skip
    **dict.fromkeys(
        ("num_generations", "num_generations_eval", "generation_batch_size", "steps_per_generation", "shuffle_dataset"),
        "TRL's sampler and batching; the rollout checks whole groups",
    ),
    "num_iterations": "old log-probs from TRL, the ratio in mixed_loss (clipped by epsilon / epsilon_high)",
    "epsilon": "TRAPOConfig's own: the ratio clip (None by default)",
    "epsilon_high": "TRAPOConfig's own: the upper ratio clip",
    "scale_rewards": "group_advantages(scale=...) ('none' or 'group'; 'batch' refused)",
    "reward_weights": "RolloutScorer weights the per-function rewards",
    "mask_truncated_completions": "TRL zeroes completion_mask; _trapo_step_output keeps the prefix masks inside it",
    "entropy_coef": "mixed_loss's entropy bonus",
    "router_aux_loss_coef": "_compute_loss adds the MoE aux loss as TRL does",
    **dict.fromkeys(
        ("model_init_kwargs", "trust_remote_code", "disable_dropout", "cast_lm_head_to_fp32"), "model loading (TRL)"
    ),
    **dict.fromkeys(
        (
            "log_completions",
            "log_multimodal",
            "num_completions_to_print",
            "log_unique_prompts",
            "log_completions_hub_repo",
        ),
        "TRL's logging (with TRAPO's advantages and prefix marks)",
    ),  # fmt: skip
}


def test_every_grpo_config_field_is_honoured_or_fixed():
    from transformers import TrainingArguments

    from trapo.config import FIXED_SETTINGS

    own = {f.name for f in dataclasses.fields(GRPOConfig)} - {f.name for f in dataclasses.fields(TrainingArguments)}
    classified = set(HONOURED) | set(FIXED_SETTINGS)
    assert own - classified == set(), f"GRPOConfig fields TRAPO neither honours nor refuses: {sorted(own - classified)}"
    assert set(HONOURED) & set(FIXED_SETTINGS) == set()
    stale = classified - own - {"remove_unused_columns"}  # a TrainingArguments field TRAPO must keep False
    assert stale == set(), f"listed but gone from GRPOConfig: {sorted(stale)}"


@pytest.fixture
def plain_grpo(tmp_path, tiny_model, tokenizer, addition_dataset):
    """A GRPOTrainer whose rollout_func returns a fixed completion with the first two tokens marked external."""
    calls = []

    def rollout_func(prompts, trainer):
        calls.append(len(prompts))
        prompt_ids = trainer._tokenize_prompts(prompts)[0]
        completion_ids = [[10, 11, 12, 13, 14, tokenizer.eos_token_id][: 3 + i % 4] for i in range(len(prompts))]
        env_mask = [[0, 0] + [1] * (len(c) - 2) for c in completion_ids]
        return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": None, "env_mask": env_mask}

    args = GRPOConfig(
        output_dir=str(tmp_path / "grpo"),
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=8,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        remove_unused_columns=False,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*'rollout_func'.*experimental")
        trainer = GRPOTrainer(
            model=tiny_model,
            reward_funcs=constant_reward(0.0),
            args=args,
            train_dataset=addition_dataset,
            processing_class=tokenizer,
            rollout_func=rollout_func,
        )
    trainer.rollout_calls = calls
    return trainer


def test_rollout_func_env_mask_becomes_tool_mask(plain_grpo, addition_dataset):
    rows = [addition_dataset[i] for i in range(2) for _ in range(4)]
    plain_grpo.model.train()
    out = plain_grpo._generate_and_score_completions(rows)
    assert plain_grpo.rollout_calls == [8]
    for key in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "advantages", "tool_mask"):
        assert key in out, f"_generate_and_score_completions no longer returns {key!r}"
    lengths = out["completion_mask"].sum(dim=1).tolist()
    assert lengths == [3 + i % 4 for i in range(8)]
    # env_mask is right-padded with 1 into tool_mask; the two "external" tokens stay 0.
    expected = torch.ones_like(out["tool_mask"])
    expected[:, :2] = 0
    assert torch.equal(out["tool_mask"].cpu(), expected.cpu())
    assert out["advantages"].shape == (8,)


def test_trapo_rollout_goes_through_rollout_func_and_reward_cache(make_trainer, tiny_model, addition_dataset):
    # TRAPO scores in its staged rollout (one call per stage); TRL must then call the _calculate_rewards override,
    # which hands back the cache: a fifth call would mean TRL scores by another path.
    calls = []

    def counting_reward(completions, **kwargs):
        calls.append(len(completions))
        return [0.0] * len(completions)

    trainer = make_trainer(model=tiny_model, reward=counting_reward)
    assert trainer.rollout_func == trainer._rollout
    rows = [addition_dataset[i] for i in range(2) for _ in range(8)]
    trainer.model.train()
    out = trainer._generate_and_score_completions(rows)
    assert calls == [8, 4, 2, 2]  # the 4/2/1/1 schedule over 2 prompts, all guided stages firing at reward 0
    # TRL's tool_mask (from env_mask) is replaced by prefix_mask, the one encoding of the prefix the loss reads.
    assert "tool_mask" not in out and out["prefix_mask"].shape == out["completion_mask"].shape
    # Guided samples carry external (prefix) tokens, unguided ones none.
    external = out["prefix_mask"].any(dim=1).view(2, 8)
    assert external.tolist() == [[False] * 4 + [True] * 4] * 2
    for name in ("eos_token_ids", "num_generations", "num_generations_eval", "max_completion_length", "_tokenizer"):
        assert hasattr(trainer, name), f"GRPOTrainer no longer sets self.{name}"
    for name in ("reward_funcs", "reward_func_names", "reward_weights", "_metrics", "use_vllm", "tools"):
        assert hasattr(trainer, name), f"GRPOTrainer no longer sets self.{name}"
    assert hasattr(trainer, "vllm_importance_sampling_correction")


def test_generation_budget_knobs_exist(make_trainer, tiny_model):
    """`TRAPOTrainer._max_new_tokens` caps a stage's decoding through these TRL attributes."""
    trainer = make_trainer(model=tiny_model)
    assert trainer.generation_config.max_new_tokens == trainer.max_completion_length
    assert trainer.generation_kwargs["max_new_tokens"] == trainer.max_completion_length
    from trapo.engines import max_new_tokens

    with max_new_tokens(trainer, 5):
        assert trainer.generation_config.max_new_tokens == 5 and trainer.generation_kwargs["max_new_tokens"] == 5
    assert trainer.generation_config.max_new_tokens == trainer.max_completion_length
    from trl.generation.vllm_generation import VLLMGeneration

    assert "max_completion_length" in inspect.signature(VLLMGeneration.__init__).parameters


def test_public_api_imports_from_the_package_root():
    from trapo import TRAPOConfig, TRAPOTrainer
    from trapo.config import TRAPOConfig as config_class
    from trapo.trainer import TRAPOTrainer as trainer_class

    assert TRAPOConfig is config_class and TRAPOTrainer is trainer_class
