"""The ``trapo`` command: a thin dispatcher over `trapo.commands` (TRL's ``trl`` CLI pattern).

Each command is one module under ``trapo/commands/`` with ``HELP`` (and optionally ``DESCRIPTION``),
``add_arguments(parser)`` and ``run(args, extra) -> int``; ``ACCEPTS_EXTRA_ARGS = True`` lets a command take
options it does not declare (``trapo train``'s TRL-style ``--field value`` overrides). Command modules import their
heavy dependencies inside ``run``, so ``trapo --help`` answers at once.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from trapo.preflight import RewardError

logger = logging.getLogger("trapo")

COMMANDS = ("train", "eval", "prepare", "demo", "bench", "tiny-model")
# Errors that mean the user's input is wrong (a config, a path, a dataset, a reward): one line, no traceback.
USER_ERRORS = (ValueError, OSError, ImportError, RewardError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trapo", description="TRAPO: Trust-Region Adaptive Policy Optimization")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(COMMANDS) + "}")
    for name in COMMANDS:
        module = importlib.import_module(f"trapo.commands.{name.replace('-', '_')}")
        p = sub.add_parser(
            name, help=module.HELP, description=getattr(module, "DESCRIPTION", module.HELP), allow_abbrev=False
        )
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    module = args._module
    if extra and not getattr(module, "ACCEPTS_EXTRA_ARGS", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.command_line = "trapo " + " ".join(argv)
    try:
        return int(module.run(args, extra) or 0)
    except KeyboardInterrupt:
        if args.debug or os.environ.get("TRAPO_DEBUG"):
            raise
        hint = getattr(module, "INTERRUPT_HINT", "")
        print(f"\ntrapo {args.command}: interrupted{'; ' + hint if hint else ''}", file=sys.stderr)
        return 130
    except USER_ERRORS as error:  # bad config, data, paths or reward: the message says what to fix
        if args.debug or os.environ.get("TRAPO_DEBUG"):
            raise
        message = " ".join(str(error).split()) if "\n" not in str(error).strip() else str(error).strip()
        fresh_line = "\n" if sys.stderr.isatty() else ""  # a progress bar may have left the cursor mid-line
        print(f"{fresh_line}trapo {args.command}: error: {message} (--debug shows the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
