"""Crash-safe checkpoints: a checkpoint either finished saving or is ignored, and resuming picks the last good one.

The HF Trainer writes ``checkpoint-N/`` file by file and, with ``save_total_limit``, deletes older checkpoints right
after. A job killed in the middle leaves a half-written newest checkpoint, which ``resume_from_checkpoint=True``
then picks (``get_last_checkpoint`` only looks at folder names), and may already have deleted the previous good one.

`CrashSafeCheckpoints` (a Trainer mixin) fixes both without touching how HF saves:
1. every process finishes its part of the save, then the main process writes ``trapo_complete.json`` atomically
   (temporary file + ``os.replace``): its presence is the definition of a complete checkpoint;
2. old checkpoints are rotated only after that marker exists, so a good checkpoint is always on disk;
3. ``train(resume_from_checkpoint=True)`` resumes from the newest *complete* checkpoint and says which incomplete
   ones it skipped; a half-written folder is removed before a save reuses its name;
4. one run per folder (`trapo.run_folder`): a lock while training, a fresh run refuses old checkpoints, and a
   checkpoint is resumed only into the run that wrote it (its identity is saved beside it).
Subclasses add their own state to the checkpoint through ``_extra_checkpoint_state`` / ``_load_extra_checkpoint_state``
(one JSON file per process).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

from transformers.trainer_utils import rotate_checkpoints

from trapo.run_folder import IDENTITY_FILE, RunLock, check_resume_identity, prepare_fresh_folder, run_identity

logger = logging.getLogger(__name__)

COMPLETE_MARKER = "trapo_complete.json"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write JSON so that readers see either the old file or the whole new one, never a torn write."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def is_complete(checkpoint: str | Path) -> bool:
    """Whether ``checkpoint`` holds a readable completion marker (written last, atomically)."""
    try:
        json.loads((Path(checkpoint) / COMPLETE_MARKER).read_text())
    except (OSError, ValueError):
        return False
    return True


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """``checkpoint-N`` folders of ``output_dir``, oldest (lowest N) first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _CHECKPOINT_RE.match(p.name)]
    return sorted(found, key=lambda p: int(_CHECKPOINT_RE.match(p.name).group(1)))


def last_complete_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest checkpoint whose save finished; newer, incomplete ones (a kill during saving) are skipped."""
    for candidate in reversed(list_checkpoints(output_dir)):
        if is_complete(candidate):
            return candidate
        logger.warning("skipping incomplete checkpoint %s (the job was probably killed while saving it)", candidate)
    return None


def resolve_resume(resume: bool | str | None, output_dir: str | Path) -> str | None:
    """What to pass to HF's ``train(resume_from_checkpoint=…)``: True → the last complete checkpoint's path."""
    if resume is None or resume is False:
        return None
    if resume is True:
        found = last_complete_checkpoint(output_dir)
        if found is None:
            raise ValueError(
                f"--resume: no complete checkpoint in {output_dir} "
                f"({len(list_checkpoints(output_dir))} incomplete); start without --resume or point it at a checkpoint"
            )
        logger.warning("resuming from %s", found)
        return str(found)
    path = Path(resume)
    if not path.is_dir():
        raise ValueError(f"resume checkpoint {path} does not exist")
    if not is_complete(path):
        if not (path / "trainer_state.json").is_file():
            raise ValueError(
                f"checkpoint {path} is incomplete (no {COMPLETE_MARKER} and no trainer_state.json: the save was cut "
                f"off); resume from an earlier one, e.g. {last_complete_checkpoint(path.parent)}"
            )
        logger.warning("checkpoint %s was not written by TRAPO (no %s); resuming from it anyway", path, COMPLETE_MARKER)
    return str(path)


class CrashSafeCheckpoints:
    """Trainer mixin (put it before the HF/TRL trainer class): complete-or-ignored checkpoints, safe rotation,
    resume from the last complete checkpoint. See the module docstring."""

    def _extra_checkpoint_state(self) -> dict:
        """Per-process state to save beside the checkpoint (JSON-serialisable)."""
        return {}

    def _load_extra_checkpoint_state(self, state: dict) -> None:
        """Restore what ``_extra_checkpoint_state`` saved (called on resume, per process)."""

    def _get_train_sampler(self, dataset=None):
        """The trainer's sampler, with each epoch's order a function of (seed, epoch) only.

        TRL's `RepeatSampler` draws every epoch's permutation from one generator that runs on across epochs, so a
        run resumed in epoch e ≥ 1 (a fresh sampler) would replay epoch 0's order instead of epoch e's. HF calls
        ``set_epoch`` at the start of every epoch; reseeding there makes straight and resumed runs see the same data.
        """
        sampler = super()._get_train_sampler(dataset)
        seed = getattr(sampler, "seed", None)
        generator = getattr(sampler, "generator", None)
        if seed is not None and generator is not None and not hasattr(sampler, "set_epoch"):
            sampler.set_epoch = lambda epoch: generator.manual_seed(seed + epoch)
        return sampler

    def _run_identity(self) -> dict:
        """This run's identity (`trapo.run_folder.run_identity`), saved with every checkpoint."""
        return run_identity(self.model, self.train_dataset, getattr(self.args, "method", "sft"), self.args.seed)

    def _save_checkpoint(self, model, trial):
        run_dir = self._get_output_dir(trial=trial)
        folder = Path(run_dir) / f"checkpoint-{self.state.global_step}"
        if self.args.should_save and folder.is_dir() and not is_complete(folder):
            shutil.rmtree(folder)  # a half-written save of the same step, from a killed run
        self.accelerator.wait_for_everyone()
        limit = self.args.save_total_limit
        self.args.save_total_limit = None  # rotate only once this checkpoint is marked complete
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = limit
        folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(folder / f"trapo_state-{self.accelerator.process_index}.json", self._extra_checkpoint_state())
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            write_json_atomic(folder / IDENTITY_FILE, self._run_identity())
            write_json_atomic(
                folder / COMPLETE_MARKER,
                {"global_step": self.state.global_step, "num_processes": self.accelerator.num_processes},
            )
            rotate_checkpoints(
                output_dir=run_dir,
                save_total_limit=limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=True,
            )

    def train(self, resume_from_checkpoint: bool | str | None = None, **kwargs):
        output_dir = self.args.output_dir
        checkpoint = resolve_resume(resume_from_checkpoint, output_dir)
        lock = RunLock(output_dir) if self.args.should_save else None
        if lock is not None:
            lock.acquire()
        try:
            if checkpoint is not None:
                check_resume_identity(checkpoint, self._run_identity())
                state_file = Path(checkpoint) / f"trapo_state-{self.accelerator.process_index}.json"
                if state_file.is_file():
                    self._load_extra_checkpoint_state(json.loads(state_file.read_text()))
            elif self.args.should_save:
                prepare_fresh_folder(output_dir, self.args.overwrite_output_dir, list_checkpoints(output_dir))
            self.accelerator.wait_for_everyone()
            return super().train(resume_from_checkpoint=checkpoint, **kwargs)
        finally:
            if lock is not None:
                lock.release()
