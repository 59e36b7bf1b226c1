"""Running `trapo demo`: every method from one tiny local base, at equal budget, evaluated along the way.

Pipeline: the cached base (`trapo.tasks.base`) and its regime (pass@8 alone / with a prefix, per tier) → for each
seed and method, `trapo.recipes.train_method` for the same number of optimizer steps with the same prompts per step,
greedy accuracy on held-out problems of every tier every ``eval_every`` steps → `trapo.demo.report` writes the
table, ``results.json`` and the plots. Runs go to ``settings.workers`` processes (one thread each), because a
sub-million-parameter model gains nothing from a second thread but a second core trains a second method.
"""

from __future__ import annotations

import functools
import json
import multiprocessing as mp
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import TrainerCallback

from trapo.demo.report import format_results, plot, summarize
from trapo.demo.settings import TRAPO_SWEEPABLE, DemoSettings
from trapo.tasks.base import base_model_path, base_record
from trapo.tasks.chains import HARD_TIERS, TIERS, TRAIN_TIERS, chain_reward, make_problems, to_rows

# ---------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(
    model, tokenizer, eval_rows: list[dict], max_new_tokens: int, samples: int = 0, temperature: float = 0.6
) -> dict[str, float]:
    """Accuracy per tier (``tier_2`` …), ``hard`` (mean over the hard tiers) and ``overall`` (over all tiers).

    ``samples=0``: one greedy answer per problem. ``samples=k``: the paper's protocol (avg@k): k answers sampled at
    ``temperature`` per problem, accuracy averaged over them.
    """
    was_training = model.training
    model.eval()
    tokenizer.padding_side = "left"
    prompts = [r["prompt"] for r in eval_rows]
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
    by_tier: dict[int, list[float]] = {}
    for i, c in enumerate(correct):
        by_tier.setdefault(eval_rows[i // repeats]["tier"], []).append(c)
    result = {f"tier_{t}": sum(v) / len(v) for t, v in sorted(by_tier.items())}
    hard = [result[f"tier_{t}"] for t in HARD_TIERS if f"tier_{t}" in result]
    result["hard"] = sum(hard) / len(hard) if hard else float("nan")
    result["overall"] = sum(result[f"tier_{t}"] for t in by_tier) / len(by_tier)
    return result


def evaluate_sampled(model, tokenizer, eval_rows: list[dict], settings: DemoSettings, seed: int) -> dict[str, float]:
    """`evaluate` under the paper's protocol (avg@k at temperature 0.6), seeded, keys prefixed ``sampled_``; nothing
    when ``settings.sampled_eval_k`` is 0."""
    if not settings.sampled_eval_k:
        return {}
    torch.manual_seed(seed)
    result = evaluate(
        model,
        tokenizer,
        eval_rows,
        settings.max_completion_length,
        settings.sampled_eval_k,
        settings.sampled_eval_temperature,
    )
    return {f"sampled_{k}": v for k, v in result.items()}


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
            self.progress(1)
        if self.step % self.every == 0 or self.step == self.total_steps:
            start = time.perf_counter()
            self.curve.append((self.step, evaluate(model, self.tokenizer, self.eval_rows, self.max_new_tokens)))
            self.eval_seconds += time.perf_counter() - start


# ---------------------------------------------------------------- one method


def method_args(method: str, seed: int, settings: DemoSettings, out_dir: Path, overrides: dict | None = None) -> dict:
    """The `train_method` configs of ``method`` at the demo's budget: ``settings.steps`` optimizer steps in all,
    ``prompts_per_step`` prompts per step, one learning rate. ``sft-then-grpo`` splits the steps half and half."""
    from trapo.config import TRAPOConfig
    from trapo.local_runs import local_trainer_args
    from trapo.recipes import phases, rl_method
    from trapo.sft import TRAPOSFTConfig

    steps = phases(method)
    sft_steps = settings.steps if steps == ("sft",) else settings.steps // 2 if "sft" in steps else 0
    local = local_trainer_args(seed, cuda=settings.device == "cuda")
    configs = {}
    if "sft" in steps:
        configs["sft_args"] = TRAPOSFTConfig(
            output_dir=str(out_dir / "sft"),
            max_steps=sft_steps,
            per_device_train_batch_size=settings.prompts_per_step,
            max_expert_traces=1,  # the task's two traces are the same derivation
            learning_rate=settings.learning_rate,
            lr_scheduler_type="constant_with_warmup",
            warmup_steps=settings.warmup_steps,
            logging_strategy="no",
            **local,
        )
    if "rl" in steps:
        values = dict(
            output_dir=str(out_dir / "rl"),
            method=rl_method(method),
            num_generations=settings.num_generations,
            per_device_train_batch_size=settings.prompts_per_step * settings.num_generations,
            max_steps=settings.steps - sft_steps,
            learning_rate=settings.learning_rate,
            lr_scheduler_type="constant_with_warmup",
            warmup_steps=settings.warmup_steps,
            max_completion_length=settings.max_completion_length,
            entropy_coef=settings.entropy_coef,
            alpha=settings.alpha,
            logging_steps=1,
            **local,
        )
        trapo_overrides = {k: v for k, v in (overrides or {}).items() if k in TRAPO_SWEEPABLE}
        configs["rl_args"] = TRAPOConfig(**{**values, **trapo_overrides})  # a sweep's value wins
    return configs


def run_method(
    method: str, seed: int, settings: DemoSettings, base: Path, train_rows, eval_rows, progress=None, overrides=None
) -> dict:
    """Train ``method`` from the base for ``settings.steps`` optimizer steps; return its record."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trapo.local_runs import quiet_trainer
    from trapo.recipes import train_method

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base).to(settings.device)
    label = method + "".join(f" {k}={v:g}" for k, v in (overrides or {}).items())
    out_dir = Path(settings.output_dir) / "runs" / f"{label.replace(' ', '-')}-seed{seed}"
    record = {"method": label, "base_method": method, "seed": seed, "overrides": overrides or {}}
    record |= {"generated_tokens": 0, "samples": 0}
    record["guided_samples"] = 0
    log_history: list[dict] = []
    evaluator = EvalCallback(
        tokenizer, eval_rows, settings.eval_every, settings.max_completion_length, settings.steps, progress
    )
    offset = {"steps": 0}

    def on_phase_end(phase: str, trainer) -> None:
        if phase == "rl":
            for key in ("generated_tokens", "samples", "guided_samples"):
                record[key] += trainer.rollout_stats[key]
            log_history.extend({**h, "step": h.get("step", 0) + offset["steps"]} for h in trainer.state.log_history)
        offset["steps"] += trainer.state.global_step

    start = time.perf_counter()
    model = train_method(
        method,
        model,
        tokenizer,
        Dataset.from_list(train_rows),
        chain_reward,
        callbacks=[evaluator],
        on_phase_start=lambda phase, trainer: quiet_trainer(trainer),  # no per-step log dicts on the terminal
        on_phase_end=on_phase_end,
        **method_args(method, seed, settings, out_dir, overrides),
    )
    record["wall_seconds"] = time.perf_counter() - start - evaluator.eval_seconds
    record["curve"] = evaluator.curve
    record["final"] = record["curve"][-1][1] | evaluate_sampled(model, tokenizer, eval_rows, settings, seed)
    record["guided_share"] = record["guided_samples"] / record["samples"] if record["samples"] else 0.0
    record["guidance"] = [
        {"step": h["step"], **{k.removeprefix("trapo/"): v for k, v in h.items() if k.startswith("trapo/guided_")}}
        for h in log_history
        if any(k.startswith("trapo/guided_") for k in h)
    ]
    return record


# ---------------------------------------------------------------- workers


def _worker_init(queue) -> None:
    global _PROGRESS
    torch.set_num_threads(1)
    from trapo.local_runs import quiet_libraries

    quiet_libraries()
    _PROGRESS = queue


_PROGRESS = None


def _run_in_worker(task: dict) -> dict:
    def progress(n: int) -> None:
        if _PROGRESS is not None:
            _PROGRESS.put(n)

    return run_method(**task, progress=progress)


# ---------------------------------------------------------------- the whole demo


def run(settings: DemoSettings, log=print) -> dict:
    """Run every method for every seed; write results.json, the table and the plots; return the results."""
    # One thread per process: a sub-million-parameter model gains nothing from more, and oversubscribed cores slow
    # it 10-100x. The base builds with every core it can use (one job, no other process yet).
    out = Path(settings.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if settings.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: CUDA is not available here; run on CPU (the default)")
    base = base_model_path(settings.base, settings.cache_dir, log)
    torch.set_num_threads(1)
    train_problems = make_problems(settings.train_problems, TRAIN_TIERS, "train", seed=0)
    eval_rows = to_rows(make_problems(settings.eval_per_tier * len(TIERS), TIERS, "eval", seed=0), settings.expert)
    base_eval, regime = measure_base(base, settings, eval_rows, log)

    runs = settings.runs()
    workers = 1 if settings.device == "cuda" else min(settings.workers, len(runs))
    # A task-level sweep value (the expert's deviation) changes the training rows of the runs that use it; the rows
    # are written once per expert.
    rows_for = functools.cache(lambda expert: to_rows(train_problems, expert))
    tasks = [
        {"method": m, "seed": seed, "overrides": ov, "settings": settings, "base": base, "eval_rows": eval_rows,
         "train_rows": rows_for(settings.with_overrides(ov).expert)}
        for m, seed, ov in runs
    ]  # fmt: skip
    total = settings.steps * len(runs)
    log(f"training {len(runs)} runs × {settings.steps} steps on {workers} process(es)")
    with tqdm(total=total, desc="training", unit="step") as bar:
        if workers == 1:
            records = [run_method(**t, progress=bar.update) for t in tasks]
        else:
            records = _run_parallel(tasks, workers, bar)
    results = {
        "settings": asdict(settings),
        "hard_tiers": list(HARD_TIERS),
        "base": base_eval,
        "base_regime": regime,
        "base_build": {k: v for k, v in base_record(base).items() if k != "checks"},
        "runs": records,
        "summary": summarize(records),
    }
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    table = format_results(results)
    (out / "results.md").write_text(table + "\n")
    paths = plot(results, out)
    log("\n" + table)
    log(f"\nresults: {out / 'results.json'}, table: {out / 'results.md'}, plots: {', '.join(map(str, paths))}")
    return results


def measure_base(base: Path, settings: DemoSettings, eval_rows: list[dict], log) -> tuple[dict, dict]:
    """The base's greedy held-out accuracy per tier, and its pass@8 alone / with a 25% and a 50% prefix."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trapo.tasks.chains import parse_prompt
    from trapo.tasks.regime import format_regime, regime_report

    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base).to(settings.device)
    accuracy = evaluate(model, tokenizer, eval_rows, settings.max_completion_length)
    accuracy |= evaluate_sampled(model, tokenizer, eval_rows, settings, seed=0)
    by_tier: dict[int, list] = {}
    for row in eval_rows:
        problems = by_tier.setdefault(row["tier"], [])
        if len(problems) < settings.regime_problems:
            problems.append(parse_prompt(row["prompt"]))
    regime = regime_report(model, tokenizer, by_tier, expert=settings.expert)
    greedy = {k: v for k, v in accuracy.items() if not k.startswith("sampled_")}
    log("base model, held-out greedy accuracy: " + ", ".join(f"{k} {v:.2f}" for k, v in greedy.items()))
    if settings.sampled_eval_k:
        sampled = ", ".join(f"{k.removeprefix('sampled_')} {v:.2f}" for k, v in accuracy.items() if k not in greedy)
        log(f"base model, held-out avg@{settings.sampled_eval_k} at T={settings.sampled_eval_temperature}: {sampled}")
    log(f"base model, held-out pass@8 ({settings.regime_problems} problems per tier):\n" + format_regime(regime))
    return accuracy, regime


def _run_parallel(tasks: list, workers: int, bar) -> list[dict]:
    """Each run in a worker process (spawned: no state shared with this one), progress forwarded step by step."""
    ctx = mp.get_context("spawn")
    manager = ctx.Manager()
    queue = manager.Queue()
    stop = threading.Event()

    def forward() -> None:
        while not stop.is_set():
            try:
                bar.update(queue.get(timeout=0.2))
            except Exception:  # queue.Empty, or the manager going away at the end
                continue

    thread = threading.Thread(target=forward, daemon=True)
    thread.start()
    try:
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init, initargs=(queue,)) as pool:
            records = list(pool.map(_run_in_worker, tasks))
    finally:
        stop.set()
        thread.join()
        manager.shutdown()
    return records
