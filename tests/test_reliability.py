"""Reliability (docs/errors.md): bad input fails before training with a message naming field, row and fix; NaN steps
are skipped without touching weights or optimizer state; hanging or raising rewards are bounded and counted; a
SIGKILL while saving loses nothing; resuming at an epoch boundary trains the remaining steps."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import addition_rows, constant_reward, tiny_config
from datasets import Dataset
from transformers import TrainerCallback

from trapo.checkpointing import COMPLETE_MARKER, last_complete_checkpoint, resolve_resume
from trapo.trainer import TRAPOTrainer

ROOT = Path(__file__).resolve().parents[1]


def make_trainer(tmp_path, tokenizer, rows=None, reward=None, model=None, **overrides):
    from trapo.tasks.tiny_model import build_model

    return TRAPOTrainer(
        model=model or build_model(tokenizer, hidden_size=32, num_layers=1, num_heads=2, seed=0),
        reward_funcs=reward or constant_reward(0.0),
        args=tiny_config(tmp_path, **overrides),
        train_dataset=Dataset.from_list(addition_rows() if rows is None else rows),
        processing_class=tokenizer,
    )


# ---------------------------------------------------------------- validation before training


def _rows(**change):
    rows = addition_rows(4)
    rows[2] = {**rows[2], **change}
    return rows


@pytest.mark.parametrize(
    ("rows", "overrides", "message"),
    [
        ([{k: v for k, v in r.items() if k != "prompt"} for r in addition_rows(4)], {}, r"no column\(s\) \['prompt'\]"),
        ([{k: v for k, v in r.items() if k != "answer"} for r in addition_rows(4)], {}, "answer_column=None"),
        ([{k: v for k, v in r.items() if k != "expert"} for r in addition_rows(4)], {}, r"\['expert'\].*rename"),
        (_rows(expert=[]), {}, "row 2: expert: expected a non-empty list"),
        (_rows(expert=["fine", "  "]), {}, "row 2: expert: trace 1 is not a non-empty string"),
        (_rows(answer=""), {}, "row 2: answer: missing or empty"),
        ([{**r, "answer": 7} for r in addition_rows(4)], {}, r"row 0: answer: expected a string, got int.*str\("),
        (_rows(prompt="9" * 40), {"max_prompt_length": 20}, "row 2: prompt: 40 tokens > max_prompt_length 20"),
    ],
)
def test_bad_rows_fail_before_training_naming_row_field_and_fix(tmp_path, tokenizer, rows, overrides, message):
    with pytest.raises(ValueError, match=message):
        make_trainer(tmp_path, tokenizer, rows=rows, **overrides)


def test_non_string_expert_trace_is_named(tmp_path, tokenizer):
    # Arrow cannot hold a list mixing strings and numbers, so the bad trace is a null inside the list.
    with pytest.raises(ValueError, match="row 2: expert: trace 0 is not a non-empty string"):
        make_trainer(tmp_path, tokenizer, rows=_rows(expert=[None, "x"]))


def test_empty_dataset_and_missing_dataset(tmp_path, tokenizer):
    empty = Dataset.from_dict({"prompt": [], "answer": [], "expert": []})
    with pytest.raises(ValueError, match="dataset is empty"):
        TRAPOTrainer(model=None, reward_funcs=constant_reward(0), args=tiny_config(tmp_path), train_dataset=empty)
    with pytest.raises(ValueError, match="needs a train_dataset"):
        TRAPOTrainer(model=None, reward_funcs=constant_reward(0), args=tiny_config(tmp_path), train_dataset=None)


def test_answer_column_none_lets_rewards_without_answers_train(tmp_path, tokenizer):
    rows = [{k: v for k, v in r.items() if k != "answer"} for r in addition_rows(2)]
    trainer = make_trainer(
        tmp_path, tokenizer, rows=rows, answer_column=None, per_device_train_batch_size=8, max_steps=1
    )
    trainer.train()
    assert trainer.state.global_step == 1


@pytest.mark.parametrize("missing", ["eos_token", "pad_token"])
def test_tokenizer_without_eos_or_pad(tmp_path, missing):
    from trapo.tasks.tiny_model import build_tokenizer

    tokenizer = build_tokenizer()
    setattr(tokenizer, missing, None)
    if missing == "pad_token":  # TRL pads with the EOS token then, which works: the check sees the fixed tokenizer
        assert make_trainer(tmp_path, tokenizer)._tokenizer.pad_token == tokenizer.eos_token
        return
    with pytest.raises(ValueError, match=f"tokenizer has no {missing}"):
        make_trainer(tmp_path, tokenizer)


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


def test_missing_or_corrupt_benchmark_file(tmp_path):
    from trapo.eval.benchmarks import load_benchmark

    with pytest.raises(FileNotFoundError, match=r"benchmark 'aime': .*aime.parquet not found; pass --data-dir"):
        load_benchmark("aime", tmp_path)
    (tmp_path / "aime.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(ValueError, match="not a readable parquet file"):
        load_benchmark("aime", tmp_path)


# ---------------------------------------------------------------- non-finite steps


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


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        torch.equal(a[k], b[k])
        if torch.is_tensor(a[k])
        else (_same(a[k], b[k]) if isinstance(a[k], dict) else a[k] == b[k])
        for k in a
    )


def test_step_with_nan_gradient_is_skipped_and_leaves_weights_and_optimizer_untouched(tmp_path, tokenizer):
    trainer = make_trainer(tmp_path, tokenizer, max_steps=3, per_device_train_batch_size=8)
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


def test_nan_loss_is_skipped_too(tmp_path, tokenizer, monkeypatch):
    import trapo.trainer

    calls = {"n": 0}
    real_mixed_loss = trapo.trainer.mixed_loss

    def nan_on_first_call(*args, **kwargs):
        calls["n"] += 1
        loss, metrics = real_mixed_loss(*args, **kwargs)
        return (loss * float("nan"), metrics) if calls["n"] == 1 else (loss, metrics)

    monkeypatch.setattr(trapo.trainer, "mixed_loss", nan_on_first_call)
    trainer = make_trainer(tmp_path, tokenizer, max_steps=2, per_device_train_batch_size=8)
    snapshots = Snapshots()
    trainer.add_callback(snapshots)
    before = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    assert trainer.rollout_stats["skipped_steps"] == 1
    assert _same(snapshots.weights[1], before) and not _same(snapshots.weights[2], before)


# ---------------------------------------------------------------- rewards that hang or raise


def test_hanging_reward_is_bounded_scored_zero_and_counted(tmp_path, tokenizer):
    release = threading.Event()
    calls = {"n": 0}

    def sometimes_hangs(completions, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            release.wait(60)  # hangs (until the test ends)
        return [1.0] * len(completions)

    trainer = make_trainer(
        tmp_path, tokenizer, reward=sometimes_hangs, reward_timeout=0.5, max_steps=2, per_device_train_batch_size=8
    )
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


def test_raising_reward_scores_zero_and_a_broken_one_stops_training(tmp_path, tokenizer):
    calls = {"n": 0}

    def flaky(completions, **kwargs):
        calls["n"] += 1
        if calls["n"] % 3 == 0:
            raise ConnectionError("verifier service unavailable")
        return [1.0] * len(completions)

    trainer = make_trainer(tmp_path / "a", tokenizer, reward=flaky, max_steps=2, per_device_train_batch_size=8)
    trainer.train()
    assert trainer.state.global_step == 2 and trainer.rollout_stats["reward_errors"] >= 1

    def broken(completions, **kwargs):
        raise KeyError("solution")

    trainer = make_trainer(
        tmp_path / "b", tokenizer, reward=broken, max_reward_failures=3, per_device_train_batch_size=8
    )
    with pytest.raises(RuntimeError, match=r"'broken' failed 3 calls in a row; last: KeyError"):
        trainer.train()


def test_reward_returning_none_or_the_wrong_count(tmp_path, tokenizer, caplog):
    def none_for_all(completions, **kwargs):
        return [None] * len(completions)

    trainer = make_trainer(tmp_path / "a", tokenizer, reward=none_for_all, max_steps=1, per_device_train_batch_size=8)
    with caplog.at_level("WARNING", logger="trapo.guards"):
        trainer.train()
    assert trainer.rollout_stats["unscorable_rewards"] == trainer.rollout_stats["samples"] == 8
    assert trainer.rollout_stats["guided_samples"] == 4  # scored 0, so every guided stage fires
    # Not silent: a warning naming the function, and a logged share.
    assert "reward function(s) 'none_for_all' returned None or NaN for 4 of 4 samples" in caplog.text
    assert [h["trapo/unscorable_share"] for h in trainer.state.log_history if "trapo/unscorable_share" in h] == [1.0]
    # A reward that can never score stops training after max_unscorable_steps such steps in a row.
    trainer = make_trainer(
        tmp_path / "c",
        tokenizer,
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

    trainer = make_trainer(tmp_path / "d", tokenizer, reward=half_none, max_steps=3, max_unscorable_steps=1,
                           max_unscorable_share=0.9, per_device_train_batch_size=8)  # fmt: skip
    trainer.train()
    assert trainer.state.global_step == 3 and trainer.rollout_stats["unscorable_rewards"] > 0

    def returns_none(completions, **kwargs):
        return None

    trainer = make_trainer(tmp_path / "e", tokenizer, reward=returns_none, per_device_train_batch_size=8)
    with pytest.raises(ValueError, match=r"'returns_none' returned None instead of a list of \d+ rewards"):
        trainer.train()

    def three(completions, **kwargs):
        return [1.0, 0.0, 1.0]

    trainer = make_trainer(tmp_path / "b", tokenizer, reward=three, per_device_train_batch_size=8)
    with pytest.raises(ValueError, match=r"'three' returned 3 rewards for \d+ completions"):
        trainer.train()


# ---------------------------------------------------------------- crash safety and resume


def _run_crash_script(out: Path, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "tests" / "scripts" / "crash_train.py"), str(out), *flags],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )


@pytest.mark.slow
def test_sigkill_while_saving_then_resume_matches_the_uninterrupted_run(tmp_path):
    straight = _run_crash_script(tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr[-3000:]

    killed = _run_crash_script(tmp_path / "crashed", "--kill-saving-step", "3")
    assert killed.returncode == -9, killed.stderr[-3000:]
    checkpoints = tmp_path / "crashed" / "out"
    assert (checkpoints / "checkpoint-3").is_dir() and not (checkpoints / "checkpoint-3" / COMPLETE_MARKER).exists()
    assert last_complete_checkpoint(checkpoints) == checkpoints / "checkpoint-2"  # N/2 of N = 4 steps

    resumed = _run_crash_script(tmp_path / "crashed", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "skipping incomplete checkpoint" in resumed.stderr and "resuming from" in resumed.stderr

    a, b = (torch.load(tmp_path / d / "weights.pt") for d in ("straight", "crashed"))
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    assert diff <= 1e-6, f"resumed weights differ by {diff:.3g}"
    ra, rb = (json.loads((tmp_path / d / "result.json").read_text()) for d in ("straight", "crashed"))
    assert rb["global_step"] == 4
    assert rb["rollout_stats"] == ra["rollout_stats"]  # restored from the checkpoint, then counted on
    assert rb["log"] == ra["log"]  # guidance shares of every step
    assert 0 < ra["rollout_stats"]["guided_samples"] < ra["rollout_stats"]["samples"]


def test_resume_needs_a_complete_checkpoint(tmp_path):
    (tmp_path / "checkpoint-5").mkdir()
    with pytest.raises(ValueError, match="no complete checkpoint"):
        resolve_resume(True, tmp_path)
    with pytest.raises(ValueError, match="checkpoint-5 is incomplete"):
        resolve_resume(str(tmp_path / "checkpoint-5"), tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        resolve_resume(str(tmp_path / "checkpoint-9"), tmp_path)
    assert resolve_resume(None, tmp_path) is None


def test_resume_exactly_at_an_epoch_boundary_trains_the_remaining_steps(tmp_path, tokenizer):
    # 4 prompts, 2 prompts (16 samples) per step: an epoch is 2 steps; checkpoint-2 sits on the boundary.
    settings = dict(max_steps=4, save_strategy="steps", save_steps=2, per_device_train_batch_size=16)
    rows = addition_rows(4)
    straight = make_trainer(tmp_path / "straight", tokenizer, rows=rows, reward=_sampled, **settings)
    straight.train()
    checkpoint = tmp_path / "straight" / "out" / "checkpoint-2"
    assert json.loads((checkpoint / "trainer_state.json").read_text())["epoch"] == pytest.approx(1.0)

    resumed = make_trainer(tmp_path / "resumed", tokenizer, rows=rows, reward=_sampled, **settings)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == 4
    assert resumed.rollout_stats["prompts"] == straight.rollout_stats["prompts"] == 8
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6


def _sampled(completions, **kwargs):
    return [float(len(c) % 3 == 0) for c in completions]


def test_single_trace_rows_are_counted_and_warned_about(tmp_path, tiny_model, tokenizer, caplog):
    from datasets import Dataset

    rows = [{"prompt": "1+1=", "answer": "2", "expert": ["one trace"]}] * 3
    rows += [{"prompt": "2+2=", "answer": "4", "expert": ["a", "b"]}]
    with caplog.at_level("WARNING", logger="trapo.data.validation"):
        TRAPOTrainer(
            model=tiny_model,
            reward_funcs=constant_reward(0.0),
            args=tiny_config(tmp_path),
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
        )
    assert "3 of 4 training rows have a single expert trace" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="trapo.data.validation"):  # luffy imitates the first trace: no fallback
        TRAPOTrainer(
            model=tiny_model,
            reward_funcs=constant_reward(0.0),
            args=tiny_config(tmp_path, method="luffy"),
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
        )
    assert "single expert trace" not in caplog.text


@pytest.mark.parametrize("policy", ["keep", "drop", "error"])
def test_overlong_expert_traces_are_counted_before_training(tmp_path, tiny_model, tokenizer, caplog, policy):
    from datasets import Dataset

    rows = addition_rows(4)
    rows[1] = {**rows[1], "expert": ["x" * 40, "short"]}  # 40 tokens + EOS > a budget of 32
    rows[3] = {**rows[3], "expert": ["fine", "y" * 35]}  # the full-trace stage's second trace
    args = tiny_config(tmp_path, per_device_train_batch_size=8, overlong_traces=policy, max_completion_length=32)
    build = lambda: TRAPOTrainer(  # noqa: E731
        model=tiny_model, reward_funcs=constant_reward(0.0), args=args,
        train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
    )  # fmt: skip
    if policy == "error":
        with pytest.raises(ValueError, match=r"2 of 4 training rows have an expert trace longer than .* 40 tokens"):
            build()
        return
    with caplog.at_level("WARNING", logger="trapo.data.validation"):
        trainer = build()
    assert "2 of 4 training rows have an expert trace longer than max_completion_length (32 tokens" in caplog.text
    assert "the longest is 40 tokens): rows [1, 3]" in caplog.text
    assert len(trainer.train_dataset) == (2 if policy == "drop" else 4)
