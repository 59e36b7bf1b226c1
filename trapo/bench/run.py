"""Running `trapo bench`: TRAPO and GRPO train the same steps side by side, each in its own worker process.

For each repetition, every method trains the same number of optimizer steps from the same base weights on the same
prompts (same seed), with the same prompts × samples; the order alternates (AB, BA, AB, …) so that drift in the
machine's load hits both. Each method runs in its own worker process (``isolate``), because memory one configuration
frees stays mapped by the allocator and would count towards the next one's peak.
"""

from __future__ import annotations

import os
import statistics
import time
import traceback
from collections import Counter
from dataclasses import asdict
from pathlib import Path

from trapo.bench.meter import PHASES, PeakMemory, StepMeter
from trapo.bench.report import load_average, machine_info, rep_metrics, summarize
from trapo.bench.setup import BenchSettings, _log, load_bench_model, make_reward, prepare_bench_model, split_variant
from trapo.local_runs import local_trainer_args, quiet_libraries, quiet_trainer

# ---------------------------------------------------------------------------------------------------- running


class Runner:
    """Everything one method needs, built once; ``run_rep`` trains a fresh trainer from the base weights."""

    def __init__(self, settings: BenchSettings, method: str):
        import torch

        from trapo.tasks.chains import TRAIN_TIERS, make_problems, to_rows

        quiet_bench()
        torch.set_num_threads(max(1, min(settings.threads, os.cpu_count() or 1)))
        self.settings, self.method = settings, method
        self.device = resolve_device(settings)
        self.tokenizer, self.model = load_bench_model(settings)
        self.base_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        from datasets import Dataset

        rows = to_rows(make_problems(settings.train_problems, TRAIN_TIERS, "train", seed=0))
        self.dataset = Dataset.from_list(rows)
        self.reward = make_reward(settings.reward)
        self.memory = PeakMemory(self.device)

    def run_rep(self, rep: int, output_dir: str) -> dict:
        import torch

        s = self.settings
        self.model.load_state_dict(self.base_state)
        trainer = self._trainer(seed=s.seed + rep, output_dir=output_dir)
        meter = StepMeter(trainer)
        state = {"seen": 0}

        from transformers import TrainerCallback

        runner = self
        before: dict = {}

        class _WarmupDone(TrainerCallback):
            def on_step_begin(self, args, st, control, **kwargs):
                if st.global_step == s.warmup_steps and not state["seen"]:
                    state["seen"] = 1
                    runner.memory.reset()
                    before.update(getattr(trainer, "rollout_stats", {}))

        trainer.add_callback(_WarmupDone())
        # Ours must run before the meter's on_step_begin timer starts: move it first.
        trainer.callback_handler.callbacks.insert(0, trainer.callback_handler.callbacks.pop())
        torch.manual_seed(s.seed + rep)
        trainer.train()
        peak = self.memory.peak()
        meter.close()
        timed = meter.records[s.warmup_steps :]
        stats = Counter(getattr(trainer, "rollout_stats", {}))
        stats.subtract(before)
        rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h][s.warmup_steps :]
        result = {
            "method": self.method,
            "rep": rep,
            "steps": timed,
            "peak_memory": peak,
            "baseline_memory": self.memory.baseline,
            "memory_kind": self.memory.kind,
            "samples": stats.get("samples", 0),
            "guided_samples": stats.get("guided_samples", 0),
            # The trainer counts every generated continuation; speculative rollouts also count the discarded ones.
            "kept_tokens": stats.get("generated_tokens", 0) - stats.get("discarded_tokens", 0),
            "rollout": getattr(trainer, "rollout_kind", None),
            "reward_mean": statistics.fmean(rewards) if rewards else None,
        }
        trainer = None  # free it before the next repetition builds one
        self._release_device()
        return result

    def _release_device(self) -> None:
        """Between repetitions a worker keeps its model on the CPU and gives the GPU's memory back, so that only the
        method that is running holds GPU memory (two workers at real sizes do not fit on one card together)."""
        if self.device != "cuda":
            return
        import gc

        import torch

        self.model.to("cpu")
        gc.collect()
        torch.cuda.empty_cache()

    def _trainer(self, seed: int, output_dir: str):
        s = self.settings
        common = dict(
            output_dir=output_dir,
            num_generations=s.num_generations,
            per_device_train_batch_size=s.prompts_per_step * s.num_generations // s.grad_accum,
            gradient_accumulation_steps=s.grad_accum,
            steps_per_generation=s.grad_accum,  # one rollout of whole groups per optimizer step
            max_steps=s.warmup_steps + s.steps,
            learning_rate=1e-4,
            lr_scheduler_type="constant",
            max_completion_length=s.max_completion_length,
            logging_steps=1,
            **local_trainer_args(seed, cuda=self.device == "cuda"),
        )
        if self.method == "trl-grpo":
            from trl import GRPOConfig, GRPOTrainer

            config_class, trainer_class = GRPOConfig, GRPOTrainer
            extra = dict(loss_type="dr_grpo", scale_rewards="none", beta=0.0, remove_unused_columns=False)
        else:
            from trapo.trainer import TRAPOConfig, TRAPOTrainer

            config_class, trainer_class = TRAPOConfig, TRAPOTrainer
            method, rollout = split_variant(self.method)
            extra = {"method": method}
            if rollout or s.rollout:
                extra["rollout"] = rollout or s.rollout
        trainer = trainer_class(
            model=self.model,
            reward_funcs=self.reward,
            args=config_class(**common, **extra),
            train_dataset=self.dataset,
            processing_class=self.tokenizer,
        )
        quiet_trainer(trainer)
        return trainer


