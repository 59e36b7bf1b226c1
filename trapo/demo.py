"""`trapo demo`: TRAPO and its baselines on the built-in chain task, from one tiny local base, at equal budget.

Pipeline: warm-start a tiny base on two-operand sums (cached on disk) → for each seed and method, train from
that base for the same number of optimizer steps with the same prompts per step → evaluate greedy accuracy on
held-out problems of every tier along the way → print a table, write ``results.json`` and PNG plots.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from datasets import Dataset
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from trapo.quiet_runs import local_trainer_args, quiet_libraries, quiet_trainer
from trapo.tasks.chains import TIERS, TRAIN_TIERS, chain_reward, make_problems, to_rows, two_operand_problems
from trapo.tasks.tiny_model import build_model, build_tokenizer

DEMO_METHODS = ("trapo", "grpo", "sft", "sft-then-grpo", "luffy", "fixed-prefix", "naive-sft")
TASK_VERSION = 2  # bump when the task or the warm start changes, to invalidate cached bases


@dataclass
class DemoSettings:
    """Everything that defines a demo run; the base-model part keys the on-disk cache."""

    methods: tuple[str, ...] = DEMO_METHODS
    seeds: int = 1
    steps: int = 40
    prompts_per_step: int = 8
    num_generations: int = 8
    learning_rate: float = 3e-4  # 1e-3 collapsed GRPO within 20 steps here (docs/demo.md)
    # No entropy bonus: most groups here have zero advantage (all right or all wrong), and Adam scales the tiny
    # entropy gradient of such a batch up to a full learning-rate step, which alone collapsed GRPO (docs/demo.md).
    entropy_coef: float = 0.0
    alpha: float = 0.1  # TrSFT's trust-region bound (the paper's); trapo and fixed-prefix use it
    max_completion_length: int = 64
    train_problems: int = 600
    eval_per_tier: int = 60
    eval_every: int = 10
    # The base model and its warm start.
    hidden_size: int = 128
    num_layers: int = 3  # two layers never learned the step facts in 1000 steps; three do in ~500
    warm_steps: int = 600
    warm_lr: float = 2e-3
    warm_batch: int = 64
    output_dir: str = "trapo-demo"
    cache_dir: str = field(default_factory=lambda: os.environ.get("TRAPO_CACHE", str(Path.home() / ".cache/trapo")))

    @classmethod
    def quick(cls, **overrides) -> DemoSettings:
        """A smoke run (about 2 minutes): few steps, a short warm start, a small eval."""
        values = dict(steps=4, prompts_per_step=4, eval_per_tier=12, eval_every=2, warm_steps=200, train_problems=64)
        values.update(overrides)
        return cls(**values)

    def base_key(self) -> str:
        spec = [TASK_VERSION, self.hidden_size, self.num_layers, self.warm_steps, self.warm_lr, self.warm_batch]

        return hashlib.sha256(json.dumps(spec).encode()).hexdigest()[:12]


# ---------------------------------------------------------------- base model


def base_model_path(settings: DemoSettings, log=print) -> Path:
    """The warm-started base, built on first use and cached under ``cache_dir/demo-base-<key>``."""
    path = Path(settings.cache_dir) / f"demo-base-{settings.base_key()}"
    if (path / "done").exists():
        log(f"base model: cached at {path}")
        return path
    from trapo.methods import TRAPOSFTConfig, train_sft

    log(f"base model: warm-starting on two-operand sums ({settings.warm_steps} steps), cached for next time")
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, hidden_size=settings.hidden_size, num_layers=settings.num_layers, seed=0)
    args = TRAPOSFTConfig(
        output_dir=str(path / "_sft"),
        max_steps=settings.warm_steps,
        per_device_train_batch_size=settings.warm_batch,
        learning_rate=settings.warm_lr,
        lr_scheduler_type="constant_with_warmup",
        warmup_steps=50,
        logging_strategy="no",
        **(local_trainer_args(seed=0) | {"disable_tqdm": False}),  # HF's progress bar for this one-off phase
    )
    model = train_sft(model, tokenizer, Dataset.from_list(to_rows(two_operand_problems())), args)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    (path / "done").write_text(json.dumps(asdict(settings), default=str))
    return path


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

    def __init__(self, tokenizer, eval_rows, every, max_new_tokens, step_offset=0, progress=None):
        self.tokenizer, self.eval_rows, self.every = tokenizer, eval_rows, every
        self.max_new_tokens, self.step_offset, self.progress = max_new_tokens, step_offset, progress
        self.curve: list[tuple[int, dict]] = []
        self.eval_seconds = 0.0

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.progress is not None:
            self.progress.update(1)
        if state.global_step % self.every == 0 or state.global_step == state.max_steps:
            start = time.perf_counter()
            self.curve.append(
                (
                    state.global_step + self.step_offset,
                    evaluate(model, self.tokenizer, self.eval_rows, self.max_new_tokens),
                )
            )
            self.eval_seconds += time.perf_counter() - start


# ---------------------------------------------------------------- one method


def run_method(method: str, seed: int, settings: DemoSettings, base: Path, train_rows, eval_rows, progress) -> dict:
    """Train ``method`` from the base for ``settings.steps`` optimizer steps; return its record."""
    from trapo.methods import TRAPOSFTConfig, train_sft
    from trapo.trainer import TRAPOConfig, TRAPOTrainer

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base)
    dataset = Dataset.from_list(train_rows)
    out_dir = Path(settings.output_dir) / "runs" / f"{method}-seed{seed}"
    max_new = settings.max_completion_length
    record = {"method": method, "seed": seed, "generated_tokens": 0, "samples": 0, "guided_samples": 0}
    callbacks, log_history, start = [], [], time.perf_counter()

    def rl_phase(rl_method: str, steps: int, offset: int):
        args = TRAPOConfig(
            output_dir=str(out_dir / rl_method),
            method=rl_method,
            num_generations=settings.num_generations,
            per_device_train_batch_size=settings.prompts_per_step * settings.num_generations,
            max_steps=steps,
            learning_rate=settings.learning_rate,
            lr_scheduler_type="constant",
            max_completion_length=max_new,
            entropy_coef=settings.entropy_coef,
            alpha=settings.alpha,
            logging_steps=1,
            **local_trainer_args(seed),
        )
        cb = EvalCallback(tokenizer, eval_rows, settings.eval_every, max_new, offset, progress)
        trainer = TRAPOTrainer(
            model=model,
            reward_funcs=chain_reward,
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=[cb],
        )
        quiet_trainer(trainer)
        trainer.train()
        for key in ("generated_tokens", "samples", "guided_samples"):
            record[key] += trainer.rollout_stats[key]
        log_history.extend({**h, "step": h.get("step", 0) + offset} for h in trainer.state.log_history)
        callbacks.append(cb)

    def sft_phase(steps: int):
        args = TRAPOSFTConfig(
            output_dir=str(out_dir / "sft"),
            max_steps=steps,
            per_device_train_batch_size=settings.prompts_per_step * 2,  # both expert traces of each prompt
            learning_rate=settings.learning_rate,
            lr_scheduler_type="constant",
            logging_strategy="no",
            **local_trainer_args(seed),
        )
        cb = EvalCallback(tokenizer, eval_rows, settings.eval_every, max_new, 0, progress)
        train_sft(model, tokenizer, dataset, args, callbacks=[cb])
        callbacks.append(cb)

    if method == "sft":
        sft_phase(settings.steps)
    elif method == "sft-then-grpo":
        half = settings.steps // 2
        sft_phase(half)
        rl_phase("grpo", settings.steps - half, half)
    else:
        rl_phase(method, settings.steps, 0)

    eval_seconds = sum(cb.eval_seconds for cb in callbacks)
    record["wall_seconds"] = time.perf_counter() - start - eval_seconds
    record["curve"] = [(step, acc) for cb in callbacks for step, acc in cb.curve]
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
    base = base_model_path(settings, log)
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


def summarize(records: list[dict]) -> dict:
    """Mean and std over seeds of every final metric, per method."""
    summary: dict[str, dict] = {}
    for method in dict.fromkeys(r["method"] for r in records):
        runs = [r for r in records if r["method"] == method]
        metrics = {k: [r["final"][k] for r in runs] for k in runs[0]["final"]}
        metrics.update({k: [r[k] for r in runs] for k in ("wall_seconds", "generated_tokens", "guided_share")})
        summary[method] = {
            k: {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0}
            for k, v in metrics.items()
        }
    return summary


def format_table(results: dict) -> str:
    summary, base = results["summary"], results["base"]
    tiers = [k for k in base if k.startswith("tier_")]
    head = ["method", *[f"{t.replace('tier_', '')} ops" for t in tiers], "overall", "wall s", "tokens gen.", "guided"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines.append("| base | " + " | ".join(f"{base[k]:.2f}" for k in [*tiers, "overall"]) + " | | | |")

    def cell(m, k, fmt="{:.2f}"):
        s = m[k]
        return fmt.format(s["mean"]) + (f" ± {fmt.format(s['std'])}" if s["std"] else "")

    for method, m in summary.items():
        cells = [cell(m, k) for k in [*tiers, "overall"]]
        cells += [
            cell(m, "wall_seconds", "{:.0f}"),
            cell(m, "generated_tokens", "{:.0f}"),
            f"{m['guided_share']['mean']:.0%}",
        ]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: dict, out: Path) -> None:
    """accuracy.png: held-out accuracy vs step per method; guidance.png: trapo's guidance levels over training."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = results["runs"]
    tiers = [k for k in results["base"] if k.startswith("tier_")]
    fig, axes = plt.subplots(1, len(tiers) + 1, figsize=(4 * (len(tiers) + 1), 3.5), sharey=True)
    for ax, key in zip(axes, [*tiers, "overall"], strict=True):
        for method in dict.fromkeys(r["method"] for r in runs):
            curves = [
                [(0, results["base"][key])] + [(s, a[key]) for s, a in r["curve"]]
                for r in runs
                if r["method"] == method
            ]
            steps = [s for s, _ in curves[0]]
            mean = [statistics.fmean(c[i][1] for c in curves) for i in range(len(steps))]
            ax.plot(steps, mean, marker="o", ms=3, label=method, lw=2.5 if method == "trapo" else 1.2)
        ax.set_title(key.replace("tier_", "") + (" operands" if key != "overall" else ""))
        ax.set_xlabel("optimizer step")
    axes[0].set_ylabel("held-out greedy accuracy")
    axes[-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    trapo_runs = [r for r in runs if r["method"] == "trapo" and r["level_share"]]
    if trapo_runs:
        shares = trapo_runs[0]["level_share"]
        steps = [s["step"] for s in shares]
        levels = sorted({k for s in shares for k in s if k != "step"}, key=int)
        labels = {"0": "unguided", "1": "25% prefix", "2": "50% prefix", "3": "full trace"}
        ax.stackplot(
            steps,
            *[[s.get(k, 0.0) for s in shares] for k in levels],
            labels=[labels.get(k, f"level {k}") for k in levels],
        )
        ax.legend(fontsize=7, loc="upper right")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("share of prompts (deepest guidance)")
    ax.set_title("TRAPO guidance over training")
    fig.tight_layout()
    fig.savefig(out / "guidance.png", dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------- CLI


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--methods", default=",".join(DEMO_METHODS), help="comma-separated subset of " + ", ".join(DEMO_METHODS)
    )
    parser.add_argument("--seeds", type=int, default=1, help="seeds per method; the table shows mean ± std")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per method (equal budget)")
    parser.add_argument("--learning-rate", type=float, default=None, help="learning rate of every method")
    parser.add_argument("--alpha", type=float, default=None, help="TrSFT's α for the methods that use TrSFT")
    parser.add_argument("--quick", action="store_true", help="smoke run: a few steps of everything (~2 min)")
    parser.add_argument("--output-dir", default="trapo-demo", help="where results.json, results.md and plots go")
    parser.add_argument("--cache-dir", default=None, help="where the warm-started base is cached ($TRAPO_CACHE)")


def run_demo(args: argparse.Namespace) -> int:
    overrides = {
        "methods": tuple(m.strip() for m in args.methods.split(",") if m.strip()),
        "seeds": args.seeds,
        "output_dir": args.output_dir,
    }
    if args.steps is not None:
        overrides["steps"] = args.steps
    if args.learning_rate is not None:
        overrides["learning_rate"] = args.learning_rate
    if args.alpha is not None:
        overrides["alpha"] = args.alpha
    if args.cache_dir is not None:
        overrides["cache_dir"] = args.cache_dir
    settings = DemoSettings.quick(**overrides) if args.quick else DemoSettings(**overrides)
    quiet_libraries()
    run(settings)
    return 0
