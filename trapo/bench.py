"""`trapo bench`: what a TRAPO training step costs over a GRPO step, measured side by side in one run.

For each repetition, TRAPO and GRPO train the same number of optimizer steps from the same base weights on the same
prompts (same seed), with the same prompts × samples; the order alternates (AB, BA, AB, …) so that drift in the
machine's load hits both. Each step is split into phases by wrapping the trainer's own methods:

- ``generation``: ``_generate_single_turn`` (every generate call; calls, rows and tokens are counted too);
- ``reward``: ``_score`` (TRAPO scores between stages) and ``_calculate_rewards``;
- ``rollout_other``: the rest of ``_generate_and_score_completions`` (tokenising, prefixes, padding, advantages);
- ``forward``: ``compute_loss`` (a forward hook counts the model's forward passes there, per micro-batch);
- ``backward``: ``accelerator.backward``;
- ``optimizer``: between the ``on_pre_optimizer_step`` and ``on_optimizer_step`` callbacks;
- ``other``: the rest of the step (gradient clipping, scheduler, bookkeeping).

Peak memory: on CUDA, ``torch.cuda.max_memory_allocated`` (reset per repetition). On CPU, the resident set's
high-water mark (``VmHWM``), reset per repetition through ``/proc/self/clear_refs``; each method runs in its own
worker process (``isolate``), because memory one configuration frees stays mapped by the allocator and would count
towards the next one's peak. Timings are wall-clock (``time.perf_counter``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import sys
import time
import traceback
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from trapo.quiet_runs import local_trainer_args, quiet_libraries, quiet_trainer

PHASES = ("generation", "reward", "rollout_other", "forward", "backward", "optimizer", "other")
COUNTERS = (
    "generation_calls",
    "generated_rows",
    "generated_tokens",
    "decode_slots",
    "micro_batches",
    "forwards_generation",
    "forwards_loss",
    "forwards_other",
    "loss_tokens",
    "padded_tokens",
)
BENCH_METHODS = ("trapo", "grpo", "trl-grpo")  # trl-grpo: TRL's own GRPOTrainer, the reference for `grpo`
BEGIN, END = "<!-- trapo-bench:begin -->", "<!-- trapo-bench:end -->"


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
    # The large model (GPU), built from a Llama config with random weights.
    large_hidden: int = 1024
    large_layers: int = 12
    large_heads: int = 16
    device: str = "auto"  # auto | cpu | cuda (tiny always runs on CPU unless set to cuda)
    cache_dir: str = field(default_factory=lambda: os.environ.get("TRAPO_CACHE", str(Path.home() / ".cache/trapo")))
    train_problems: int = 600

    def __post_init__(self):
        unknown = [m for m in self.methods if m not in BENCH_METHODS]
        if unknown:
            raise ValueError(f"unknown bench method(s) {unknown}; choose from {', '.join(BENCH_METHODS)}")
        if self.model not in ("tiny", "large"):
            raise ValueError(f"model must be 'tiny' or 'large', got {self.model!r}")
        if self.reps < 1 or self.steps < 1 or self.warmup_steps < 0:
            raise ValueError("reps and steps must be ≥ 1, warmup_steps ≥ 0")
        make_reward(self.reward)  # validates


# ---------------------------------------------------------------------------------------------------- rewards


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


# ------------------------------------------------------------------------------------------------ measurement


class StepMeter:
    """Wraps a trainer's methods to split each optimizer step into `PHASES` and count generation and forward work.

    ``records`` gets one dict per optimizer step (seconds per phase, ``step``, counters). Only wraps attributes on
    the instance, so the class and other trainers are untouched.
    """

    def __init__(self, trainer):
        from transformers import TrainerCallback

        self.trainer = trainer
        self.records: list[dict] = []
        self.current: Counter | None = None
        self._phase = "other"
        self._t_step = self._t_opt = 0.0
        meter = self

        class _Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                meter.current = Counter()
                meter._t_step = time.perf_counter()

            def on_pre_optimizer_step(self, args, state, control, **kwargs):
                meter._t_opt = time.perf_counter()

            def on_optimizer_step(self, args, state, control, **kwargs):
                if meter.current is not None:
                    meter.current["optimizer"] += time.perf_counter() - meter._t_opt

            def on_step_end(self, args, state, control, **kwargs):
                meter._finish_step()

        trainer.add_callback(_Callback())
        self._wrap(trainer, "_generate_single_turn", "generation", self._after_generate)
        for name in ("_score", "_calculate_rewards"):
            if hasattr(trainer, name):
                self._wrap(trainer, name, "reward")
        self._wrap(trainer, "_generate_and_score_completions", "rollout")
        self._wrap(trainer, "compute_loss", "forward", self._after_loss)
        self._wrap(trainer.accelerator, "backward", "backward")
        self._hook = trainer.model.register_forward_hook(self._count_forward)

    def _wrap(self, obj, name: str, phase: str, after=None) -> None:
        inner = getattr(obj, name)
        meter = self

        def timed(*args, **kwargs):
            outer, meter._phase = meter._phase, phase
            start = time.perf_counter()
            try:
                result = inner(*args, **kwargs)
            finally:
                meter._phase = outer
            if meter.current is not None:
                meter.current[phase] += time.perf_counter() - start
                if after is not None:
                    after(args, result)
            return result

        setattr(obj, name, timed)

    def _after_generate(self, args, result) -> None:
        completion_ids = result[0]
        lengths = [len(c) for c in completion_ids]
        self.current["generation_calls"] += 1
        self.current["generated_rows"] += len(lengths)
        self.current["generated_tokens"] += sum(lengths)
        # A padded batch decodes until its longest row ends: rows × longest = the decode work actually done.
        self.current["decode_slots"] += len(lengths) * max(lengths, default=0)

    def _after_loss(self, args, result) -> None:
        self.current["micro_batches"] += 1
        inputs = args[1] if len(args) > 1 else None  # compute_loss(model, inputs, ...)
        if isinstance(inputs, dict) and "completion_mask" in inputs:
            # What the forward/backward pay for: completion tokens trained on, and the padded completion area.
            self.current["loss_tokens"] += int(inputs["completion_mask"].sum())
            self.current["padded_tokens"] += inputs["completion_mask"].numel()

    def _count_forward(self, module, inputs, output) -> None:
        if self.current is not None:
            key = {"generation": "forwards_generation", "forward": "forwards_loss"}.get(self._phase, "forwards_other")
            self.current[key] += 1

    def _finish_step(self) -> None:
        c = self.current
        if c is None:
            return
        c["step"] = time.perf_counter() - self._t_step
        c["rollout_other"] = max(c["rollout"] - c["generation"] - c["reward"], 0.0)
        c["other"] = max(c["step"] - c["rollout"] - c["forward"] - c["backward"] - c["optimizer"], 0.0)
        self.records.append(dict(c))
        self.current = None

    def close(self) -> None:
        self._hook.remove()


class PeakMemory:
    """Peak memory over a span: CUDA allocated bytes, or the process's resident high-water mark on CPU."""

    def __init__(self, device: str):
        self.device = device
        self.kind = "cuda_allocated" if device == "cuda" else ("rss_hwm" if _can_reset_hwm() else "rss_hwm_process")
        self.baseline = 0

    def reset(self) -> None:
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.baseline = torch.cuda.memory_allocated()
        else:
            if self.kind == "rss_hwm":
                Path("/proc/self/clear_refs").write_text("5")
            self.baseline = _proc_status("VmRSS")

    def peak(self) -> int:
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated()
        return _proc_status("VmHWM")


