"""Crash-safe checkpoints (trapo.checkpointing): a SIGKILL while saving loses nothing, resuming needs a complete
checkpoint, a resume at an epoch boundary trains the remaining steps."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import addition_rows

from trapo.checkpointing import COMPLETE_MARKER, last_complete_checkpoint, resolve_resume

ROOT = Path(__file__).resolve().parents[1]


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


def test_resume_exactly_at_an_epoch_boundary_trains_the_remaining_steps(make_trainer, tmp_path):
    # 4 prompts, 2 prompts (16 samples) per step: an epoch is 2 steps; checkpoint-2 sits on the boundary.
    settings = dict(max_steps=4, save_strategy="steps", save_steps=2, per_device_train_batch_size=16)
    rows = addition_rows(4)
    straight = make_trainer(out="straight", rows=rows, reward=_sampled, **settings)
    straight.train()
    checkpoint = tmp_path / "straight" / "checkpoint-2"
    assert json.loads((checkpoint / "trainer_state.json").read_text())["epoch"] == pytest.approx(1.0)

    resumed = make_trainer(out="resumed", rows=rows, reward=_sampled, **settings)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == 4
    assert resumed.rollout_stats["prompts"] == straight.rollout_stats["prompts"] == 8
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6


def _sampled(completions, **kwargs):
    return [float(len(c) % 3 == 0) for c in completions]
