"""One run per output folder (trapo.run_folder, through trapo.checkpointing): a lock while training, old checkpoints
refused unless overwrite_output_dir, and a checkpoint resumed only into the run that wrote it."""

from __future__ import annotations

import json

import pytest
from conftest import addition_rows
from datasets import Dataset

from trapo.run_folder import IDENTITY_FILE, RunLock, data_fingerprint


def test_a_second_run_in_a_folder_being_trained_in_is_refused(make_trainer, tmp_path):
    lock = RunLock(tmp_path / "out")
    lock.acquire()  # another run, training there
    try:
        with pytest.raises(ValueError, match="another run is training in output_dir .* choose another output_dir"):
            make_trainer(max_steps=1).train()
    finally:
        lock.release()
    make_trainer(max_steps=1).train()  # the lock is gone with its run


def test_a_fresh_run_refuses_old_checkpoints_unless_told_to_overwrite(make_trainer, tmp_path):
    first = make_trainer(max_steps=2, save_strategy="steps", save_steps=1)
    first.train()
    assert (tmp_path / "out" / "checkpoint-2" / IDENTITY_FILE).is_file()
    with pytest.raises(ValueError, match=r"holds checkpoints of an earlier run \(checkpoint-1, checkpoint-2\)"):
        make_trainer(max_steps=1).train()
    make_trainer(max_steps=1, overwrite_output_dir=True).train()
    assert not (tmp_path / "out" / "checkpoint-2").exists()


def test_resume_refuses_a_checkpoint_of_another_run_naming_what_differs(make_trainer, tmp_path):
    make_trainer(max_steps=2, save_strategy="steps", save_steps=2).train()
    checkpoint = tmp_path / "out" / "checkpoint-2"
    saved = json.loads((checkpoint / IDENTITY_FILE).read_text())
    assert saved["method"] == "trapo" and saved["seed"] == 0 and saved["data"] is not None
    other = make_trainer(out="other", max_steps=3, seed=1)
    with pytest.raises(ValueError, match=r"belongs to another run \(seed: 0 there, 1 here\)"):
        other.train(resume_from_checkpoint=str(checkpoint))
    other = make_trainer(out="grpo", max_steps=3, method="grpo")
    with pytest.raises(ValueError, match=r"method: 'trapo' there, 'grpo' here"):
        other.train(resume_from_checkpoint=str(checkpoint))
    same = make_trainer(out="same", max_steps=3)
    same.train(resume_from_checkpoint=str(checkpoint))
    assert same.state.global_step == 3


def test_the_data_fingerprint_tells_data_apart_and_not_reloads():
    rows = addition_rows(16)
    assert data_fingerprint(Dataset.from_list(rows)) == data_fingerprint(Dataset.from_list(list(rows)))
    assert data_fingerprint(Dataset.from_list(rows)) != data_fingerprint(Dataset.from_list(rows[:15]))
    changed = [dict(r) for r in rows]
    changed[8]["answer"] = "99"  # the middle row is one of those hashed
    assert data_fingerprint(Dataset.from_list(rows)) != data_fingerprint(Dataset.from_list(changed))
