"""What a `trapo bench` run is (`BenchSettings`) and what it trains: the model (the demo's tiny base, or random
weights shaped by a config) and the reward (the task's verifier, or a controlled random one)."""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass, field

from trapo.recipes import RL_METHODS
from trapo.tasks.base import base_model_path, default_cache_dir

BENCH_METHODS = (*RL_METHODS, "trl-grpo")  # trl-grpo: TRL's own GRPOTrainer, the reference for `grpo`


def split_variant(name: str) -> tuple[str, str | None]:
    """``"trapo@pipelined"`` → ``("trapo", "pipelined")``: a method measured with a given rollout (``grpo@pipelined``
    is GRPO generating through the same engine as TRAPO's pipelined rollout); a plain name keeps the setting's."""
    method, _, rollout = name.partition("@")
    return method, rollout or None


@dataclass
class BenchSettings:
    """One benchmark run. ``model='tiny'``: the demo's warm-started base on CPU (it solves 2-operand chains and fails
    longer ones, so guidance fires on part of the prompts); ``model='large'``: random weights from a config."""

    methods: tuple[str, ...] = ("trapo", "grpo")
    model: str = "tiny"
    reps: int = 5
    steps: int = 2  # timed optimizer steps per repetition
    warmup_steps: int = 1  # untimed steps first (lazy initialisation, optimizer state)
    prompts_per_step: int = 8
    num_generations: int = 8
    max_completion_length: int = 64
    reward: str = "chain"  # chain (the task's verifier) | random:P (1 with probability P, seeded by the text)
    isolate: bool = True  # one worker process per method
    seed: int = 0
    rollout: str | None = None  # TRAPOConfig.rollout for TRAPO (None: the trainer's default)
    threads: int = 2
    # The large model (GPU): random weights, from a Llama of this size or from a transformers config (large_config:
    # a config.json, a model folder or a Hub name), so the model is shaped like a real one.
    large_hidden: int = 1024
    large_layers: int = 12
    large_heads: int = 16
    large_config: str | None = None
    grad_accum: int = 1  # micro-batches per optimizer step (gradient accumulation); one generation per step
    device: str = "auto"  # auto | cpu | cuda (tiny always runs on CPU unless set to cuda)
    cache_dir: str = field(default_factory=default_cache_dir)
    train_problems: int = 600

    def __post_init__(self):
        from trapo.rollout import ROLLOUT_CHOICES

        def known(name: str) -> bool:
            base, rollout = split_variant(name)
            return base in BENCH_METHODS and (rollout is None or (rollout in ROLLOUT_CHOICES and base != "trl-grpo"))

        unknown = [m for m in self.methods if not known(m)]
        if unknown:
            raise ValueError(
                f"unknown bench method(s) {unknown}; choose from {', '.join(BENCH_METHODS)}, optionally with a rollout "
                f"(trapo@pipelined; rollouts {', '.join(ROLLOUT_CHOICES)})"
            )
        if self.model not in ("tiny", "large"):
            raise ValueError(f"model must be 'tiny' or 'large', got {self.model!r}")
        if self.reps < 1 or self.steps < 1 or self.warmup_steps < 0:
            raise ValueError("reps and steps must be ≥ 1, warmup_steps ≥ 0")
        rows = self.prompts_per_step * self.num_generations
        if self.grad_accum < 1 or rows % self.grad_accum:
            raise ValueError(f"grad_accum must divide the {rows} samples of a step, got {self.grad_accum}")
        make_reward(self.reward)  # validates


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def make_reward(spec: str):
    """``chain``: the chain task's verifier; ``random:P``: 1.0 with probability P, a deterministic hash of prompt and
    completion (so TRAPO's guidance fires at a controlled rate even on a model that solves nothing)."""
    if spec == "chain":
        from trapo.tasks.chains import chain_reward

        return chain_reward
    if spec.startswith("random:"):
        try:
            p = float(spec.split(":", 1)[1])
        except ValueError:
            p = -1.0
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"reward random:P needs 0 ≤ P ≤ 1, got {spec!r}")

        def controlled_reward(completions, prompts, **kwargs):
            out = []
            for c, q in zip(completions, prompts, strict=True):
                digest = hashlib.sha256(f"{q}\x00{c}".encode()).digest()
                out.append(1.0 if int.from_bytes(digest[:8], "big") / 2**64 < p else 0.0)
            return out

        return controlled_reward
    raise ValueError(f"reward must be 'chain' or 'random:P', got {spec!r}")


def prepare_bench_model(settings: BenchSettings, log=None) -> None:
    """Build (or find) what `load_bench_model` reads: the demo's cached base for ``tiny`` (nothing for ``large``)."""
    if settings.model == "tiny":
        base_model_path(cache_dir=settings.cache_dir, log=log or _log)


def load_bench_model(settings: BenchSettings):
    """(tokenizer, model): the demo's cached warm-started base (tiny) or a random-weight model (large)."""
    from trapo.tasks.tiny_model import build_model, build_tokenizer

    if settings.model == "tiny":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = base_model_path(cache_dir=settings.cache_dir, log=_log)
        return AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path)
    if settings.large_config:
        return _model_from_config(settings.large_config, settings.max_completion_length)
    tokenizer = build_tokenizer()
    model = build_model(
        tokenizer,
        hidden_size=settings.large_hidden,
        num_layers=settings.large_layers,
        num_heads=settings.large_heads,
        max_positions=max(1024, 2 * settings.max_completion_length + 64),
        seed=0,
    )
    return tokenizer, model


def _model_from_config(name_or_path: str, max_completion_length: int):
    """Random weights shaped by a transformers config (its vocabulary included: the char tokenizer is padded with
    unused tokens to the config's size, so the LM head costs what it costs in the real model)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from trapo.tasks.tiny_model import build_tokenizer

    config = AutoConfig.from_pretrained(name_or_path)  # a .json file, a model folder or a Hub name
    tokenizer = build_tokenizer(vocab_size=config.vocab_size)
    config.pad_token_id, config.eos_token_id, config.bos_token_id = tokenizer.pad_token_id, tokenizer.eos_token_id, None
    config.max_position_embeddings = max(getattr(config, "max_position_embeddings", 0), 2 * max_completion_length + 64)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.pad_token_id, model.generation_config.eos_token_id = (
        config.pad_token_id,
        config.eos_token_id,
    )
    model.generation_config.bos_token_id = None
    return tokenizer, model