def resolve_device(settings: BenchSettings) -> str:
    import torch

    if settings.device != "auto":
        return settings.device
    if settings.model == "large" and torch.cuda.is_available():
        return "cuda"
    return "cpu"


def quiet_bench() -> None:
    """`trapo.local_runs.quiet_libraries`, and no warnings: the report is the output."""
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    quiet_libraries()
    warnings.filterwarnings("ignore")


def _worker(conn, settings_dict: dict, method: str) -> None:
    """Worker process: builds a Runner, then runs repetitions on request until told to stop."""
    try:
        runner = Runner(BenchSettings(**settings_dict), method)
        conn.send(("ready", None))
        while True:
            command, payload = conn.recv()
            if command == "stop":
                break
            conn.send(("result", runner.run_rep(**payload)))
    except Exception:  # the parent re-raises with this traceback
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


class _Workers:
    """One process per method, run strictly one at a time (never concurrently): the parent alternates them."""

    def __init__(self, settings: BenchSettings):
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.conns, self.procs = {}, {}
        settings_dict = asdict(settings)
        for method in settings.methods:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(child, settings_dict, method), daemon=True)
            proc.start()
            child.close()
            self.conns[method], self.procs[method] = parent, proc
            self._receive(method)  # built before the next starts: no two builds share the cores

    def _receive(self, method: str):
        kind, payload = self.conns[method].recv()
        if kind == "error":
            raise RuntimeError(f"bench worker for {method!r} failed:\n{payload}")
        return payload

    def run_rep(self, method: str, **payload) -> dict:
        self.conns[method].send(("run", payload))
        return self._receive(method)

    def close(self) -> None:
        for method, conn in self.conns.items():
            try:
                conn.send(("stop", None))
            except (BrokenPipeError, OSError):
                pass
            self.procs[method].join(timeout=30)


def run_bench(settings: BenchSettings, work_dir: str | None = None, log=_log) -> dict:
    """Run every repetition (methods alternating AB, BA, …) and return the raw per-step results and the summary."""
    import tempfile

    started = time.perf_counter()
    load_before = load_average()
    tmp = tempfile.TemporaryDirectory(prefix="trapo-bench-") if work_dir is None else None
    work = Path(work_dir or tmp.name)
    prepare_bench_model(settings, log=log)  # once, before any worker starts
    workers = _Workers(settings) if settings.isolate else None
    runners = None if settings.isolate else {m: Runner(settings, m) for m in settings.methods}
    results = []
    try:
        for rep in range(settings.reps):
            order = list(settings.methods) if rep % 2 == 0 else list(reversed(settings.methods))
            for method in order:
                payload = {"rep": rep, "output_dir": str(work / f"{method}-{rep}")}
                result = workers.run_rep(method, **payload) if workers else runners[method].run_rep(**payload)
                results.append(result)
                step = statistics.fmean(r["step"] for r in result["steps"])
                log(f"rep {rep + 1}/{settings.reps} {method}: {step:.2f} s/step")
    finally:
        if workers:
            workers.close()
        if tmp is not None:
            tmp.cleanup()
    return {
        "settings": asdict(settings),
        "machine": machine_info(),
        "load_average": {"before": load_before, "after": load_average()},
        "wall_seconds": time.perf_counter() - started,
        "results": results,
        "summary": summarize(results, settings.methods),
    }


# ------------------------------------------------------------------------------------------------------ profile


def profile_step(settings: BenchSettings, method: str = "trapo", top: int = 25) -> str:
    """cProfile over the timed steps of one repetition of ``method``, in this process; the top functions by
    own time and by cumulative time."""
    import cProfile
    import io
    import pstats
    import tempfile

    runner = Runner(settings, method)
    with tempfile.TemporaryDirectory(prefix="trapo-profile-") as work:
        runner.run_rep(0, str(Path(work) / "warm"))  # warm caches outside the profile
        profiler = cProfile.Profile()
        profiler.enable()
        result = runner.run_rep(1, str(Path(work) / "run"))
        profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).strip_dirs()
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    metrics = rep_metrics(result)
    phases = ", ".join(f"{k} {metrics[k]:.3f}" for k in ("step", *PHASES))
    return f"{method}: per step (s, under the profiler): {phases}\n\n{out.getvalue()}"
