"""Generation backends for evaluation: vLLM when installed, batched Hugging Face ``generate`` otherwise.

Both take already-rendered prompt strings (the chat template is applied once, by the harness, so both backends see
the same tokens) and return ``n`` completions per prompt. Sampling matches vLLM's semantics in both: temperature and
top-p only (no top-k, no repetition penalty, whatever the model's ``generation_config.json`` says); temperature 0
means greedy.
"""

from __future__ import annotations

import importlib.util
from typing import Protocol, runtime_checkable

import torch
from tqdm.auto import tqdm


@runtime_checkable
class GenerationBackend(Protocol):
    """What the evaluation harness needs from a generator."""

    def generate(
        self, prompts: list[str], n: int, temperature: float, top_p: float, max_tokens: int, seed: int
    ) -> list[list[str]]:
        """``n`` completions (text after the prompt, special tokens removed) for each prompt, in prompt order."""
        ...


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def _eos_ids(model, tokenizer) -> list[int]:
    ids = model.generation_config.eos_token_id
    ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


class HFBackend:
    """Batched ``model.generate``: every (prompt, sample) pair is one row; rows are sorted by length to pad less.

    ``batch_size`` is in sequences. Each batch is seeded with ``seed + batch index``, so a run is reproducible on
    the same hardware and batch size.
    """

    def __init__(self, model, tokenizer, batch_size: int = 32, show_progress: bool = True):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.batch_size = batch_size
        self.show_progress = show_progress

    @classmethod
    def from_pretrained(cls, path: str, dtype: str = "auto", device: str | None = None, **kwargs) -> HFBackend:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype).to(device)
        return cls(model, AutoTokenizer.from_pretrained(path), **kwargs)

    @torch.no_grad()
    def generate(self, prompts, n, temperature, top_p, max_tokens, seed):
        from transformers import GenerationConfig

        tok = self.tokenizer
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else _eos_ids(self.model, tok)[0]
        sample = temperature > 0
        config = GenerationConfig(
            do_sample=sample,
            temperature=temperature if sample else None,
            top_p=top_p if sample else None,
            top_k=0 if sample else None,
            max_new_tokens=max_tokens,
            eos_token_id=_eos_ids(self.model, tok),
            pad_token_id=pad_id,
        )
        encoded = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
        rows = sorted(((i, j) for i in range(len(prompts)) for j in range(n)), key=lambda r: -len(encoded[r[0]]))
        out: list[list[str]] = [[""] * n for _ in prompts]
        device = self.model.device
        batches = range(0, len(rows), self.batch_size)
        for b, start in enumerate(tqdm(batches, desc="generate", unit="batch", disable=not self.show_progress)):
            batch = rows[start : start + self.batch_size]
            width = max(len(encoded[i]) for i, _ in batch)
            ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for r, (i, _) in enumerate(batch):  # left padding: generation continues right after each prompt
                ids[r, width - len(encoded[i]) :] = torch.tensor(encoded[i])
                mask[r, width - len(encoded[i]) :] = 1
            torch.manual_seed(seed + b)
            generated = self.model.generate(
                input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config
            )
            texts = tok.batch_decode(generated[:, width:], skip_special_tokens=True)
            for (i, j), text in zip(batch, texts, strict=True):
                out[i][j] = text
        return out


class VLLMBackend:
    """vLLM offline inference (imported lazily). Prompts go in as token ids, so vLLM adds no special tokens."""

    def __init__(
        self,
        path: str,
        tokenizer=None,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.9,
        max_model_len: int | None = None,
        dtype: str = "auto",
        seed: int = 0,
    ):
        if not vllm_available():
            raise ImportError("vLLM is not installed: `pip install -e '.[vllm]'`, or use --backend hf")
        from transformers import AutoTokenizer
        from vllm import LLM

        self.tokenizer = tokenizer or AutoTokenizer.from_pretrained(path)
        self.llm = LLM(
            model=path,
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            dtype=dtype,
            seed=seed,
        )

    def generate(self, prompts, n, temperature, top_p, max_tokens, seed):
        from vllm import SamplingParams

        params = SamplingParams(n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed)
        requests = [{"prompt_token_ids": self.tokenizer(p, add_special_tokens=False)["input_ids"]} for p in prompts]
        outputs = self.llm.generate(requests, params, use_tqdm=True)
        return [[o.text for o in output.outputs] for output in outputs]
