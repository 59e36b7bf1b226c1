"""Held-out evaluation of the demo's models: accuracy per tier, greedy or sampled, and which problems were solved.

The held-out rows come from the ``valid`` split (every choice is made on it) or the ``test`` split (read once, for a
published run), `eval_rows`. Every evaluation keeps per-problem results, so a comparison can be bootstrapped over
problems as well as seeds (`trapo.demo.stats`).
"""

from __future__ import annotations

import time

import torch
from transformers import TrainerCallback

from trapo.tasks.chains import HARD_TIERS, TIERS, chain_reward, make_problems, to_rows


def eval_rows(settings) -> list[dict]:
    """The held-out rows of ``settings.eval_split``: ``eval_hard`` problems of each hard tier, ``eval_per_tier`` of
    the others (a tier with fewer in the split gives all it has), written by the settings' expert."""
    problems = []
    for tier in TIERS:
        count = settings.eval_hard if tier in HARD_TIERS else settings.eval_per_tier
        problems += make_problems(count, (tier,), settings.eval_split, seed=0)
    return to_rows(problems, settings.expert)


@torch.no_grad()
def evaluate_problems(
    model, tokenizer, rows: list[dict], max_new_tokens: int, samples: int = 0, temperature: float = 0.6
) -> tuple[dict[str, float], list[int]]:
    """Accuracy per tier (``tier_2`` …), ``hard`` (mean over the hard tiers) and ``overall`` (over all tiers), and
    per problem the number of correct answers.

    ``samples=0``: one greedy answer per problem. ``samples=k``: the paper's protocol (avg@k): k answers sampled at
    ``temperature`` per problem, accuracy averaged over them.
    """
    was_training = model.training
    model.eval()
    tokenizer.padding_side = "left"
    prompts = [r["prompt"] for r in rows]
    enc = tokenizer(prompts, return_tensors="pt", padding=True).to(model.device)
    sampling = (
        {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0, "num_return_sequences": samples}
        if samples
        else {"do_sample": False}
    )
    out = model.generate(
        **enc,
        max_new_tokens=max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **sampling,
    )
    texts = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    repeats = max(samples, 1)
    correct = chain_reward(texts, [p for p in prompts for _ in range(repeats)])
    model.train(was_training)
    counts = [int(sum(correct[i * repeats : (i + 1) * repeats])) for i in range(len(rows))]
    by_tier: dict[int, list[float]] = {}
    for row, count in zip(rows, counts, strict=True):
        by_tier.setdefault(row["tier"], []).append(count / repeats)
    result = {f"tier_{t}": sum(v) / len(v) for t, v in sorted(by_tier.items())}
    hard = [result[f"tier_{t}"] for t in HARD_TIERS if f"tier_{t}" in result]
    result["hard"] = sum(hard) / len(hard) if hard else float("nan")
    result["overall"] = sum(result[f"tier_{t}"] for t in by_tier) / len(by_tier)
    return result, counts


def evaluate(model, tokenizer, rows: list[dict], max_new_tokens: int, samples: int = 0, temperature: float = 0.6):
    """`evaluate_problems`' accuracies only."""
    return evaluate_problems(model, tokenizer, rows, max_new_tokens, samples, temperature)[0]


def evaluate_sampled(model, tokenizer, rows: list[dict], settings, seed: int) -> tuple[dict[str, float], list[int]]:
    """`evaluate_problems` under the paper's protocol (avg@k at temperature 0.6), seeded, keys prefixed
    ``sampled_``; nothing when ``settings.sampled_eval_k`` is 0."""
    if not settings.sampled_eval_k:
        return {}, []
    torch.manual_seed(seed)
    result, counts = evaluate_problems(
        model,
        tokenizer,
        rows,
        settings.max_completion_length,
        settings.sampled_eval_k,
        settings.sampled_eval_temperature,
    )
    return {f"sampled_{k}": v for k, v in result.items()}, counts


class EvalCallback(TrainerCallback):
    """Evaluates every ``every`` optimizer steps (greedy) and keeps the last evaluation's per-problem results; the
    time spent here is excluded from the method's wall time."""

    def __init__(self, tokenizer, rows, every, max_new_tokens, total_steps, progress=None):
        self.tokenizer, self.rows, self.every = tokenizer, rows, every
        self.max_new_tokens, self.total_steps, self.progress = max_new_tokens, total_steps, progress
        self.step = 0  # optimizer steps over every phase of the method (sft-then-grpo has two trainers)
        self.curve: list[tuple[int, dict]] = []
        self.last_counts: list[int] = []
        self.eval_seconds = 0.0

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.step += 1
        if self.progress is not None:
            self.progress(1)
        if self.step % self.every == 0 or self.step == self.total_steps:
            start = time.perf_counter()
            accuracy, self.last_counts = evaluate_problems(model, self.tokenizer, self.rows, self.max_new_tokens)
            self.curve.append((self.step, accuracy))
            self.eval_seconds += time.perf_counter() - start

    def last_mean(self, n: int = 3) -> dict[str, float]:
        """The mean of the last ``n`` evaluations, per key: steadier than the final one alone."""
        points = [accuracy for _, accuracy in self.curve[-n:]]
        return {k: sum(p[k] for p in points) / len(points) for k in points[0]} if points else {}
