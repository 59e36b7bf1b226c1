"""One TRAPOTrainer run with vLLM generation (colocate mode, the real engine), for the vLLM lane.

Usage: ``python tests_vllm/scripts/vllm_train.py BASE_MODEL OUT --method trapo --rollout staged [--steps 2]``

Records what reached vLLM and writes ``OUT/result.json``:
- ``prompts``: every token-id prompt vLLM was asked to continue (guided samples: prompt + expert prefix);
- ``rollout_stats`` and the logged guidance metrics;
- ``weights_match``: after the last sync, vLLM's weights equal the policy's (fused q/k/v and gate/up included);
- ``before`` / ``after``: greedy samples of vLLM before training and after training + a sync;
- ``replay_equal``: the samples vLLM wrote in a rollout on the base, fed through the staged scheduler, give the same
  batch;
- ``importance_sampling``: the trainer's correction flag and whether the step output carried a ratio.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("base")
    parser.add_argument("out")
    parser.add_argument("--method", default="trapo")
    parser.add_argument("--rollout", default="staged")
    parser.add_argument("--steps", type=int, default=2)
    opts = parser.parse_args()
    from transformers import AutoTokenizer

    from trapo import TRAPOConfig, TRAPOTrainer
    from trapo.tasks.chains import TRAIN_TIERS, chain_reward, make_problems, to_rows

    out = Path(opts.out)
    tokenizer = AutoTokenizer.from_pretrained(opts.base)
    from datasets import Dataset

    dataset = Dataset.from_list(to_rows(make_problems(64, TRAIN_TIERS, "train")))
    args = TRAPOConfig(
        output_dir=str(out / "run"), method=opts.method, rollout=opts.rollout, use_vllm=True, vllm_mode="colocate",
        vllm_max_model_length=128, vllm_gpu_memory_utilization=0.3, use_cpu=True, bf16=False,
        per_device_train_batch_size=32, max_completion_length=64, max_steps=opts.steps, learning_rate=3e-3,
        logging_steps=1, report_to=[], save_strategy="no", seed=0, disable_tqdm=True,
    )  # fmt: skip
    trainer = TRAPOTrainer(
        model=opts.base, reward_funcs=chain_reward, args=args, train_dataset=dataset, processing_class=tokenizer
    )
    llm = trainer.vllm_generation.llm
    prompts: list[list[int]] = []
    generate = llm.generate

    def recording(requests, *a, **k):
        prompts.extend(list(r["prompt_token_ids"]) for r in requests)
        return generate(requests, *a, **k)

    llm.generate = recording
    engine = llm.llm_engine
    add_request = engine.add_request

    def recording_add(request_id, prompt, params, *a, **k):
        prompts.append(list(prompt["prompt_token_ids"]))
        return add_request(request_id, prompt, params, *a, **k)

    engine.add_request = recording_add
    probe = tokenizer([r["prompt"] for r in dataset.select(range(4))], add_special_tokens=False)["input_ids"]

    def greedy() -> list[list[int]]:
        from vllm import SamplingParams

        outputs = generate([{"prompt_token_ids": ids} for ids in probe], SamplingParams(temperature=0, max_tokens=24))
        return [list(o.outputs[0].token_ids) for o in outputs]

    before = greedy()
    replayed = replay(trainer, dataset)  # on the base, which solves some prompts and not others
    prompts.clear()
    trainer.train()
    trainer.vllm_generation.sync_weights()
    after = greedy()
    history = trainer.state.log_history
    result = {
        "rollout": trainer.rollout_kind,
        "prompts": prompts,
        "rollout_stats": dict(trainer.rollout_stats),
        "logs": [{k: v for k, v in h.items() if k.startswith("trapo/") or k == "reward"} for h in history],
        "max_prompt_tokens": max(
            len(ids) for ids in tokenizer(list(dataset["prompt"]), add_special_tokens=False)["input_ids"]
        ),
        "weights_match": weights_match(trainer),
        "before": before,
        "after": after,
        "importance_sampling": trainer.args.vllm_importance_sampling_correction,
    }
    result.update(replayed)
    (out / "result.json").write_text(json.dumps(result))


def weights_match(trainer) -> bool:
    """Whether vLLM's model holds the policy's current weights (vLLM fuses q/k/v and gate/up)."""
    vllm_model = trainer.vllm_generation.llm.llm_engine.model_executor.driver_worker.model_runner.model
    ours = {k: v.detach() for k, v in trainer.model.state_dict().items()}
    theirs = dict(vllm_model.named_parameters())
    layer = "model.layers.0"
    pairs = [
        (theirs["model.embed_tokens.weight"], ours["model.embed_tokens.weight"]),
        (theirs[f"{layer}.self_attn.qkv_proj.weight"],
         torch.cat([ours[f"{layer}.self_attn.{p}_proj.weight"] for p in "qkv"])),
        (theirs[f"{layer}.mlp.gate_up_proj.weight"],
         torch.cat([ours[f"{layer}.mlp.{p}_proj.weight"] for p in ("gate", "up")])),
        (theirs[f"{layer}.self_attn.o_proj.weight"], ours[f"{layer}.self_attn.o_proj.weight"]),
    ]  # fmt: skip
    # vLLM pads the vocabulary rows of the embedding to a multiple of its tile size, and holds the weights in its
    # own dtype (bf16 on CPU for this float32 model): equal means equal once ours are cast to it.
    return all(torch.equal(a[: b.shape[0]], b.to(a.dtype)) for a, b in pairs)


def replay(trainer, dataset) -> dict:
    """One more rollout through vLLM (TRL's batched generate), then the same samples through the staged scheduler
    with a generate that replays them: the decisions depend on the samples, not on the engine."""
    from trapo.core import PAPER_SCHEDULE
    from trapo.engines import TRLBatchGenerate

    if trainer.args.method != "trapo":
        return {}
    rows = [dataset[i] for i in range(8)]
    prompt_ids = [list(ids) for ids in trainer._tokenize_prompts([r["prompt"] for r in rows])[0]]
    trainer.model.train()
    generate = TRLBatchGenerate(trainer, filler=prompt_ids[0])
    real = trainer._make_rollout(PAPER_SCHEDULE, generate, "staged").run(rows, prompt_ids)
    written: dict[tuple, list] = {}
    for x in real.samples:
        if x.continuation:
            written.setdefault(tuple(prompt_ids[x.group] + x.prefix), []).append(x.continuation)

    def replayed(contexts, max_new):
        return [written[tuple(c)].pop(0) for c in contexts], None

    again = trainer._make_rollout(PAPER_SCHEDULE, replayed, "staged").run(rows, prompt_ids)

    def key(batch):
        return [(x.group, x.stage, x.prefix, x.continuation, x.reward) for x in batch.samples]

    return {"replay_equal": key(real) == key(again), "replay_guided": real.guided_per_stage}


if __name__ == "__main__":
    sys.exit(main())
