"""Settings shared by the short in-process runs of `trapo demo` and `trapo bench`: quiet libraries, quiet trainers,
local trainer arguments. Kept in one place so the two commands measure and train under the same conditions."""

from __future__ import annotations

import logging
import os


def quiet_libraries() -> None:
    """No progress bars, info logs or deprecation warnings from the HF stack: the commands print their own progress,
    and a user watching the demo cannot act on a library's ``FutureWarning``."""
    import warnings

    import datasets
    import transformers

    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module=r"(transformers|trl|accelerate|datasets|torch)\b")
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    for name in ("transformers", "trl", "accelerate", "datasets"):
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


def quiet_trainer(trainer) -> None:
    """With tqdm disabled HF prints every log dict; the commands keep ``log_history`` and show their own progress."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)


def local_trainer_args(seed: int, cuda: bool = False) -> dict:
    """Trainer arguments for a short local run: one device (fp32 on CPU, faster than bf16 for tiny models; bf16 on
    CUDA), no reporting, no checkpoints, no tqdm, seeded, data loaded in-process."""
    return dict(
        use_cpu=not cuda,
        bf16=cuda,
        gradient_checkpointing=False,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=0,
    )
