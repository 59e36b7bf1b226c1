"""``trapo bench``: the per-step cost of TRAPO vs GRPO, side by side (docs/benchmarks.md)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from trapo.bench.setup import BENCH_METHODS, BenchSettings
from trapo.commands import positive_int

HELP = "per-step cost of TRAPO vs GRPO, side by side (prints a report; --output FILE writes it)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = BenchSettings.__dataclass_fields__
    parser.add_argument(
        "--models",
        default="auto",
        help="comma-separated: tiny (the demo's base, CPU), large (random weights from a config; GPU). "
        "auto: tiny, plus large when CUDA is available",
    )
    parser.add_argument("--methods", default="trapo,grpo", help="comma-separated subset of " + ", ".join(BENCH_METHODS))
    parser.add_argument(
        "--reps", type=positive_int, default=d["reps"].default, help="repetitions (paired, alternating)"
    )
    parser.add_argument(
        "--steps", type=positive_int, default=d["steps"].default, help="timed optimizer steps per repetition"
    )
    parser.add_argument("--warmup-steps", type=int, default=d["warmup_steps"].default)
    parser.add_argument("--prompts", type=positive_int, default=None, help="prompts per step (tiny 8, large 16)")
    parser.add_argument("--num-generations", type=positive_int, default=d["num_generations"].default)
    parser.add_argument("--max-completion-length", type=positive_int, default=None, help="(tiny 64, large 256)")
    parser.add_argument("--reward", default=None, help="chain | random:P (default: chain on tiny, random:0.5 on large)")
    parser.add_argument(
        "--rollout", default=None, help="TRAPOConfig.rollout for TRAPO: auto (its default) | staged | speculative"
    )
    parser.add_argument("--no-isolate", action="store_true", help="run every method in this process")
    parser.add_argument("--large-hidden", type=positive_int, default=d["large_hidden"].default)
    parser.add_argument("--large-layers", type=positive_int, default=d["large_layers"].default)
    parser.add_argument(
        "--large-config",
        default=None,
        help="shape the large model like a real one: a transformers config.json, a model folder or a Hub name (e.g. "
        "Qwen/Qwen2.5-0.5B); random weights; overrides --large-hidden/--large-layers",
    )
    parser.add_argument(
        "--grad-accum", type=positive_int, default=1, help="micro-batches per optimizer step (gradient accumulation)"
    )
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (for the large model)")
    parser.add_argument("--cache-dir", default=None, help="where the demo's base is cached ($TRAPO_CACHE)")
    parser.add_argument(
        "--output",
        default=None,
        help="also write the markdown report into this file, between its trapo-bench markers (the project's own "
        "is docs/benchmarks.md); default: print only",
    )
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
        large_config=args.large_config,
        grad_accum=args.grad_accum,
        device=args.device,
    )
    if args.cache_dir:
        values["cache_dir"] = args.cache_dir
    return BenchSettings(**values)


def run(args: argparse.Namespace, extra: list[str]) -> int:
    import torch

    from trapo.bench.report import format_report, write_report
    from trapo.bench.run import profile_step, quiet_bench, run_bench

    quiet_bench()
    if args.models == "auto":
        models = ["tiny", *(["large"] if torch.cuda.is_available() else [])]
    else:
        models = [m.strip() for m in args.models.split(",") if m.strip()]
    command = getattr(args, "command_line", "trapo bench")
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
    if args.output:
        path = write_report("\n".join(sections), args.output)
        print(f"wrote {path}", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": raw}, indent=2, default=str))
    return 0
