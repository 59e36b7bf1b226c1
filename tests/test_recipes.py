"""Methods by name (trapo.recipes): the table, presets and train_method running each phase."""

from __future__ import annotations

import pytest
import torch
from conftest import sft_config, tiny_config

from trapo import recipes


def test_sft_then_grpo_trains_in_both_phases(tmp_path, tiny_model, tokenizer, addition_dataset):
    snapshots = {"init": [p.detach().clone() for p in tiny_model.parameters()]}

    def after_phase(phase, trainer):
        snapshots[phase] = [p.detach().clone() for p in trainer.model.parameters()]

    def parity_reward(completions, **kwargs):  # varies across samples, so GRPO's advantages are not all zero
        return [float(len(c) % 2) for c in completions]

    grpo_args = tiny_config(tmp_path, method="grpo", num_generations=4, per_device_train_batch_size=8)

    def run(sft_args, rl_args, **kwargs):
        return recipes.train_method(
            "sft-then-grpo", tiny_model, tokenizer, addition_dataset, [parity_reward], sft_args=sft_args,
            rl_args=rl_args, **kwargs
        )  # fmt: skip

    with pytest.raises(ValueError, match=r"agree on \['bf16'\]"):
        run(sft_config(tmp_path, bf16=False), grpo_args)
    with pytest.raises(ValueError, match="rl_args.method is 'trapo'"):
        run(sft_config(tmp_path), tiny_config(tmp_path))
    with pytest.raises(ValueError, match="sft_loss='nll'"):
        run(sft_config(tmp_path, sft_loss="trsft"), grpo_args)
    model = run(sft_config(tmp_path), grpo_args, on_phase_end=after_phase)

    def changed(a, b):
        return any(not torch.equal(x, y) for x, y in zip(a, b, strict=True))

    assert changed(snapshots["init"], snapshots["sft"])
    assert changed(snapshots["sft"], [p.detach() for p in model.parameters()])
    assert not changed(snapshots["rl"], [p.detach() for p in model.parameters()])


def test_train_method_checks_its_arguments(tiny_model, tokenizer, addition_dataset):
    with pytest.raises(ValueError, match="unknown method"):
        recipes.train_method("dpo", tiny_model, tokenizer, addition_dataset)
    with pytest.raises(ValueError, match="needs sft_args"):
        recipes.train_method("sft-then-grpo", tiny_model, tokenizer, addition_dataset)
    with pytest.raises(ValueError, match="needs rl_args"):
        recipes.train_method("trapo", tiny_model, tokenizer, addition_dataset)
