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

logger = logging.getLogger("trapo")

COMMANDS = ("train", "eval", "prepare", "demo", "bench")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trapo", description="TRAPO: Trust-Region Adaptive Policy Optimization")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(COMMANDS) + "}")
    for name in COMMANDS:
        module = importlib.import_module(f"trapo.commands.{name}")
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
    except (ValueError, FileNotFoundError) as error:  # bad config, data or paths: the message says what to fix
        logger.debug("traceback", exc_info=True)
        print(f"trapo {args.command}: error: {error} (run with TRAPO_DEBUG=1 for the traceback)", file=sys.stderr)
        if os.environ.get("TRAPO_DEBUG"):
            raise
        return 2


if __name__ == "__main__":
    sys.exit(main())