def _proc_status(key: str) -> int:
    """Bytes of a /proc/self/status field (VmRSS, VmHWM); falls back to ru_maxrss where /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def _can_reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------------- running


class Runner:
    """Everything one method needs, built once; ``run_rep`` trains a fresh trainer from the base weights."""

    def __init__(self, settings: BenchSettings, method: str):
        import torch

        from trapo.tasks.chains import TRAIN_TIERS, make_problems, to_rows

        _quiet_libraries()
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
            "reward_mean": statistics.fmean(rewards) if rewards else None,
        }
        trainer = None  # free it before the next repetition builds one
        return result

    def _trainer(self, seed: int, output_dir: str):
        s = self.settings
        common = dict(
            output_dir=output_dir,
            num_generations=s.num_generations,
            per_device_train_batch_size=s.prompts_per_step * s.num_generations,
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
            extra = {"method": self.method}
            if s.rollout and self.method == "trapo":
                extra["rollout"] = s.rollout
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


def prepare_bench_model(settings: BenchSettings, log=None) -> None:
    """Build (or find) what `load_bench_model` reads: the demo's cached base for ``tiny`` (nothing for ``large``)."""
    if settings.model == "tiny":
        from trapo.demo import DemoSettings, base_model_path

        base_model_path(DemoSettings(cache_dir=settings.cache_dir), log=log or _log)


