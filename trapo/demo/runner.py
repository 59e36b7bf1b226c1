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

from trapo.checkpointing import write_json_atomic
from trapo.demo.base_eval import measure_base_once
from trapo.demo.evaluation import EvalCallback, eval_rows, evaluate_sampled
from trapo.demo.plots import plot
from trapo.demo.report import collapsed, format_results, summarize
from trapo.demo.settings import TRAPO_SWEEPABLE, DemoSettings
from trapo.tasks.base import base_model_path, base_record
from trapo.tasks.chains import HARD_TIERS, TRAIN_TIERS, chain_reward, make_problems, to_rows

# ---------------------------------------------------------------- one method


def method_args(method: str, seed: int, settings: DemoSettings, out_dir: Path, overrides: dict | None = None) -> dict:
    """The `train_method` configs of ``method`` at the demo's budget (``settings`` with the run's overrides applied):
    ``steps`` optimizer steps in all, ``prompts_per_step`` prompts per step, the method's learning rate.
    ``sft-then-grpo`` splits the steps half and half, its RL phase with its own learning rate and warm-up."""
    from trapo.config import TRAPOConfig
    from trapo.local_runs import local_trainer_args
    from trapo.recipes import phases, rl_method, sft_preset
    from trapo.sft import TRAPOSFTConfig

    steps = phases(method)
    sft_steps = settings.steps if steps == ("sft",) else settings.steps // 2 if "sft" in steps else 0
    local = local_trainer_args(seed, cuda=settings.device == "cuda")
    learning_rate, warmup = settings.learning_rate_for(method), settings.warmup_steps
    configs = {}
    if "sft" in steps:
        configs["sft_args"] = TRAPOSFTConfig(
            output_dir=str(out_dir / "sft"),
            max_steps=sft_steps,
            per_device_train_batch_size=settings.prompts_per_step,
            max_expert_traces=1,  # the task's two traces are the same derivation
            learning_rate=learning_rate,
            lr_scheduler_type="constant_with_warmup",
            warmup_steps=warmup,
            logging_strategy="no",
            alpha=settings.alpha,
            **sft_preset(method),
            **local,
        )
        if "rl" in steps:
            learning_rate, warmup = settings.rl_phase(method)
    if "rl" in steps:
        values = dict(
            output_dir=str(out_dir / "rl"),
            method=rl_method(method),
            num_generations=settings.num_generations,
            per_device_train_batch_size=settings.prompts_per_step * settings.num_generations,
            max_steps=settings.steps - sft_steps,
            learning_rate=learning_rate,
            lr_scheduler_type="constant_with_warmup",
            warmup_steps=warmup,
            max_completion_length=settings.max_completion_length,
            entropy_coef=settings.entropy_coef,
            temperature=settings.temperature,
            relift_learning_rate=learning_rate,  # ReLIFT's SFT steps at the RL rate, as released (both 1e-6)
            alpha=settings.alpha,
            logging_steps=1,
            **local,
        )
        trapo_overrides = {k: v for k, v in (overrides or {}).items() if k in TRAPO_SWEEPABLE}
        configs["rl_args"] = TRAPOConfig(**{**values, **trapo_overrides})  # a sweep's value wins
    return configs


def run_label(method: str, overrides: dict | None) -> str:
    """``trapo``, or with a run's sweep values, ``trapo alpha=0.3``."""
    return method + "".join(f" {k}={v:g}" for k, v in (overrides or {}).items())


