"""TRAPOTrainer through the HF/TRL training machinery: gradient accumulation, LoRA, checkpoint resume, 2 processes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trapo.tasks.tiny_model import build_model

ROOT = Path(__file__).resolve().parents[1]


def length_reward(completions, **kwargs):
    """Depends on what was sampled, so advantages are non-zero and the generation RNG matters."""
    return [float(len(c) % 3 == 0) for c in completions]


def fresh_model(tokenizer):
    return build_model(tokenizer, hidden_size=32, num_layers=1, num_heads=2, seed=0)


def train(make_trainer, out: str, resume=None, **overrides):
    trainer = make_trainer(reward=length_reward, out=out, **overrides)
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_gradient_accumulation_matches_one_big_batch(make_trainer, tokenizer):
    # 8 samples per micro-batch × 2 accumulation steps: TRL generates once for the 16-sample generation batch
    # (2 prompt groups), then shuffles it and splits it into two micro-batches. With SGD and no entropy bonus (the
    # one per-micro-batch mean) the update must equal one step on the whole batch: the loss is a token sum over a
    # constant, and each micro-batch is divided by the accumulation steps exactly once.
    common = dict(optim="sgd", learning_rate=0.1, entropy_coef=0.0)
    accumulated = train(
        make_trainer,
        "ga",
        **common,
        per_device_train_batch_size=8,
        gradient_accumulation_steps=2,
    )
    assert accumulated.state.global_step == 2
    assert accumulated.args.steps_per_generation == 2
    assert accumulated.rollout_stats["prompts"] == 4
    assert accumulated.rollout_stats["samples"] == 32

    single = train(make_trainer, "one", per_device_train_batch_size=16, **common)
    assert single.rollout_stats["prompts"] == 4
    initial = weights(fresh_model(tokenizer))
    moved = max_diff(weights(single.model), initial)
    diff = max_diff(weights(accumulated.model), weights(single.model))
    assert moved > 1e-4
    # Dividing by the accumulation steps twice (or not at all) would leave a difference of about moved / 2.
    assert diff < 0.01 * moved, f"accumulated update differs by {diff:.3g} (update size {moved:.3g})"
    losses = [[h["loss"] for h in t.state.log_history if "loss" in h] for t in (accumulated, single)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-4, abs=1e-6)


def test_lora_trains_only_adapter_weights(make_trainer, tokenizer):
    from peft import LoraConfig

    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    model = fresh_model(tokenizer)
    trainer = make_trainer(model=model, trainer_kwargs={"peft_config": config})
    before = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    trainer.train()
    assert trainer.state.global_step == 2
    after = dict(trainer.model.named_parameters())
    changed = {k for k in before if not torch.equal(before[k], after[k].detach())}
    lora = {k for k in before if "lora_" in k}
    assert lora and all(k.split(".")[-4] in ("q_proj", "v_proj") for k in lora)
    # lora_A starts random and lora_B at zero; both move (the zero-reward rollout still imitates expert prefixes).
    assert changed == lora
    assert {k for k, v in after.items() if v.requires_grad} == lora


def test_resume_from_checkpoint_reproduces_the_uninterrupted_run(make_trainer, tmp_path):
    settings = dict(
        per_device_train_batch_size=8,
        max_steps=4,
        save_strategy="steps",
        save_steps=2,
        seed=0,
        data_seed=0,
    )
    full = train(make_trainer, "full", **settings)
    checkpoint = tmp_path / "full" / "checkpoint-2"
    assert full.state.global_step == 4 and checkpoint.is_dir()

    resumed = train(make_trainer, "resumed", resume=str(checkpoint), **settings)
    assert resumed.state.global_step == 4
    # Steps 3-4 run again from the restored model, optimizer, scheduler, sampler position and RNG state (which
    # drives sampling), so they see the same prompts, draw the same completions and reach the same weights.
    diff = max_diff(weights(resumed.model), weights(full.model))
    assert diff <= 1e-6, f"resumed run differs from the uninterrupted one by {diff:.3g}"
    full_log, resumed_log = (
        [(h["step"], h["loss"], h["reward"]) for h in t.state.log_history if "loss" in h] for t in (full, resumed)
    )
    assert resumed_log == full_log
    # Rollout counters are saved in the checkpoint: the resumed trainer restores steps 1-2's and counts on.
    assert resumed.rollout_stats == full.rollout_stats and full.rollout_stats["prompts"] == 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_run_keeps_groups_whole(tmp_path):
    # accelerate 1.15: `--cpu` with several processes goes through mpirun; torchrun (`--multi_gpu`) with the
    # config's use_cpu=True gives a gloo process group on CPU instead.
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(_free_port()),
        str(ROOT / "tests" / "scripts" / "ddp_train.py"),
        str(tmp_path / "ddp"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=150)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    marker, decoder = "TRAPO_DDP_RESULT ", json.JSONDecoder()
    # Both ranks share stdout: find each marker wherever it lands and read exactly one JSON value after it.
    chunks = proc.stdout.split(marker)[1:]
    results = sorted((decoder.raw_decode(chunk)[0] for chunk in chunks), key=lambda r: r["rank"])
    assert [r["rank"] for r in results] == [0, 1], output[-4000:]
    assert all(r["world_size"] == 2 and r["global_step"] == 2 for r in results)
    for r in results:
        # One rollout batch per step, each one whole group of 8 copies of a single prompt.
        assert len(r["rollout_batches"]) == 2
        assert all(len(batch) == 8 and len(set(batch)) == 1 for batch in r["rollout_batches"])
        assert r["rollout_stats"]["prompts"] == 2 and r["rollout_stats"]["samples"] == 16
    # The two processes hold different groups at each step.
    for step in range(2):
        assert results[0]["rollout_batches"][step][0] != results[1]["rollout_batches"][step][0]
    # Rank 0 (reward 1) is never guided, rank 1 (reward 0) always: their stages need different numbers of requests,
    # yet both make the same number of (collective) generation calls.
    assert results[0]["rollout_stats"].get("guided_samples", 0) == 0
    assert results[1]["rollout_stats"]["guided_samples"] == 8
    assert results[0]["rollout_stats"]["generation_calls"] == results[1]["rollout_stats"]["generation_calls"]
    # DDP kept the replicas identical.
    assert results[0]["weights_sha256"] == results[1]["weights_sha256"]


@pytest.mark.slow
def test_fsdp2_shards_across_two_cpu_processes_and_checkpoints_resume_and_reload(tmp_path):
    """FSDP2 over gloo (trapo.distributed): every parameter a sharded DTensor, the ranks' different guidance
    decisions still line up for the collective generation, a resume reproduces the straight run, and the saved model
    loads in one process."""
    script = ROOT / "tests" / "scripts" / "fsdp2_train.py"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(_free_port()), str(script), str(tmp_path / "fsdp")]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    marker, decoder = "TRAPO_FSDP_RESULT ", json.JSONDecoder()
    results = sorted((decoder.raw_decode(c)[0] for c in proc.stdout.split(marker)[1:]), key=lambda r: r["rank"])
    assert [r["rank"] for r in results] == [0, 1], proc.stdout[-4000:]
    for r in results:
        assert r["distributed_type"] == "DistributedType.FSDP" and r["backend"] == "gloo" and r["sharded"]
        assert r["global_step"] == r["resumed_step"] == 3
        assert r["resumed"] == r["straight"]  # the resume reproduces the straight run
    assert results[0]["straight"] == results[1]["straight"]  # one model, gathered alike on both ranks
    stats = [r["rollout_stats"] for r in results]
    assert stats[0].get("guided_samples", 0) == 0 and stats[1]["guided_samples"] > 0  # different decisions...
    assert stats[0]["generation_calls"] == stats[1]["generation_calls"]  # ...the same collective calls
    assert results[0]["reload"].isdigit() and int(results[0]["reload"]) > 0, results[0]["reload"]  # loads alone
