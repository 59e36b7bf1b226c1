"""A TRAPO run that can SIGKILL itself in the middle of saving a checkpoint; used by ``tests/test_checkpointing.py``.

Usage: ``python tests/scripts/crash_train.py OUTPUT_DIR [--kill-saving-step K] [--resume]``

Trains the tiny model for 4 steps with a checkpoint every step. ``--kill-saving-step K`` kills the process with
SIGKILL while checkpoint-K is being written: after its weights, before its optimizer state, trainer state and
completion marker. ``--resume`` resumes from the last complete checkpoint. A finished run writes ``result.json``
(a hash and a copy of the final weights, the rollout counters, the guidance metrics of every logged step).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for conftest's helpers

import torch  # noqa: E402
from conftest import addition_rows, tiny_config  # noqa: E402
from datasets import Dataset  # noqa: E402

from trapo.tasks.tiny_model import build_model, build_tokenizer  # noqa: E402
from trapo.trainer import TRAPOTrainer  # noqa: E402


def sampled_reward(completions, **kwargs):
    """Depends on the sampled text, so guidance fires on some prompts and not others, and RNG state matters."""
    return [float(len(c) % 3 == 0) for c in completions]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("output_dir")
    parser.add_argument("--kill-saving-step", type=int, default=None)
    parser.add_argument("--resume", action="store_true")
    opts = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(opts.output_dir)
    tokenizer = build_tokenizer()
    args = tiny_config(
        out, per_device_train_batch_size=8, max_steps=4, save_strategy="steps", save_steps=1, save_total_limit=2
    )
    trainer = TRAPOTrainer(
        model=build_model(tokenizer, hidden_size=32, num_layers=1, num_heads=2, seed=0),
        reward_funcs=sampled_reward,
        args=args,
        train_dataset=Dataset.from_list(addition_rows()),
        processing_class=tokenizer,
    )
    if opts.kill_saving_step is not None:
        save_optimizer = trainer._save_optimizer_and_scheduler

        def killing_save(output_dir):
            if trainer.state.global_step == opts.kill_saving_step:
                os.kill(os.getpid(), signal.SIGKILL)  # the model is on disk, the rest of the checkpoint is not
            return save_optimizer(output_dir)

        trainer._save_optimizer_and_scheduler = killing_save
    trainer.train(resume_from_checkpoint=True if opts.resume else None)
    weights = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    torch.save(weights, out / "weights.pt")
    guidance = [
        {k: v for k, v in h.items() if k.startswith("trapo/") or k in ("step", "reward")}
        for h in trainer.state.log_history
        if "reward" in h
    ]
    result = {"global_step": trainer.state.global_step, "rollout_stats": dict(trainer.rollout_stats), "log": guidance}
    (out / "result.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
