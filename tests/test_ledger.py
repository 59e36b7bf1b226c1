"""The budget ledger (trapo.ledger): what TRAPOTrainer and the SFT trainer spend, logged with every step."""

from __future__ import annotations

import pytest
from conftest import addition_rows, sft_config
from datasets import Dataset

from trapo.ledger import LEDGER_KEYS, estimated_flops


def test_flops_are_2n_per_generated_and_6n_per_trained_token():
    assert estimated_flops(1000, generated_tokens=10, trained_tokens=3) == 2 * 1000 * 10 + 6 * 1000 * 3


def test_trapos_ledger_counts_what_its_steps_spent(make_trainer, monkeypatch):
    import trapo.trainer as module

    seen = {"trained": 0, "imitated": 0}
    inner = module.mixed_loss

    def counting(logps, advantages, completion_mask, prefix_mask, imitated_mask, **kwargs):
        seen["imitated"] += int(imitated_mask.sum())
        return inner(logps, advantages, completion_mask, prefix_mask, imitated_mask, **kwargs)

    monkeypatch.setattr(module, "mixed_loss", counting)
    trainer = make_trainer(reward=0.0, max_steps=2)
    trainer.train()
    (last,) = [h for h in trainer.state.log_history if "train_runtime" in h]
    assert {f"budget/{k}" for k in LEDGER_KEYS} <= set(last)
    assert last["budget/optimizer_steps"] == 2
    assert last["budget/generated_tokens"] == trainer.rollout_stats["generated_tokens"] > 0
    assert last["budget/expert_tokens"] == seen["imitated"] > 0  # reward 0: every guided stage fires
    parameters = sum(p.numel() for p in trainer.model.parameters())
    expected = estimated_flops(parameters, last["budget/generated_tokens"], last["budget/trained_tokens"])
    assert last["budget/flops"] == pytest.approx(expected)
    assert last["budget/trained_tokens"] > last["budget/expert_tokens"]  # prompts and continuations too


def test_grpo_spends_no_expert_tokens_and_sft_generates_none(make_trainer, tmp_path, tiny_model, tokenizer):
    grpo = make_trainer(method="grpo", max_steps=1)
    grpo.train()
    assert grpo.state.log_history[-1]["budget/expert_tokens"] == 0
    from trapo.sft import sft_trainer

    sft = sft_trainer(tiny_model, tokenizer, Dataset.from_list(addition_rows()), sft_config(tmp_path))
    sft.train()
    last = sft.state.log_history[-1]
    assert last["budget/generated_tokens"] == 0 and last["budget/optimizer_steps"] == 2
    assert 0 < last["budget/expert_tokens"] < last["budget/trained_tokens"]  # completions, not prompts
