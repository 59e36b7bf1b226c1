"""Running `trapo demo`: every method from one tiny local base, at equal budget, evaluated along the way.

Pipeline: the cached base (`trapo.tasks.base`) → for each seed and method, `trapo.recipes.train_method` for the same
number of optimizer steps with the same prompts per step → greedy accuracy on held-out problems of every tier every
``eval_every`` steps → `trapo.demo.report` writes the table, ``results.json`` and the plots.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import torch
from datasets import Dataset
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from trapo.demo.report import format_table, plot, summarize
from trapo.demo.settings import DEMO_METHODS, DemoSettings
from trapo.local_runs import local_trainer_args, quiet_trainer
from trapo.tasks.base import base_model_path
from trapo.tasks.chains import TIERS, TRAIN_TIERS, chain_reward, make_problems, to_rows

# ---------------------------------------------------------------- evaluation


def evaluate(model, tokenizer, eval_rows: list[dict], max_new_tokens: int) -> dict[str, float]:
    """Greedy accuracy per tier (``tier_2`` …) and ``overall`` (the mean over tiers) on held-out problems."""
    was_training = model.training
    model.eval()
    tokenizer.padding_side = "left"
    prompts = [r["prompt"] for r in eval_rows]
    enc = tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    texts = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    correct = chain_reward(texts, prompts)
    model.train(was_training)
    by_tier: dict[int, list[float]] = {}
    for row, c in zip(eval_rows, correct, strict=True):
        by_tier.setdefault(row["tier"], []).append(c)
    result = {f"tier_{t}": sum(v) / len(v) for t, v in sorted(by_tier.items())}
    result["overall"] = sum(result.values()) / len(result)
    return result


class EvalCallback(TrainerCallback):
    """Evaluates every ``every`` optimizer steps; the time spent here is excluded from the method's wall time."""

    def __init__(self, tokenizer, eval_rows, every, max_new_tokens, total_steps, progress=None):
        self.tokenizer, self.eval_rows, self.every = tokenizer, eval_rows, every
        self.max_new_tokens, self.total_steps, self.progress = max_new_tokens, total_steps, progress
        self.step = 0  # optimizer steps over every phase of the method (sft-then-grpo has two trainers)
        self.curve: list[tuple[int, dict]] = []
        self.eval_seconds = 0.0

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.step += 1
        if self.progress is not None:
            self.progress.update(1)
        if self.step % self.every == 0 or self.step == self.total_steps:
            start = time.perf_counter()
            self.curve.append((self.step, evaluate(model, self.tokenizer, self.eval_rows, self.max_new_tokens)))
            self.eval_seconds += time.perf_counter() - start


# ---------------------------------------------------------------- one method


def method_args(method: str, seed: int, settings: DemoSettings, out_dir: Path) -> dict:
    """The `train_method` configs of ``method`` at the demo's budget: ``settings.steps`` optimizer steps in all,
    ``prompts_per_step`` prompts per step (SFT: both expert traces of each prompt), one learning rate."""
    from trapo.config import TRAPOConfig
    from trapo.recipes import phases, rl_method
    from trapo.sft import TRAPOSFTConfig

    steps = phases(method)
    sft_steps = settings.steps if steps == ("sft",) else settings.steps // 2 if "sft" in steps else 0
    configs = {}
    if "sft" in steps:
        configs["sft_args"] = TRAPOSFTConfig(
            output_dir=str(out_dir / "sft"),
            max_steps=sft_steps,
            per_device_train_batch_size=settings.prompts_per_step * 2,
            learning_rate=settings.learning_rate,
            lr_scheduler_type="constant",
            logging_strategy="no",
            **local_trainer_args(seed),
        )
    if "rl" in steps:
        configs["rl_args"] = TRAPOConfig(
            output_dir=str(out_dir / "rl"),
            method=rl_method(method),
            num_generations=settings.num_generations,
            per_device_train_batch_size=settings.prompts_per_step * settings.num_generations,
            max_steps=settings.steps - sft_steps,
            learning_rate=settings.learning_rate,
            lr_scheduler_type="constant",
            max_completion_length=settings.max_completion_length,
            entropy_coef=settings.entropy_coef,
            alpha=settings.alpha,
            logging_steps=1,
            **local_trainer_args(seed),
        )
    return configs


