"""``trapo demo``: TRAPO and its baselines on the built-in task, from one tiny local base, at equal budget (CPU)."""

from __future__ import annotations

import argparse

from trapo.demo.settings import DEMO_METHODS, DemoSettings

HELP = "train a tiny model on the built-in task with TRAPO and the baselines (CPU, no downloads)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
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


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from trapo.demo.runner import run as run_demo
    from trapo.local_runs import quiet_libraries

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
    run_demo(settings)
    return 0
