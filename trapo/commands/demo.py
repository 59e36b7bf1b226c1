"""``trapo demo``: TRAPO and its baselines on the built-in task, from one tiny local base, at equal budget (CPU)."""

from __future__ import annotations

import argparse

from trapo.commands import positive_int
from trapo.demo.settings import (
    DEMO_METHODS,
    HEADLINE_METHODS,
    RUN_SWEEPABLE,
    TASK_SWEEPABLE,
    TRAPO_SWEEPABLE,
    DemoSettings,
)
from trapo.tasks.chains import ORDERS

HELP = "train a tiny model on the built-in task with TRAPO and the baselines (CPU, no downloads)"
DESCRIPTION = (
    "Builds (once, cached) a tiny base model that solves short digit chains and fails long ones, trains every method "
    "from it at the same budget, and reports held-out accuracy per chain length as a table and plots "
    "(docs/demo.md)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--methods",
        default=None,
        help="comma-separated subset of "
        + ", ".join(DEMO_METHODS)
        + ", or 'all' (default: "
        + ",".join(HEADLINE_METHODS)
        + "; with --tune: all)",
    )
    parser.add_argument("--seeds", type=positive_int, default=1, help="seeds per method; the table shows mean ± std")
    parser.add_argument(
        "--first-seed", type=int, default=0, help="seeds are FIRST_SEED, FIRST_SEED + 1, … (add seeds to a run)"
    )
    parser.add_argument("--steps", type=positive_int, default=None, help="optimizer steps per method (equal budget)")
    parser.add_argument("--learning-rate", type=float, default=None, help="learning rate of every method")
    parser.add_argument("--alpha", type=float, default=None, help="TrSFT's α for the methods that use TrSFT")
    parser.add_argument(
        "--warmup-steps", type=int, default=None, help="linear learning-rate warm-up at the start of each phase"
    )
    parser.add_argument(
        "--expert-order",
        choices=ORDERS,
        default=None,
        help="the convention the expert's derivations follow: left = the base model's own, right = the other end "
        "(every digit unlikely under the policy; docs/demo.md)",
    )
    parser.add_argument(
        "--expert-deviation",
        type=float,
        default=None,
        metavar="P",
        help="probability that a step of the expert's derivation breaks its convention (reduces another pair; "
        f"default {DemoSettings.expert_deviation})",
    )
    parser.add_argument(
        "--expert-mixture",
        type=float,
        default=None,
        metavar="P",
        help="share of the expert's derivations written wholly in the other convention (a structured difference, "
        "instead of per-step noise)",
    )
    parser.add_argument(
        "--eval-split",
        choices=("valid", "test"),
        default="valid",
        help="held-out problems: valid (every choice is made on it) or test (read once, for a published run)",
    )
    parser.add_argument("--temperature", type=float, default=None, help="the RL methods' rollout temperature")
    parser.add_argument(
        "--tune",
        action="store_true",
        help="run the tuning procedure (every method on the same learning-rate grid and seeds, on the valid split) "
        "and write OUTPUT_DIR/tuning.json; its choices are the demo's defaults",
    )
    parser.add_argument(
        "--sweep",
        action="append",
        default=[],
        metavar="KEY=V1,V2,...",
        help="also train at each value, on the same seeds, and plot final hard-tier accuracy against it: TRAPO for "
        f"its own settings ({', '.join(TRAPO_SWEEPABLE)}), every selected method for the task's "
        f"({', '.join(TASK_SWEEPABLE)}) and the run's ({', '.join(RUN_SWEEPABLE)}); e.g. --sweep alpha=0.01,0.1,0.3. "
        "METHOD[+METHOD...]:KEY=... trains only those methods at the values, e.g. --sweep sft:steps=400",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: a few steps of everything (under 2 minutes)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cuda: the same demo on a GPU")
    parser.add_argument(
        "--workers", type=positive_int, default=None, help="runs trained side by side (default: 2 cores)"
    )
    parser.add_argument("--output-dir", default="trapo-demo", help="where results.json, results.md and plots go")
    parser.add_argument("--cache-dir", default=None, help="where the warm-started base is cached ($TRAPO_CACHE)")


def parse_sweeps(items: list[str]) -> dict[str, tuple[float, ...]] | None:
    """``["alpha=0.01,0.1"]`` → ``{"alpha": (0.01, 0.1)}``; a malformed item is a ValueError naming it."""
    sweeps = {}
    for item in items:
        key, sep, values = item.partition("=")
        try:
            parsed = tuple(float(v) for v in values.split(",") if v.strip())
        except ValueError:
            parsed = ()
        if not sep or not key.strip() or not parsed:
            raise ValueError(f"--sweep {item!r}: expected KEY=V1,V2,... with numbers, e.g. alpha=0.01,0.1,0.3")
        sweeps[key.strip()] = parsed
    return sweeps or None


def settings_from_args(args: argparse.Namespace) -> DemoSettings:
    if args.methods is None:
        methods = DEMO_METHODS if args.tune else HEADLINE_METHODS
    elif args.methods.strip() == "all":
        methods = DEMO_METHODS
    else:
        methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    overrides = {
        "methods": methods,
        "seeds": args.seeds,
        "first_seed": args.first_seed,
        "output_dir": args.output_dir,
        "device": args.device,
        "sweep": parse_sweeps(args.sweep),
        "eval_split": args.eval_split,
    }
    optional = {
        "steps": args.steps,
        "learning_rate": args.learning_rate,
        "alpha": args.alpha,
        "warmup_steps": args.warmup_steps,
        "expert_order": args.expert_order,
        "expert_deviation": args.expert_deviation,
        "expert_mixture": args.expert_mixture,
        "temperature": args.temperature,
        "workers": args.workers,
        "cache_dir": args.cache_dir,
    }
    overrides.update({k: v for k, v in optional.items() if v is not None})
    return DemoSettings.quick(**overrides) if args.quick else DemoSettings(**overrides)


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from trapo.demo.runner import run as run_demo
    from trapo.local_runs import quiet_libraries

    settings = settings_from_args(args)
    quiet_libraries()
    if args.tune:
        return tune(settings)
    run_demo(settings)
    return 0


def tune(settings: DemoSettings) -> int:
    """``--tune``: the tuning procedure (`trapo.demo.tuning`), its record written to OUTPUT_DIR/tuning.json."""
    import json
    from pathlib import Path

    from trapo.demo.tuning import tune as run_tuning

    if settings.sweep:
        raise ValueError("--tune sweeps the learning rate itself; drop --sweep")
    record = run_tuning(settings)
    path = Path(settings.output_dir) / "tuning.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"\nchosen (copy into trapo/demo/settings.py TUNED): {json.dumps(record['chosen'])}\nrecord: {path}")
    return 0
