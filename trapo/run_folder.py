"""One run per output folder (docs/errors.md, "Run folders").

An output folder belongs to one run: the HF Trainer would otherwise let two runs share it (each overwriting the
other's files, both exiting 0), and ``resume_from_checkpoint=True`` picks the newest ``checkpoint-N`` whatever run
wrote it. Three rules, applied by `trapo.checkpointing.CrashSafeCheckpoints` when training starts:

1. a lock: while a run trains, a second run in the same folder is refused (``fcntl.flock``, released when the process
   ends however it ends);
2. a fresh run refuses a folder that holds checkpoints, unless ``overwrite_output_dir`` (then they are deleted first,
   so a later resume cannot pick one of them);
3. every checkpoint records its run's identity (`run_identity`: model, data, method, seed); resuming from a checkpoint
   whose identity differs is refused, naming what differs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

logger = logging.getLogger(__name__)

IDENTITY_FILE = "trapo_run.json"
LOCK_FILE = ".trapo-run.lock"
IDENTITY_KEYS = ("model", "data", "method", "seed")


def data_fingerprint(dataset) -> str | None:
    """A short hash of a dataset's size and of a few of its rows (first, middle, last): equal for the same data
    loaded again, different for other data, and cheap on millions of rows. None for a stream."""
    if dataset is None or not hasattr(dataset, "__len__"):
        return None
    n = len(dataset)
    picks = sorted({0, n // 2, n - 1}) if n else []
    rows = [dataset[i] for i in picks]
    text = json.dumps([n, getattr(dataset, "column_names", None), rows], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def model_fingerprint(model) -> str:
    """Where the model came from (its ``name_or_path``) and its size: a model built in memory has no path."""
    config = getattr(model, "config", None)
    # FSDP2 renames a sharded model's class in place (FSDPLlamaForCausalLM): name the model's own class.
    own = next(c for c in type(model).__mro__ if not c.__name__.startswith("FSDP"))
    name = getattr(config, "_name_or_path", "") or own.__name__
    size = sum(p.numel() for p in model.parameters()) if hasattr(model, "parameters") else 0
    return f"{name} ({size} parameters)"


def run_identity(model, dataset, method: str, seed: int) -> dict:
    """What makes a run this run: a checkpoint of another identity must not be resumed into it."""
    return {"model": model_fingerprint(model), "data": data_fingerprint(dataset), "method": method, "seed": seed}


def identity_differences(saved: dict, current: dict) -> list[str]:
    return [
        f"{k}: {saved.get(k)!r} there, {current.get(k)!r} here" for k in IDENTITY_KEYS if saved.get(k) != current[k]
    ]


def check_resume_identity(checkpoint: str | Path, current: dict) -> None:
    """Refuse to resume from a checkpoint written by a run with another model, data, method or seed."""
    path = Path(checkpoint) / IDENTITY_FILE
    if not path.is_file():
        logger.warning("checkpoint %s records no run identity (written by an older trapo); resuming anyway", checkpoint)
        return
    differences = identity_differences(json.loads(path.read_text()), current)
    if differences:
        raise ValueError(
            f"checkpoint {checkpoint} belongs to another run ({'; '.join(differences)}): resume it with the config "
            "that wrote it, or start this run in another output_dir"
        )


def prepare_fresh_folder(output_dir: str | Path, overwrite: bool, checkpoints: list[Path]) -> None:
    """A fresh run (no resume) refuses a folder with checkpoints, or deletes them when ``overwrite``."""
    if not checkpoints:
        return
    names = ", ".join(p.name for p in checkpoints[-3:])
    if not overwrite:
        raise ValueError(
            f"output_dir {str(output_dir)!r} holds checkpoints of an earlier run ({names}): resume it "
            "(--resume, or train(resume_from_checkpoint=True)), choose another output_dir, or set "
            "overwrite_output_dir=True to delete them and start over"
        )
    logger.warning(
        "overwrite_output_dir: deleting %d checkpoint(s) of an earlier run in %s", len(checkpoints), output_dir
    )
    for path in checkpoints:
        shutil.rmtree(path)


class RunLock:
    """An exclusive lock on ``output_dir`` for as long as a run trains there (main process only)."""

    def __init__(self, output_dir: str | Path):
        self.path = Path(output_dir) / LOCK_FILE
        self.handle = None

    def acquire(self) -> None:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")  # noqa: SIM115 (held open while the run trains)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            owner = handle.read().strip() or "unknown"
            handle.close()
            raise ValueError(
                f"another run is training in output_dir {str(self.path.parent)!r} (process {owner}): two runs in one "
                "folder overwrite each other's files; choose another output_dir"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self.handle = handle

    def release(self) -> None:
        if self.handle is not None:
            self.handle.close()  # closing releases the flock
            self.handle = None
