"""The CLI's commands, one module each (train, eval, prepare, demo, bench, tiny-model): ``add_arguments`` + ``run``."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """An argparse type: an integer ≥ 1 (a count of samples, tokens, steps, …), else argparse's one-line error."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