def load_bench_model(settings: BenchSettings):
    """(tokenizer, model): the demo's cached warm-started base (tiny) or a random-weight Llama (large)."""
    from trapo.tasks.tiny_model import build_model, build_tokenizer

    if settings.model == "tiny":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from trapo.demo import DemoSettings, base_model_path

        path = base_model_path(DemoSettings(cache_dir=settings.cache_dir), log=lambda m: _log(m))
        return AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path)
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


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _quiet_libraries() -> None:
    """`trapo.quiet_runs.quiet_libraries`, and no warnings: the report is the output."""
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
    load_before = _load_average()
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
        "load_average": {"before": load_before, "after": _load_average()},
        "wall_seconds": time.perf_counter() - started,
        "results": results,
        "summary": summarize(results, settings.methods),
    }


# ---------------------------------------------------------------------------------------------------- summary


def rep_metrics(result: dict) -> dict[str, float]:
    """Per-step means of one repetition: phase seconds, counters, memory, guided share."""
    steps = result["steps"]
    keys = sorted({k for s in steps for k in s} | {"step", "rollout", *PHASES, *COUNTERS})
    m = {k: statistics.fmean(s.get(k, 0.0) for s in steps) for k in keys}
    m["forwards_loss_per_micro_batch"] = m.get("forwards_loss", 0.0) / max(m.get("micro_batches", 0.0), 1e-9)
    m["peak_memory_mb"] = result["peak_memory"] / 2**20
    m["step_memory_mb"] = (result["peak_memory"] - result["baseline_memory"]) / 2**20
    # TRL's own GRPOTrainer (trl-grpo) keeps no rollout counters: its cells show "–", not a made-up 0.
    counted = bool(result.get("samples"))
    m["guided_share"] = result["guided_samples"] / result["samples"] if counted else None
    m["kept_tokens"] = result.get("kept_tokens", 0) / max(len(steps), 1) if counted else None
    m["reward_mean"] = result.get("reward_mean")
    return m


RATIO_KEYS = (
    "step",
    "generation",
    "reward",
    "rollout_other",
    "forward",
    "backward",
    "optimizer",
    "generation_calls",
    "generated_tokens",
    "decode_slots",
    "loss_tokens",
    "padded_tokens",
    "forwards_loss_per_micro_batch",
    "peak_memory_mb",
    "step_memory_mb",
)


def summarize(results: list[dict], methods: tuple[str, ...] | list[str]) -> dict:
    """Median and spread (min, max) per method and metric, and TRAPO/other ratios computed per repetition."""
    per_method: dict[str, list[dict]] = {m: [] for m in methods}
    by_rep: dict[int, dict[str, dict]] = {}
    for r in results:
        metrics = rep_metrics(r)
        per_method[r["method"]].append(metrics)
        by_rep.setdefault(r["rep"], {})[r["method"]] = metrics
    summary: dict[str, Any] = {"methods": {}, "ratios": {}}
    for method, reps in per_method.items():
        if reps:
            keys = sorted({k for m in reps for k in m})
            values = {k: [m[k] for m in reps if m.get(k) is not None] for k in keys}
            summary["methods"][method] = {k: _spread(v) for k, v in values.items() if v}
    if "trapo" in methods:
        for other in (m for m in methods if m != "trapo"):
            ratios: dict[str, dict] = {}
            for key in RATIO_KEYS:
                values = [
                    pair["trapo"][key] / pair[other][key]
                    for pair in by_rep.values()
                    if "trapo" in pair and other in pair and pair[other].get(key)
                ]
                if values:
                    ratios[key] = _spread(values)
            summary["ratios"][f"trapo/{other}"] = ratios
    return summary


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


