"""TRAPOTrainer with FSDP2 sharding on 2 CPU processes (gloo), launched by ``tests/test_trainer_scale.py``.

Usage: ``torchrun --nproc_per_node 2 tests/scripts/fsdp2_train.py OUTPUT_DIR``

Trains 3 steps (checkpoint at step 2), then a fresh trainer resumes from checkpoint-2 and trains step 3 again, then
the model is saved and rank 0 loads it in a separate single-process Python. Each process prints one line
``TRAPO_FSDP_RESULT {json}``: whether every parameter was a sharded DTensor, its generation calls and guided samples,
the digest of the full (gathered) weights after the straight and the resumed run, and the reload check.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for conftest's helpers

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from conftest import addition_rows, tiny_config  # noqa: E402
from datasets import Dataset  # noqa: E402
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict  # noqa: E402
from torch.distributed.tensor import DTensor  # noqa: E402

from trapo.tasks.tiny_model import build_model, build_tokenizer  # noqa: E402
from trapo.trainer import TRAPOTrainer  # noqa: E402

torch.set_num_threads(1)


def rank_reward(completions, **kwargs):
    """1 on rank 0, 0 on rank 1: the ranks take different guidance decisions, so their stages need different numbers
    of requests, and the collective generation (FSDP's all-gathers) must still line up."""
    return [1.0 if int(os.environ.get("RANK", "0")) == 0 else 0.0] * len(completions)


def sharded(model) -> bool:
    return all(isinstance(p, DTensor) and p.to_local().numel() < p.numel() for p in model.parameters())


def digest(model) -> str:
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))  # a collective
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode() + state[k].detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def make_trainer(out: Path, tokenizer) -> TRAPOTrainer:
    args = tiny_config(
        out, output_dir=str(out), per_device_train_batch_size=8, max_steps=3, save_strategy="steps", save_steps=2,
        bf16=False, fsdp=True,
        fsdp_config={"version": 2, "transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"],
                     "state_dict_type": "FULL_STATE_DICT"},
    )  # fmt: skip
    model = build_model(tokenizer, hidden_size=32, num_layers=1, num_heads=2, seed=0)
    return TRAPOTrainer(
        model=model, reward_funcs=rank_reward, args=args, train_dataset=Dataset.from_list(addition_rows()),
        processing_class=tokenizer,
    )  # fmt: skip


def main(output_dir: str) -> None:
    out, tokenizer = Path(output_dir), build_tokenizer()
    straight = make_trainer(out, tokenizer)
    straight.train()
    result = {
        "rank": straight.accelerator.process_index,
        "distributed_type": str(straight.accelerator.distributed_type),
        "backend": straight.accelerator.state.backend,
        "sharded": sharded(straight.model_wrapped),
        "global_step": straight.state.global_step,
        "rollout_stats": dict(straight.rollout_stats),
        "straight": digest(straight.model_wrapped),
    }
    resumed = make_trainer(out, tokenizer)
    resumed.train(resume_from_checkpoint=str(out / "checkpoint-2"))
    result.update(resumed=digest(resumed.model_wrapped), resumed_step=resumed.state.global_step)
    resumed.save_model(str(out / "final"))
    resumed.accelerator.wait_for_everyone()
    if resumed.accelerator.is_main_process:  # the gathered model, in a process with no process group
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR")}
        check = (
            "from transformers import AutoModelForCausalLM; import torch\n"
            f"m = AutoModelForCausalLM.from_pretrained({str(out / 'final')!r})\n"
            "assert not torch.distributed.is_initialized(); print(sum(p.numel() for p in m.parameters()))"
        )
        proc = subprocess.run([sys.executable, "-c", check], env=env, capture_output=True, text=True)
        result["reload"] = proc.stdout.strip() if proc.returncode == 0 else proc.stderr[-1000:]
    sys.stdout.flush()
    os.write(sys.stdout.fileno(), ("TRAPO_FSDP_RESULT " + json.dumps(result) + "\n").encode())
    resumed.accelerator.wait_for_everyone()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
