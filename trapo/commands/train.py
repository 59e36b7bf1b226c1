"""``trapo train --config FILE.yaml``: resolve a TRL-style YAML config (`trapo.train_plan`), then train it."""

from __future__ import annotations

import argparse

HELP = "train with a YAML config (TRL style): trapo train --config configs/trapo_qwen2.5_math_7b.yaml"
DESCRIPTION = (
    "Train a model. Any TRAPOConfig / TRAPOSFTConfig field can be overridden after the config: TRL-style "
    "`--learning_rate 1e-6`, or `--set key=value` (YAML values, dotted keys such as sft.learning_rate)."
)
ACCEPTS_EXTRA_ARGS = True  # TRL-style `--field value` overrides, parsed by TrlParser
# After Ctrl-C: checkpoints are complete or ignored (trapo.checkpointing), so the last complete one is safe to resume.
INTERRUPT_HINT = "continue from the last complete checkpoint with the same command and --resume"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config (see configs/)")
    parser.add_argument(
        "--dry-run", action="store_true", help="resolve and validate the config, print it, load nothing"
    )
    parser.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=None,
        metavar="CHECKPOINT",
        help="continue a stopped run: from the last complete checkpoint in output_dir, or from CHECKPOINT",
    )


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from trapo.train_plan import describe_plan, load_train_plan, run_train

    plan = load_train_plan(args.config, extra)
    if args.dry_run:
        plan.rewards()  # importable, or the dry run fails as the real one would
        print(describe_plan(plan))
        return 0
    return run_train(plan, resume=args.resume)