def run_method(
    method: str, seed: int, settings: DemoSettings, base: Path, train_rows, eval_rows, progress=None, overrides=None
) -> dict:
    """Train ``method`` from the base for ``settings.steps`` optimizer steps; return its record: the curve of greedy
    held-out accuracy, the final and last-three-evaluations accuracies, per-problem results, the budget it spent and
    TRAPO's guidance."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trapo.local_runs import quiet_trainer
    from trapo.recipes import train_method

    settings = settings.with_overrides(overrides or {})
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base).to(settings.device)
    label = run_label(method, overrides)
    out_dir = run_dir(settings, method, seed, overrides)
    record = {"method": label, "base_method": method, "seed": seed, "overrides": overrides or {}}
    record |= {"generated_tokens": 0, "samples": 0, "guided_samples": 0}
    budget: dict[str, float] = {}
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
        for key, value in trainer.budget().items():
            if key != "wall_seconds":  # the method's own wall time below excludes evaluation
                budget[key] = budget.get(key, 0.0) + value
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
    record["budget"] = budget | {"wall_seconds": record["wall_seconds"]}
    record["curve"] = evaluator.curve
    sampled, sampled_counts = evaluate_sampled(model, tokenizer, eval_rows, settings, seed)
    record["final"] = record["curve"][-1][1] | sampled
    record["last3"] = evaluator.last_mean(3)
    record["problems"] = {"greedy": evaluator.last_counts, "sampled": sampled_counts}
    record["guided_share"] = record["guided_samples"] / record["samples"] if record["samples"] else 0.0
    record["guidance"] = [
        {"step": h["step"], **{k.removeprefix("trapo/"): v for k, v in h.items() if k.startswith("trapo/guided_")}}
        for h in log_history
        if any(k.startswith("trapo/guided_") for k in h)
    ]
    return record


# ---------------------------------------------------------------- workers


# Fields that choose which runs a demo trains, not how one run trains: a finished run is reused across them.
_RUN_LIST_FIELDS = ("methods", "seeds", "first_seed", "sweep", "workers", "output_dir")


def run_key(method: str, seed: int, overrides: dict, settings: DemoSettings) -> dict:
    """Everything a run's result depends on that can change between invocations: its method, seed and sweep values,
    the settings (with TUNED's entry for the method) and trapo's version. A saved run with the same key is reused."""
    import trapo
    from trapo.demo.settings import TUNED

    values = published_settings(settings.with_overrides(overrides))
    for name in _RUN_LIST_FIELDS:
        values.pop(name, None)
    return {"method": method, "seed": seed, "overrides": overrides, "settings": values,
            "tuned": TUNED.get(method), "trapo": trapo.__version__}  # fmt: skip


def run_dir(settings: DemoSettings, method: str, seed: int, overrides: dict | None) -> Path:
    return Path(settings.output_dir) / "runs" / f"{run_label(method, overrides).replace(' ', '-')}-seed{seed}"


def saved_record(task: dict) -> dict | None:
    """The record a finished run saved (``record.json`` in its folder) if its key matches this task's, else None."""
    path = run_dir(task["settings"], task["method"], task["seed"], task["overrides"]) / "record.json"
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None  # a run killed while writing: train it again
    key = run_key(task["method"], task["seed"], task["overrides"], task["settings"])
    key = json.loads(json.dumps(key, default=str))  # as saved: tuples become lists
    return saved["record"] if saved.get("key") == key else None


def train_and_save(task: dict, progress=None) -> dict:
    """Train one run and save its record beside its checkpoints, so an interrupted demo resumes from the runs that
    finished (the long tuning and published runs take hours on a laptop)."""
    task = dict(task)
    # The checkout's state when the demo started (the code this run executes), else now.
    code = task.pop("code", None) or {"git_commit": provenance_commit(), "git_dirty": None}
    record = run_method(**task, progress=progress)
    record["git_commit"], record["git_dirty"] = code["git_commit"], code["git_dirty"]
    key = run_key(task["method"], task["seed"], task["overrides"], task["settings"])
    path = run_dir(task["settings"], task["method"], task["seed"], task["overrides"]) / "record.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, {"key": key, "record": record})  # a record is whole or absent
    return record


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

    return train_and_save(task, progress=progress)


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
    rows = eval_rows(settings)
    base_eval, regime = measure_base_once(base, settings, rows, log)

    runs = settings.runs()
    workers = 1 if settings.device == "cuda" else min(settings.workers, len(runs))
    # A task-level sweep value (the expert's deviation) changes the training rows of the runs that use it; the rows
    # are written once per expert.
    rows_for = functools.cache(lambda expert: to_rows(train_problems, expert))
    tasks = [
        {"method": m, "seed": seed, "overrides": ov, "settings": settings, "base": base, "eval_rows": rows,
         "train_rows": rows_for(settings.with_overrides(ov).expert)}
        for m, seed, ov in runs
    ]  # fmt: skip
    code = provenance(settings)  # read at the start: the code this process and its workers run
    for task in tasks:
        task["code"] = {k: code[k] for k in ("git_commit", "git_dirty")}
    saved = [saved_record(t) for t in tasks]
    todo = [t for t, r in zip(tasks, saved, strict=True) if r is None]
    if len(todo) < len(tasks):
        log(f"reusing {len(tasks) - len(todo)} finished run(s) saved in {out / 'runs'} (same settings and version)")
    total = sum(t["settings"].with_overrides(t["overrides"]).steps for t in todo)
    log(f"training {len(todo)} runs × {settings.steps} steps on {min(workers, max(1, len(todo)))} process(es)")
    with tqdm(total=total, desc="training", unit="step") as bar:
        if workers == 1 or len(todo) <= 1:
            trained = [train_and_save(t, progress=bar.update) for t in todo]
        else:
            trained = _run_parallel(todo, workers, bar)
    fresh = iter(trained)
    records = [r if r is not None else next(fresh) for r in saved]
    for record in records:
        record["collapsed"] = collapsed(record["final"], base_eval)
    results = {
        "settings": published_settings(settings),
        "provenance": code | {"run_commits": sorted({str(r.get("git_commit")) for r in records})},
        "hard_tiers": list(HARD_TIERS),
        "eval_problems": [{"prompt": r["prompt"], "tier": r["tier"]} for r in rows],
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


def published_settings(settings: DemoSettings) -> dict:
    """The settings as results.json records them: no path of this machine (the output and cache folders)."""
    values = asdict(settings)
    values["output_dir"] = Path(settings.output_dir).name
    values.pop("cache_dir")
    return values


def _git(*args: str) -> str | None:
    import subprocess

    try:
        done = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, cwd=Path(__file__).parent)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def provenance_commit() -> str | None:
    """The git commit of trapo's checkout, or None outside one (an installed wheel)."""
    return _git("rev-parse", "HEAD")


def provenance(settings: DemoSettings) -> dict:
    """What produced a run: the git commit (and whether the tree had changes), the library versions, the base model's
    cache key."""
    import transformers
    import trl

    import trapo

    commit = provenance_commit()
    return {
        "git_commit": commit,
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")) if commit else None,
        "versions": {"trapo": trapo.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
                     "trl": trl.__version__},
        "base_model_key": settings.base.key(),
    }  # fmt: skip


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
