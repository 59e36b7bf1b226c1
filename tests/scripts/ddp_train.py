"""Two-process CPU run of TRAPOTrainer, launched by ``tests/test_trainer_scale.py`` through ``accelerate launch``.

Usage: ``accelerate launch --multi_gpu --num_processes 2 ... tests/scripts/ddp_train.py OUTPUT_DIR``
(``use_cpu=True`` in the config makes accelerate run gloo on CPU under torchrun).

Each process prints one line ``TRAPO_DDP_RESULT {json}``: the prompts of every local rollout batch, its rollout
counters, its final global_step and a hash of its final weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for conftest's helpers

from conftest import addition_rows, tiny_config  # noqa: E402
from datasets import Dataset  # noqa: E402

from trapo.tasks.tiny_model import build_model, build_tokenizer  # noqa: E402
from trapo.trainer import TRAPOTrainer  # noqa: E402


def rank_reward(completions, **kwargs):
    """1 on rank 0, 0 on rank 1: rank 0 never needs guidance and rank 1 always does, so the two processes have
    different numbers of requests per stage and the padded collective generation path runs."""
    value = 1.0 if int(os.environ.get("RANK", "0")) == 0 else 0.0
    return [value] * len(completions)


def main(output_dir: str) -> None:
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, hidden_size=32, num_layers=1, num_heads=2, seed=0)
    args = tiny_config(Path(output_dir), per_device_train_batch_size=8, max_steps=2, ddp_backend="gloo")
    trainer = TRAPOTrainer(
        model=model,
        reward_funcs=rank_reward,
        args=args,
        train_dataset=Dataset.from_list(addition_rows()),
        processing_class=tokenizer,
    )
    rollout_batches: list[list[str]] = []
    generate_and_score = trainer._generate_and_score_completions

    def recording(inputs):
        rollout_batches.append([row["prompt"] for row in inputs])
        return generate_and_score(inputs)

    trainer._generate_and_score_completions = recording
    trainer.train()

    digest = hashlib.sha256()
    for name, param in sorted(trainer.accelerator.unwrap_model(trainer.model).state_dict().items()):
        digest.update(name.encode())
        digest.update(param.detach().cpu().float().numpy().tobytes())
    result = {
        "rank": trainer.accelerator.process_index,
        "world_size": trainer.accelerator.num_processes,
        "global_step": trainer.state.global_step,
        "rollout_batches": rollout_batches,
        "rollout_stats": dict(trainer.rollout_stats),
        "weights_sha256": digest.hexdigest(),
    }
    # One write() per line: both ranks share the pipe, and a buffered print can be split around the other's line.
    sys.stdout.flush()
    os.write(sys.stdout.fileno(), ("TRAPO_DDP_RESULT " + json.dumps(result) + "\n").encode())
    # Tear the gloo group down before the interpreter does: left to exit, its threads sometimes abort the process
    # ("terminate called without an active exception") after the work is done.
    trainer.accelerator.wait_for_everyone()
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
