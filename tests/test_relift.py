"""ReLIFT: its rules (`trapo.core.relift`) on hand-built cases, and its interleaving in `TRAPOTrainer` on the tiny
model (which prompts are buffered, when an SFT step fires, what it trains on, what it spends and saves)."""

from __future__ import annotations

import math

import pytest
import torch

from trapo.core.relift import fine_tuning_loss, push_newest_first, take_fine_tuning_batch, unsolved_groups


def test_a_prompt_is_buffered_only_when_every_sample_failed():
    rewards = [[0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [], [0.5, 0.0, 0.0]]
    # group 2: a format penalty is a failure too; group 3 tried nothing; group 4 had partial credit
    assert unsolved_groups(rewards) == [0, 2]
    assert unsolved_groups(rewards, fail_value=0.5) == [0, 2, 4]


def test_the_buffer_is_newest_first_and_a_batch_takes_the_newest():
    buffer = push_newest_first([], ["a1", "a2"])
    buffer = push_newest_first(buffer, ["b1"])
    assert buffer == ["b1", "a1", "a2"]
    assert take_fine_tuning_batch(buffer, 4) == (None, ["b1", "a1", "a2"])  # not enough yet: nothing taken
    batch, rest = take_fine_tuning_batch(push_newest_first(buffer, ["c1"]), 3)
    assert (batch, rest) == (["c1", "b1", "a1"], ["a2"])  # the oldest waits for the next batch
    with pytest.raises(ValueError, match="must be >= 1"):
        take_fine_tuning_batch(buffer, 0)


def test_the_fine_tuning_loss_is_a_token_mean_nll_minus_a_token_mean_entropy():
    logps = torch.log(torch.tensor([[0.5, 0.25, 0.9], [0.125, 0.9, 0.9]])).requires_grad_()
    entropies = torch.tensor([[1.0, 2.0, 9.0], [3.0, 9.0, 9.0]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    loss = fine_tuning_loss(logps, entropies, mask, entropy_coef=0.1)
    # three tokens: NLL (ln 2 + ln 4 + ln 8) / 3 = 2 ln 2; entropy (1 + 2 + 3) / 3 = 2
    assert loss.item() == pytest.approx(2 * math.log(2) - 0.1 * 2.0)
    loss.backward()
    expected = torch.tensor([[-1 / 3, -1 / 3, 0.0], [-1 / 3, 0.0, 0.0]])
    assert torch.allclose(logps.grad, expected)  # each expert token pulled up equally; padding untouched
    assert fine_tuning_loss(logps, None, mask, entropy_coef=0.1).item() == pytest.approx(2 * math.log(2))
    assert fine_tuning_loss(logps, entropies, torch.zeros_like(mask)).item() == 0.0


def test_the_relift_preset_turns_the_buffer_on_and_only_there(tmp_path):
    from tests.conftest import tiny_config

    relift = tiny_config(tmp_path, method="relift")
    assert relift.relift is True and relift.prefix_loss == "none" and len(relift.micro_groups) == 1
    assert tiny_config(tmp_path, method="grpo").relift is False
    with pytest.raises(ValueError, match="relift_batch must be >= 1"):
        tiny_config(tmp_path, method="relift", relift_batch=0)
    with pytest.raises(ValueError, match="relift_learning_rate"):
        tiny_config(tmp_path, method="relift", relift_learning_rate=0.0)


def _record_sft_steps(trainer):
    """Wrap the SFT step: per call, the global step and the decoded prompts of its batch."""
    calls = []
    step = trainer._relift_sft_step

    def recorded(items):
        calls.append((trainer.state.global_step, [trainer._tokenizer.decode(p) for p, _ in items]))
        return step(items)

    trainer._relift_sft_step = recorded
    return calls


def test_an_sft_step_fires_once_the_buffer_holds_a_batch_and_trains_on_the_newest(make_trainer):
    # Reward 0 everywhere: every prompt is unsolved. Two prompts per step, a batch of three.
    trainer = make_trainer(reward=0.0, method="relift", relift_batch=3, max_steps=3, entropy_coef=0.0, seed=0)
    calls = _record_sft_steps(trainer)
    seen: list[list[str]] = []
    collect = trainer._relift_collect

    def spy(batch, rows, prompt_ids):
        seen.append([r["prompt"] for r in rows])
        return collect(batch, rows, prompt_ids)

    trainer._relift_collect = spy
    trainer.train()
    assert [step for step, _ in calls] == [2, 3]  # step 1: 2 buffered < 3; step 2: 4, three taken; step 3: 1 + 2
    assert calls[0][1] == [*seen[1], seen[0][0]]  # the newest first: step 2's prompts, then step 1's first
    assert calls[1][1] == [*seen[2], seen[0][1]]  # the one left over waited for the next batch
    assert trainer._relift_buffer == [] and trainer.rollout_stats["relift_sft_steps"] == 2
    budget = trainer.budget()
    assert budget["optimizer_steps"] == 3 + 2  # the SFT optimizer's steps are counted too
    logged = [h for h in trainer.state.log_history if "relift/buffer" in h]
    assert [h["relift/buffer"] for h in logged] == [2.0, 1.0, 0.0]


def test_sft_targets_are_the_first_expert_trace_and_eos_and_only_they_carry_the_loss(make_trainer):
    trainer = make_trainer(reward=0.0, method="relift", relift_batch=2, max_steps=1, max_completion_length=64)
    row = {"expert": ["add 1 and 2\n\nso 3", "unused second trace"]}
    target = trainer._relift_target(row)
    assert trainer._tokenizer.decode(target[:-1]) == "add 1 and 2\n\nso 3" and target[-1] == trainer.eos_token_ids[0]
    prompt = trainer._tokenizer("1+2=", add_special_tokens=False)["input_ids"]
    input_ids, attention_mask, target_mask = trainer._relift_inputs([(prompt, target), (prompt[:2], target[:3])])
    assert input_ids[0, : len(prompt)].tolist() == prompt and input_ids[0, len(prompt) :].tolist() == target
    assert attention_mask.sum(dim=1).tolist() == [len(prompt) + len(target), 5]
    # position j predicts token j + 1: the first target token is predicted from the prompt's last position
    assert target_mask[0].nonzero().flatten().tolist() == list(range(len(prompt) - 1, len(prompt) + len(target) - 1))
    assert target_mask[1].nonzero().flatten().tolist() == [1, 2, 3]
    long = trainer._relift_target({"expert": ["add 1 and 2 " * 40]})
    assert len(long) == 64 and long[-1] == trainer.eos_token_ids[0]  # cut to the budget, EOS kept


def test_solved_prompts_are_not_buffered_and_the_rl_step_alone_trains(make_trainer):
    trainer = make_trainer(reward=1.0, method="relift", relift_batch=1, max_steps=2)
    calls = _record_sft_steps(trainer)
    trainer.train()
    assert calls == [] and trainer._relift_buffer == []


def test_with_two_updates_per_rollout_the_sft_step_follows_the_second(make_trainer):
    trainer = make_trainer(reward=0.0, method="relift", relift_batch=2, max_steps=4, num_iterations=2)
    assert trainer.args.updates_per_rollout == 2
    calls = _record_sft_steps(trainer)
    trainer.train()
    assert [step for step, _ in calls] == [2, 4]  # after each rollout batch's last update, not between its two


def test_the_sft_step_moves_the_weights_where_rl_alone_would_not(make_trainer, tokenizer):
    from trapo.tasks.tiny_model import build_model

    # Reward 0 everywhere: every advantage is 0, so with no entropy bonus GRPO's step changes nothing (Adam's
    # first step on a zero gradient is zero) and any change is the SFT step's.
    changes = {}
    for method in ("grpo", "relift"):
        model = build_model(tokenizer, hidden_size=32, num_layers=1, num_heads=2, seed=0)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        trainer = make_trainer(reward=0.0, model=model, method=method, relift_batch=2, max_steps=1,
                               entropy_coef=0.0, out=method, relift_learning_rate=1e-2)  # fmt: skip
        trainer.train()
        changes[method] = max((v - before[k]).abs().max().item() for k, v in model.state_dict().items())
    assert changes["grpo"] == 0.0 and changes["relift"] > 1e-3


def test_the_buffer_survives_a_checkpoint(make_trainer):
    trainer = make_trainer(reward=0.0, method="relift", relift_batch=5, max_steps=2)
    trainer.train()
    assert len(trainer._relift_buffer) == 4  # two steps of two unsolved prompts, below the batch of five
    state = trainer._extra_checkpoint_state()
    fresh = make_trainer(reward=0.0, method="relift", relift_batch=5, max_steps=2, out="fresh")
    fresh._load_extra_checkpoint_state(state)
    assert fresh._relift_buffer == trainer._relift_buffer
