"""The demo's tiny base model: a randomly initialised char-level Llama, warm-started on the chain task, cached on disk.

`trapo demo` trains every method from this base and `trapo bench --models tiny` measures on it; both call
`base_model_path`, which builds the base on first use and finds it in the cache afterwards (keyed by `BaseSpec`).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

TASK_VERSION = 2  # bump when the task or the warm start changes, to invalidate cached bases


def default_cache_dir() -> str:
    return os.environ.get("TRAPO_CACHE", str(Path.home() / ".cache/trapo"))


@dataclass(frozen=True)
class BaseSpec:
    """Everything that defines the base model; its hash names the cache folder."""

    hidden_size: int = 128
    num_layers: int = 3  # two layers never learned the step facts in 1000 steps; three do in ~500
    warm_steps: int = 600
    warm_lr: float = 2e-3
    warm_batch: int = 64

    def key(self) -> str:
        spec = [TASK_VERSION, self.hidden_size, self.num_layers, self.warm_steps, self.warm_lr, self.warm_batch]
        return hashlib.sha256(json.dumps(spec).encode()).hexdigest()[:12]


def base_model_path(spec: BaseSpec | None = None, cache_dir: str | None = None, log=print) -> Path:
    """The warm-started base, built on first use and cached under ``cache_dir/demo-base-<key>``."""
    from datasets import Dataset

    from trapo.local_runs import local_trainer_args
    from trapo.sft import TRAPOSFTConfig, train_sft
    from trapo.tasks.chains import to_rows, two_operand_problems
    from trapo.tasks.tiny_model import build_model, build_tokenizer

    spec = spec or BaseSpec()
    path = Path(cache_dir or default_cache_dir()) / f"demo-base-{spec.key()}"
    if (path / "done").exists():
        log(f"base model: cached at {path}")
        return path
    log(f"base model: warm-starting on two-operand sums ({spec.warm_steps} steps), cached for next time")
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, hidden_size=spec.hidden_size, num_layers=spec.num_layers, seed=0)
    args = TRAPOSFTConfig(
        output_dir=str(path / "_sft"),
        max_steps=spec.warm_steps,
        per_device_train_batch_size=spec.warm_batch,
        learning_rate=spec.warm_lr,
        lr_scheduler_type="constant_with_warmup",
        warmup_steps=50,
        logging_strategy="no",
        **(local_trainer_args(seed=0) | {"disable_tqdm": False}),  # HF's progress bar for this one-off phase
    )
    model = train_sft(model, tokenizer, Dataset.from_list(to_rows(two_operand_problems())), args)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    (path / "done").write_text(json.dumps(asdict(spec)))
    return path
