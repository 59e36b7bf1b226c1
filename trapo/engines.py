"""Generation engines behind the rollout's ``generate`` (docs/method.md, "Where TRAPO meets TRL").

`TRLBatchGenerate` is the batched one: TRL's own ``_generate_single_turn`` (HF ``generate`` or vLLM, whichever the
trainer was configured with), one call per batch of contexts, with the new-token cap the rollout asks for.
"""

from __future__ import annotations

import contextlib

import torch


class TRLBatchGenerate:
    """``generate(contexts, max_new) -> (continuations, logprobs or None)`` through a `GRPOTrainer`.

    Collective generation (vLLM server, ZeRO-3 parameter gathers) needs the same number of calls, requests and
    sampling parameters on every process, so the count and the cap are all-reduced and a short batch is padded with
    throw-away copies of ``filler`` (a context of this process's own). ``calls`` counts the engine calls made,
    padded ones included: every process makes the same number.
    """

    def __init__(self, trainer, filler: list[int]):
        self.trainer, self.filler = trainer, filler
        self.calls = 0

    def __call__(self, contexts: list[list[int]], max_new: int):
        trainer = self.trainer
        count = len(contexts)
        if trainer.accelerator.num_processes > 1:
            gathered = trainer.accelerator.gather(torch.tensor([[count, max_new]], device=trainer.accelerator.device))
            count, max_new = (int(x) for x in gathered.max(dim=0).values)
        if count == 0:
            return [], None
        padding = [self.filler] * (count - len(contexts))
        with max_new_tokens(trainer, max_new):
            completion_ids, logprobs = trainer._generate_single_turn(contexts + padding, None, {}, 1)
        self.calls += 1
        n = len(contexts)
        return [list(c) for c in completion_ids[:n]], (None if logprobs is None else [list(lp) for lp in logprobs[:n]])


@contextlib.contextmanager
def max_new_tokens(trainer, cap: int):
    """Temporarily cap new tokens in a `GRPOTrainer`'s generation settings (HF ``generate`` and vLLM)."""
    targets = []
    if getattr(trainer, "generation_config", None) is not None:
        targets.append((trainer.generation_config, "max_new_tokens"))
    if isinstance(getattr(trainer, "generation_kwargs", None), dict) and "max_new_tokens" in trainer.generation_kwargs:
        targets.append((trainer.generation_kwargs, "max_new_tokens"))
    if trainer.use_vllm and getattr(trainer, "vllm_generation", None) is not None:
        targets.append((trainer.vllm_generation, "max_completion_length"))

    def get(obj, key):
        return obj[key] if isinstance(obj, dict) else getattr(obj, key)

    def put(obj, key, value):
        if isinstance(obj, dict):
            obj[key] = value
        else:
            setattr(obj, key, value)

    saved = [(obj, key, get(obj, key)) for obj, key in targets]
    for obj, key, _ in saved:
        put(obj, key, cap)
    try:
        yield
    finally:
        for obj, key, value in saved:
            put(obj, key, value)
