"""Guards that keep a run alive (trapo.guards): non-finite steps skipped without touching weights or optimizer
state; hanging, raising or malformed reward functions bounded, counted, named (docs/errors.md)."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from transformers import TrainerCallback


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        torch.equal(a[k], b[k])
        if torch.is_tensor(a[k])
        else (_same(a[k], b[k]) if isinstance(a[k], dict) else a[k] == b[k])
        for k in a
    )


def test_step_with_nan_gradient_is_skipped_and_leaves_weights_and_optimizer_untouched(make_trainer):
    trainer = make_trainer(max_steps=3, per_device_train_batch_size=8)
    snapshots = Snapshots()
    trainer.add_callback(snapshots)
    poison = {"on": False}

    class PoisonStep2(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            poison["on"] = state.global_step == 1  # the second optimizer step

    trainer.add_callback(PoisonStep2())
    embed = trainer.model.get_input_embeddings().weight
    embed.register_hook(lambda g: g * float("nan") if poison["on"] else g)
    trainer.train()

    assert trainer.state.global_step == 3
    assert trainer.rollout_stats["skipped_steps"] == 1
    assert _same(snapshots.weights[2], snapshots.weights[1]), "the NaN step changed the weights"
    assert _same(snapshots.optim[2], snapshots.optim[1]), "the NaN step changed the optimizer state"
    assert not _same(snapshots.weights[3], snapshots.weights[2]), "training did not continue after the skip"
    assert all(torch.isfinite(w).all() for w in snapshots.weights[3].values())
    assert any(h.get("trapo/skipped_steps") == 1 for h in trainer.state.log_history)


def test_nan_loss_is_skipped_too(make_trainer, monkeypatch):
    import trapo.trainer

    calls = {"n": 0}
    real_mixed_loss = trapo.trainer.mixed_loss

    def nan_on_first_call(*args, **kwargs):
        calls["n"] += 1
        loss, metrics = real_mixed_loss(*args, **kwargs)
        return (loss * float("nan"), metrics) if calls["n"] == 1 else (loss, metrics)

    monkeypatch.setattr(trapo.trainer, "mixed_loss", nan_on_first_call)
    trainer = make_trainer(max_steps=2, per_device_train_batch_size=8)
    snapshots = Snapshots()
    trainer.add_callback(snapshots)
    before = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    assert trainer.rollout_stats["skipped_steps"] == 1
    assert _same(snapshots.weights[1], before) and not _same(snapshots.weights[2], before)


def test_hanging_reward_is_bounded_scored_zero_and_counted(make_trainer):
    release = threading.Event()
    calls = {"n": 0}

    def sometimes_hangs(completions, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            release.wait(60)  # hangs (until the test ends)
        return [1.0] * len(completions)

    trainer = make_trainer(reward=sometimes_hangs, reward_timeout=0.5, max_steps=2, per_device_train_batch_size=8)
    start = time.perf_counter()
    try:
        trainer.train()
    finally:
        release.set()
    assert time.perf_counter() - start < 30, "training waited for the hung reward"
    assert trainer.state.global_step == 2
    assert trainer.rollout_stats["reward_timeouts"] == 1
    assert [h["trapo/reward_failures"] for h in trainer.state.log_history if "trapo/reward_failures" in h] == [1, 1]
    # The hung call was stage 2's batch: scored 0, so stage 3 (threshold 1) guides that prompt.
    assert trainer.rollout_stats["guided_samples"] > 0


def test_raising_reward_scores_zero_and_a_broken_one_stops_training(make_trainer):
    calls = {"n": 0}

    def flaky(completions, **kwargs):
        calls["n"] += 1
        if calls["n"] % 3 == 0:
            raise ConnectionError("verifier service unavailable")
        return [1.0] * len(completions)

    trainer = make_trainer(out="a", reward=flaky, max_steps=2, per_device_train_batch_size=8)
    trainer.train()
    assert trainer.state.global_step == 2 and trainer.rollout_stats["reward_errors"] >= 1

    def broken(completions, **kwargs):
        raise KeyError("solution")

    trainer = make_trainer(out="b", reward=broken, max_reward_failures=3, per_device_train_batch_size=8)
    with pytest.raises(RuntimeError, match=r"'broken' failed 3 calls in a row; last: KeyError"):
        trainer.train()


def test_reward_returning_none_or_the_wrong_count(make_trainer, caplog):
    def none_for_all(completions, **kwargs):
        return [None] * len(completions)

    trainer = make_trainer(out="a", reward=none_for_all, max_steps=1, per_device_train_batch_size=8)
    with caplog.at_level("WARNING", logger="trapo.guards"):
        trainer.train()
    assert trainer.rollout_stats["unscorable_rewards"] == trainer.rollout_stats["samples"] == 8
    assert trainer.rollout_stats["guided_samples"] == 4  # scored 0, so every guided stage fires
    # Not silent: a warning naming the function, and a logged share.
    assert "reward function(s) 'none_for_all' returned None or NaN for 4 of 4 samples" in caplog.text
    assert [h["trapo/unscorable_share"] for h in trainer.state.log_history if "trapo/unscorable_share" in h] == [1.0]
    # A reward that can never score stops training after max_unscorable_steps such steps in a row.
    trainer = make_trainer(
        out="c",
        reward=none_for_all,
        max_steps=5,
        max_unscorable_steps=2,
        per_device_train_batch_size=8,
    )
    with pytest.raises(RuntimeError, match=r"no reward function could score 100% of the samples for 2 steps in a row"):
        trainer.train()
    assert trainer.state.global_step == 1  # stopped in the second step's rollout

    def half_none(completions, **kwargs):  # some unscorable samples, below the share: trains on, counted
        return [None if i % 2 else 1.0 for i in range(len(completions))]

    trainer = make_trainer(out="d", reward=half_none, max_steps=3, max_unscorable_steps=1,
                           max_unscorable_share=0.9, per_device_train_batch_size=8)  # fmt: skip
    trainer.train()
    assert trainer.state.global_step == 3 and trainer.rollout_stats["unscorable_rewards"] > 0

    def returns_none(completions, **kwargs):
        return None

    trainer = make_trainer(out="e", reward=returns_none, per_device_train_batch_size=8)
    with pytest.raises(ValueError, match=r"'returns_none' returned None instead of a list of \d+ rewards"):
        trainer.train()

    def three(completions, **kwargs):
        return [1.0, 0.0, 1.0]

    trainer = make_trainer(out="b", reward=three, per_device_train_batch_size=8)
    with pytest.raises(ValueError, match=r"'three' returned 3 rewards for \d+ completions"):
        trainer.train()


class Snapshots(TrainerCallback):
    """Weights and optimizer state after every optimizer step."""

    def __init__(self):
        self.weights, self.optim = {}, {}

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.weights[state.global_step] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.optim[state.global_step] = {
            i: {k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()}
            for i, s in optimizer.state_dict()["state"].items()
        }
