"""``trapo tiny-model``: a tiny random model and tokenizer saved locally, to try a pipeline end to end offline."""

from __future__ import annotations

import argparse

from trapo.commands import positive_int

HELP = "save a tiny random char-level model + tokenizer (no download) to try training and eval offline"
DESCRIPTION = (
    "Writes a randomly initialised Llama (character tokenizer, a few hundred thousand parameters) to --output. It "
    "learns nothing useful in a few steps: it is for checking that your data, reward and config run end to end "
    "before you spend GPU time (docs/own-data.md)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", required=True, help="folder to write the model and tokenizer to")
    parser.add_argument("--hidden-size", type=positive_int, default=64)
    parser.add_argument("--layers", type=positive_int, default=2)
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from pathlib import Path

    from trapo.preflight import check_writable
    from trapo.tasks.tiny_model import build_model, build_tokenizer

    check_writable(args.output)
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, hidden_size=args.hidden_size, num_layers=args.layers, seed=args.seed)
    model.save_pretrained(args.output)
    tokenizer.save_pretrained(args.output)
    params = sum(p.numel() for p in model.parameters())
    print(f"wrote a {params / 1e6:.2f}M-parameter random model and its tokenizer to {Path(args.output)}")
    return 0