# ----------------------------------------------------------------------------------------------------- report


def machine_info() -> dict:
    import torch
    import transformers
    import trl

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
        "platform": platform.platform(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        import vllm  # noqa: F401

        info["vllm"] = vllm.__version__
    except ImportError:
        info["vllm"] = None
    return info


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _fmt(s: dict, fmt: str = "{:.2f}") -> str:
    if s["n"] == 1 or s["min"] == s["max"]:
        return fmt.format(s["median"])
    return f"{fmt.format(s['median'])} [{fmt.format(s['min'])}–{fmt.format(s['max'])}]"


def format_report(bench: dict, command: str, title: str | None = None) -> str:
    """Markdown: command, machine, settings, per-method medians [min–max], TRAPO/GRPO ratios and the targets."""
    st, summary, machine = bench["settings"], bench["summary"], bench["machine"]
    methods = [m for m in st["methods"] if m in summary["methods"]]
    load = bench["load_average"]
    lines = [
        f"### {title or 'Run'}: `{st['model']}` model",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores"
        + (f", GPU {machine['gpu']}" if machine.get("gpu") else ", no GPU")
        + f"; Python {machine['python']}, torch {machine['torch']}, transformers {machine['transformers']}, "
        f"TRL {machine['trl']}, vLLM {machine['vllm'] or 'not installed'}. Load average (1/5/15 min) before "
        f"{_load_str(load['before'])}, after {_load_str(load['after'])}. Bench wall time "
        f"{bench['wall_seconds']:.0f} s.",
        "",
        f"Settings: {st['prompts_per_step']} prompts × {st['num_generations']} samples per step, "
        f"{st['max_completion_length']} completion tokens, reward `{st['reward']}`, {st['reps']} repetitions × "
        f"{st['steps']} timed steps (after {st['warmup_steps']} warm-up), order alternating AB/BA, "
        + ("one worker process per method" if st["isolate"] else "all methods in one process")
        + (f", TRAPO rollout `{st['rollout']}`" if st.get("rollout") else "")
        + ". Cells: median over repetitions [min–max] of the per-step mean.",
        "",
    ]
    rows = [
        ("step time (s)", "step", "{:.2f}"),
        ("  generation (s)", "generation", "{:.2f}"),
        ("  reward (s)", "reward", "{:.3f}"),
        ("  rollout other (s)", "rollout_other", "{:.3f}"),
        ("  forward, loss (s)", "forward", "{:.3f}"),
        ("  backward (s)", "backward", "{:.3f}"),
        ("  optimizer (s)", "optimizer", "{:.3f}"),
        ("  other (s)", "other", "{:.3f}"),
        ("generation calls", "generation_calls", "{:.1f}"),
        ("rows generated", "generated_rows", "{:.0f}"),
        ("tokens generated", "generated_tokens", "{:.0f}"),
        ("tokens kept (in the batch)", "kept_tokens", "{:.0f}"),
        ("decode slots (rows × longest)", "decode_slots", "{:.0f}"),
        ("completion tokens in the loss", "loss_tokens", "{:.0f}"),
        ("padded completion area (rows × width)", "padded_tokens", "{:.0f}"),
        ("forward passes, loss, per micro-batch", "forwards_loss_per_micro_batch", "{:.2f}"),
        ("forward passes, outside generation and loss", "forwards_other", "{:.1f}"),
        ("peak memory (MiB)", "peak_memory_mb", "{:.0f}"),
        ("  above the start of the timed steps (MiB)", "step_memory_mb", "{:.0f}"),
        ("guided share of samples", "guided_share", "{:.2f}"),
        ("mean reward", "reward_mean", "{:.2f}"),
    ]
    lines.append("| per step | " + " | ".join(methods) + " |")
    lines.append("|---|" + "---|" * len(methods))
    for label, key, fmt in rows:
        cells = []
        for m in methods:
            stats = summary["methods"][m].get(key)
            cells.append(_fmt(stats, fmt) if stats and stats["median"] is not None else "–")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    mem_kind = bench["results"][0]["memory_kind"] if bench["results"] else "?"
    lines.append(
        "Peak memory is "
        + {
            "cuda_allocated": "`torch.cuda.max_memory_allocated` over the timed steps.",
            "rss_hwm": "the worker's resident-set high-water mark (VmHWM, reset through /proc/self/clear_refs "
            "after the warm-up), i.e. the whole process: Python, torch, the model, the dataset.",
            "rss_hwm_process": "the process's resident-set high-water mark since it started (not resettable here).",
        }.get(mem_kind, mem_kind)
    )
    lines.append("")
    for name, ratios in summary["ratios"].items():
        if not ratios:
            continue
        lines.append(f"Ratios {name}, computed per repetition (paired, same prompts), median [min–max]:")
        lines.append("")
        lines.append("| ratio | value |")
        lines.append("|---|---|")
        for key, stats in ratios.items():
            lines.append(f"| {key} | {_fmt(stats)} |")
        lines.append("")
        lines.extend(_targets(ratios, name))
        lines.append("")
    return "\n".join(lines)


def _targets(ratios: dict, name: str) -> list[str]:
    out = [f"Targets ({name}, measured, not asserted):"]
    checks = [
        ("step time ≤ 1.2×", "step", 1.2),
        ("peak memory ≤ 1.1×", "peak_memory_mb", 1.1),
        ("forward passes in the loss per micro-batch = 1×", "forwards_loss_per_micro_batch", 1.0),
    ]
    for label, key, limit in checks:
        if key in ratios:
            value = ratios[key]["median"]
            ok = value <= limit + 1e-9 if key != "forwards_loss_per_micro_batch" else abs(value - 1.0) < 1e-9
            out.append(f"- {label}: {value:.2f} → {'met' if ok else 'NOT met'}")
    return out


def _load_str(load) -> str:
    return "/".join(f"{x:.2f}" for x in load) if load else "n/a"


def write_report(markdown: str, path: str | Path) -> Path:
    """Put ``markdown`` between the bench markers of ``path`` (created if missing), keeping the rest of the file."""
    path = Path(path)
    block = f"{BEGIN}\n{markdown.rstrip()}\n{END}"
    if path.exists():
        text = path.read_text()
        if BEGIN in text or END in text:
            head, _, rest = text.partition(BEGIN)
            if not rest or END not in rest:
                raise ValueError(
                    f"{path}: the report markers are broken (need {BEGIN} followed by {END}); fix them or pass "
                    "--output with another file"
                )
            tail = rest.split(END, 1)[1]
            path.write_text(head + block + tail)
            return path
        path.write_text(text.rstrip() + "\n\n" + block + "\n")
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# Benchmarks\n\nGenerated by `trapo bench`.\n\n" + block + "\n")
    return path


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


# ---------------------------------------------------------------------------------------------------------- CLI


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    d = BenchSettings.__dataclass_fields__
    parser.add_argument(
        "--models",
        default="auto",
        help="comma-separated: tiny (the demo's base, CPU), large (random weights from a config; GPU). "
        "auto: tiny, plus large when CUDA is available",
    )
    parser.add_argument("--methods", default="trapo,grpo", help="comma-separated subset of " + ", ".join(BENCH_METHODS))
    parser.add_argument("--reps", type=int, default=d["reps"].default, help="repetitions (paired, alternating)")
    parser.add_argument("--steps", type=int, default=d["steps"].default, help="timed optimizer steps per repetition")
    parser.add_argument("--warmup-steps", type=int, default=d["warmup_steps"].default)
    parser.add_argument("--prompts", type=int, default=None, help="prompts per step (tiny 8, large 16)")
    parser.add_argument("--num-generations", type=int, default=d["num_generations"].default)
    parser.add_argument("--max-completion-length", type=int, default=None, help="(tiny 64, large 256)")
    parser.add_argument("--reward", default=None, help="chain | random:P (default: chain on tiny, random:0.5 on large)")
    parser.add_argument("--rollout", default=None, help="TRAPOConfig.rollout for TRAPO (staged | speculative)")
    parser.add_argument("--no-isolate", action="store_true", help="run every method in this process")
    parser.add_argument("--large-hidden", type=int, default=d["large_hidden"].default)
    parser.add_argument("--large-layers", type=int, default=d["large_layers"].default)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (for the large model)")
    parser.add_argument("--cache-dir", default=None, help="where the demo's base is cached ($TRAPO_CACHE)")
    parser.add_argument("--output", default="docs/benchmarks.md", help="markdown report ('' to skip)")
    parser.add_argument("--json", default=None, help="also write the raw results here")
    parser.add_argument("--profile", action="store_true", help="cProfile one TRAPO repetition instead of benchmarking")


def settings_from_args(args: argparse.Namespace, model: str) -> BenchSettings:
    large = model == "large"
    values: dict[str, Any] = dict(
        methods=tuple(m.strip() for m in args.methods.split(",") if m.strip()),
        model=model,
        reps=args.reps,
        steps=args.steps,
        warmup_steps=args.warmup_steps,
        prompts_per_step=args.prompts or (16 if large else 8),
        num_generations=args.num_generations,
        max_completion_length=args.max_completion_length or (256 if large else 64),
        reward=args.reward or ("random:0.5" if large else "chain"),
        isolate=not args.no_isolate,
        rollout=args.rollout,
        large_hidden=args.large_hidden,
        large_layers=args.large_layers,
        device=args.device,
    )
    if args.cache_dir:
        values["cache_dir"] = args.cache_dir
    return BenchSettings(**values)


def run_cli(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    import torch

    _quiet_libraries()
    if args.models == "auto":
        models = ["tiny", *(["large"] if torch.cuda.is_available() else [])]
    else:
        models = [m.strip() for m in args.models.split(",") if m.strip()]
    command = "trapo " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.profile:
        print(profile_step(settings_from_args(args, models[0])))
        return 0
    sections, raw = [], {}
    for model in models:
        settings = settings_from_args(args, model)
        bench = run_bench(settings)
        raw[model] = bench
        sections.append(format_report(bench, command))
        print(sections[-1], flush=True)
    from trapo.pipeline import simulate

    sim = simulate()
    sections.append(format_simulation(sim))
    print(sections[-1])
    if args.output:
        path = write_report("\n".join(sections), args.output)
        print(f"wrote {path}", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": raw, "pipeline_simulation": sim}, indent=2, default=str))
    return 0


def format_simulation(sim: dict) -> str:
    return "\n".join(
        [
            "### Pipelined stages, simulated engine (not vLLM)",
            "",
            f"`trapo.pipeline` on a fake engine: {sim['prompts']} prompts, the paper's 4/2/1/1 schedule, request "
            f"latencies drawn from a long-tailed distribution (seeded; {sim['unit_ms']} ms per simulated token), "
            f"reward 1 with probability {sim['p_success']}. Stage-synchronous (every prompt waits for the whole "
            f"batch's stage): {sim['synchronous_s']:.3f} s; pipelined per prompt: {sim['pipelined_s']:.3f} s "
            f"(× {sim['pipelined_s'] / sim['synchronous_s']:.2f}). Same requests, same decisions: "
            f"{sim['same_decisions']}.",
            "",
        ]
    )


__all__ = ["BenchSettings", "StepMeter", "PeakMemory", "run_bench", "summarize", "format_report", "write_report"]
