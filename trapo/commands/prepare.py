"""``trapo prepare``: OpenR1-Math-style rows (problem, answer, generations + correctness) → TRAPO training rows."""

from __future__ import annotations

import argparse
import sys

from trapo.commands import positive_int

HELP = "OpenR1-Math-style rows (problem, answer, generations + correctness) -> TRAPO training rows"
DESCRIPTION = (
    "Keep verified generations, use the reasoning inside <think>…</think>, drop traces over the token budget, keep up "
    "to --max-traces per problem. Every rejected row is reported with its index and reason (and written to "
    "<output>.rejected.jsonl)."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "input", help="a .parquet/.jsonl file, a save_to_disk folder or a Hub dataset (open-r1/OpenR1-Math-220k)"
    )
    p.add_argument("--output", required=True, help="output .jsonl or .parquet")
    p.add_argument("--split", default="train")
    p.add_argument("--config", default=None, help="Hub dataset configuration (OpenR1-Math-220k: default | extended)")
    p.add_argument("--tokenizer", default="Qwen/Qwen2.5-Math-7B", help="tokenizer that counts the budget's tokens")
    p.add_argument("--max-tokens", type=positive_int, default=8192, help="token budget of one trace")
    p.add_argument(
        "--max-prompt-tokens", type=int, default=1024, help="drop problems with longer prompts (0: no limit)"
    )
    p.add_argument("--max-traces", type=positive_int, default=2)
    p.add_argument(
        "--correct-columns",
        default="correctness_math_verify",
        help="comma-separated per-generation flags; a generation is verified when any is true",
    )
    p.add_argument(
        "--system-prompt", default=None, help="system message of the prompts (default: LUFFY's; '' for none)"
    )
    p.add_argument("--base", default=None, help="base rows (e.g. LUFFY's OpenR1-Math-46k-8192): their problems and "
                   "first traces, topped up with a trace from the input")  # fmt: skip
    p.add_argument(
        "--complement-of",
        default=None,
        metavar="BASE",
        help="keep only the problems that are not in BASE (held-out problems: the RL phase of SFT→RL)",
    )
    p.add_argument("--show", type=int, default=20, help="rejected rows printed (all are written to the file)")


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from transformers import AutoTokenizer

    from trapo.data import LUFFY_SYSTEM_PROMPT, PrepareOptions, load_training_rows, prepare_openr1, write_rows
    from trapo.data.loaders import read_table
    from trapo.data.prepare import complement_of, merge_with_base

    table = read_table(args.input, args.split, args.config)
    columns = set(table.column_names)
    if {"prompt", "answer", "expert"} <= columns and "generations" not in columns:
        raise ValueError(
            f"{args.input} already holds TRAPO rows (prompt, answer, expert): train on it directly (dataset_name in "
            "the config); trapo prepare converts OpenR1-style rows (problem, answer, generations)"
        )
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)

    def count_tokens(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    def count_prompt_tokens(messages: list[dict]) -> int:
        if tokenizer.chat_template:
            return len(tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True))
        return count_tokens("\n".join(m["content"] for m in messages))

    options = PrepareOptions(
        max_tokens=args.max_tokens,
        max_prompt_tokens=args.max_prompt_tokens or None,
        max_traces=args.max_traces,
        system_prompt=LUFFY_SYSTEM_PROMPT if args.system_prompt is None else (args.system_prompt or None),
        correct_columns=tuple(c.strip() for c in args.correct_columns.split(",") if c.strip()),
    )
    rows, report = prepare_openr1(table, count_tokens, options, count_prompt_tokens)
    for index, reason in report.rejected[: args.show]:
        print(f"row {index}: {reason}", file=sys.stderr)
    if len(report.rejected) > args.show:
        print(f"... {len(report.rejected) - args.show} more rejected rows", file=sys.stderr)
    if report.rejected:
        rejected_path = args.output + ".rejected.jsonl"
        write_rows([{"row": i, "reason": r} for i, r in report.rejected], rejected_path)
    summary = report.summary()
    if args.base and args.complement_of:
        raise ValueError("--base and --complement-of exclude each other: top up BASE's problems, or write the others")
    if args.complement_of:
        held_out = complement_of(load_training_rows(args.complement_of, expert_format="full"), rows)
        summary += f"; {len(rows) - len(held_out)} problems of {args.complement_of} left out, {len(held_out)} kept"
        rows = held_out
    if args.base:
        base = load_training_rows(args.base, expert_format="full")  # whole responses: both columns come from them
        rows, matched = merge_with_base(base, rows, args.max_traces)
        summary += f"; base {args.base}: {len(rows)} rows, {matched} topped up from the input"
    print(summary)
    if not rows:
        print("no rows kept: nothing written", file=sys.stderr)
        return 1
    write_rows(rows, args.output)
    print(f"wrote {len(rows)} rows to {args.output}", file=sys.stderr)
    return 0