def run_method(method: str, seed: int, settings: DemoSettings, base: Path, train_rows, eval_rows, progress) -> dict:
    """Train ``method`` from the base for ``settings.steps`` optimizer steps; return its record."""
    from trapo.recipes import train_method

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base)
    out_dir = Path(settings.output_dir) / "runs" / f"{method}-seed{seed}"
    record = {"method": method, "seed": seed, "generated_tokens": 0, "samples": 0, "guided_samples": 0}
    log_history: list[dict] = []
    evaluator = EvalCallback(tokenizer, eval_rows, settings.eval_every, settings.max_completion_length,
                             settings.steps, progress)  # fmt: skip
    offset = {"steps": 0}

    def on_phase_end(phase: str, trainer) -> None:
        quiet_trainer(trainer)
        if phase == "rl":
            for key in ("generated_tokens", "samples", "guided_samples"):
                record[key] += trainer.rollout_stats[key]
            log_history.extend({**h, "step": h.get("step", 0) + offset["steps"]} for h in trainer.state.log_history)
        offset["steps"] += trainer.state.global_step

    start = time.perf_counter()
    train_method(
        method,
        model,
        tokenizer,
        Dataset.from_list(train_rows),
        chain_reward,
        callbacks=[evaluator],
        on_phase_end=on_phase_end,
        **method_args(method, seed, settings, out_dir),
    )
    record["wall_seconds"] = time.perf_counter() - start - evaluator.eval_seconds
    record["curve"] = evaluator.curve
    record["final"] = record["curve"][-1][1]
    record["guided_share"] = record["guided_samples"] / record["samples"] if record["samples"] else 0.0
    record["level_share"] = [
        {"step": h["step"], **{k.rsplit("/", 1)[1]: v for k, v in h.items() if k.startswith("trapo/level_frac/")}}
        for h in log_history
        if any(k.startswith("trapo/level_frac/") for k in h)
    ]
    return record


# ---------------------------------------------------------------- the whole demo


def run(settings: DemoSettings, log=print) -> dict:
    """Run every method for every seed; write results.json, the table and the plots; return the results."""
    unknown = [m for m in settings.methods if m not in DEMO_METHODS]
    if unknown:
        raise ValueError(f"unknown demo method(s) {unknown}; choose from {', '.join(DEMO_METHODS)}")
    # One thread: a sub-million-parameter model gains nothing from more, and oversubscribed cores slow it 10-100x.
    torch.set_num_threads(1)
    out = Path(settings.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    base = base_model_path(settings.base, settings.cache_dir, log)
    train_rows = to_rows(make_problems(settings.train_problems, TRAIN_TIERS, "train", seed=0))
    eval_rows = to_rows(make_problems(settings.eval_per_tier * len(TIERS), TIERS, "eval", seed=0))
    base_acc = evaluate(
        AutoModelForCausalLM.from_pretrained(base),
        AutoTokenizer.from_pretrained(base),
        eval_rows,
        settings.max_completion_length,
    )
    log("base model held-out accuracy: " + ", ".join(f"{k} {v:.2f}" for k, v in base_acc.items()))

    records = []
    total = settings.seeds * sum(settings.steps for _ in settings.methods)
    with tqdm(total=total, desc="training", unit="step") as progress:
        for seed in range(settings.seeds):
            for method in settings.methods:
                progress.set_postfix_str(f"{method} seed {seed}")
                records.append(run_method(method, seed, settings, base, train_rows, eval_rows, progress))
    results = {"settings": asdict(settings), "base": base_acc, "runs": records, "summary": summarize(records)}
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    table = format_table(results)
    (out / "results.md").write_text(table + "\n")
    plot(results, out)
    log("\n" + table)
    log(
        f"\nresults: {out / 'results.json'}, table: {out / 'results.md'}, plots: {out / 'accuracy.png'}, "
        f"{out / 'guidance.png'}"
    )
    return results
