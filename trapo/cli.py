"""The ``trapo`` command: ``train``, ``eval``, ``prepare`` and ``demo`` (DESIGN.md §5).

Heavy imports (torch, TRL, the demo) happen inside each command, so ``trapo --help`` answers at once.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

logger = logging.getLogger("trapo")


# ---------------------------------------------------------------------------------------------------------- train
def _add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train with a YAML config (TRL style): trapo train --config configs/trapo_qwen2.5_math_7b.yaml",
        description="Train a model. Any TRAPOConfig / TRAPOSFTConfig field can be overridden after the config: "
        "TRL-style `--learning_rate 1e-6`, or `--set key=value` (YAML values, dotted keys such as sft.learning_rate).",
        allow_abbrev=False,
    )
    p.add_argument("--config", help="YAML config (see configs/)")
    p.add_argument("--dry-run", action="store_true", help="resolve and validate the config, print it, load nothing")
    p.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=None,
        metavar="CHECKPOINT",
        help="continue a stopped run: from the last complete checkpoint in output_dir, or from CHECKPOINT",
    )
    p.set_defaults(func=_train)


def _train(args, rest) -> int:
    from trapo.train_config import describe_plan, load_train_plan, run_train

    plan = load_train_plan(args.config, rest)
    if args.dry_run:
        print(describe_plan(plan))
        return 0
    return run_train(plan, resume=args.resume)


# ----------------------------------------------------------------------------------------------------------- eval
def _add_eval(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="avg@k / pass@k on the math benchmarks (paper defaults)",
        description="Sample k completions per benchmark problem and report avg@k and unbiased pass@k. Defaults are "
        "the paper's: temperature 0.6, top-p 1, 8192 new tokens, k = 32 on AIME/AMC and 1 elsewhere, the model's "
        "own (training) chat template.",
    )
    p.add_argument("--model", required=True, help="model folder or Hub id")
    p.add_argument(
        "--benchmarks",
        default="paper",
        help="comma-separated: aime,amc,math,minerva,olympiad_bench,aime25,arc_c; 'paper' (the five math ones, the "
        "default) or 'all'",
    )
    p.add_argument("--k", type=int, default=None, help="samples per problem for every benchmark (default: paper's)")
    p.add_argument(
        "--data-dir", default=None, help="folder of <benchmark>.parquet (default: ../shared/data/benchmarks)"
    )
    p.add_argument("--output-dir", default=None, help="where results go (default: runs/eval/<model name>)")
    p.add_argument("--backend", choices=("auto", "vllm", "hf"), default="auto", help="auto: vLLM when installed")
    p.add_argument("--temperature", type=float, default=0.6)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-tokens", type=int, default=8192, help="new tokens per sample")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="first N (de-duplicated) problems of each benchmark")
    p.add_argument("--chat-template", default=None, help="Jinja file replacing the model's chat template")
    p.add_argument("--drop-system", action="store_true", help="remove the benchmarks' system message")
    p.add_argument("--rope-theta", type=float, default=None, help="context override at load (see trapo.models)")
    p.add_argument("--max-position-embeddings", type=int, default=None)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--batch-size", type=int, default=32, help="HF backend: sequences per generate call")
    p.add_argument("--tensor-parallel-size", type=int, default=1, help="vLLM backend")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9, help="vLLM backend")
    p.add_argument("--max-model-len", type=int, default=None, help="vLLM backend")
    p.add_argument("--grader-workers", type=int, default=None, help="Math-Verify worker processes (0: in-process)")
    p.add_argument("--grader-timeout", type=float, default=5.0, help="seconds per Math-Verify verification")
    p.set_defaults(func=_eval)


def _eval(args, rest) -> int:
    from pathlib import Path

    from transformers import AutoTokenizer

    from trapo.eval import EvalSettings, Grader, evaluate, load_benchmark, parse_benchmarks, summarize, write_outputs
    from trapo.eval.backends import HFBackend, VLLMBackend, vllm_available
    from trapo.eval.harness import markdown_table
    from trapo.models import with_context_overrides

    names = parse_benchmarks(args.benchmarks)
    benchmarks = {name: load_benchmark(name, args.data_dir, args.limit) for name in names}
    output_dir = Path(args.output_dir or Path("runs") / "eval" / Path(args.model.rstrip("/")).name)
    model_path = with_context_overrides(
        args.model, output_dir / "model-view", args.rope_theta, args.max_position_embeddings
    )
    template = Path(args.chat_template).read_text() if args.chat_template else None
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    backend_name = args.backend if args.backend != "auto" else ("vllm" if vllm_available() else "hf")
    if backend_name == "vllm":
        backend = VLLMBackend(
            model_path,
            tokenizer,
            tensor_parallel_size=args.tensor_parallel_size,
            gpu_memory_utilization=args.gpu_memory_utilization,
            max_model_len=args.max_model_len,
            dtype=args.dtype,
            seed=args.seed,
        )
    else:
        backend = HFBackend.from_pretrained(model_path, dtype=args.dtype, batch_size=args.batch_size)
    settings = EvalSettings(args.k, args.temperature, args.top_p, args.max_tokens, args.seed, args.drop_system)
    grader = Grader(timeout=args.grader_timeout, num_workers=args.grader_workers)
    try:
        results = evaluate(benchmarks, backend, tokenizer, settings, grader, template)
    finally:
        grader.close()
    meta = {"model": args.model, "backend": backend_name, "chat_template": args.chat_template or "model"}
    summary = summarize(results, settings, meta)
    paths = write_outputs(results, summary, str(output_dir))
    print(markdown_table(results, summary), end="")
    print(f"wrote {', '.join(paths.values())}", file=sys.stderr)
    return 0


# -------------------------------------------------------------------------------------------------------- prepare
def _add_prepare(sub) -> None:
    p = sub.add_parser(
        "prepare",
        help="OpenR1-Math-style rows (problem, answer, generations + correctness) -> TRAPO training rows",
        description="Keep verified generations, use the reasoning inside <think>…</think>, drop traces over the token "
        "budget, keep up to --max-traces per problem. Every rejected row is reported with its index and reason "
        "(and written to <output>.rejected.jsonl).",
    )
    p.add_argument(
        "input", help="a .parquet/.jsonl file, a save_to_disk folder or a Hub dataset (open-r1/OpenR1-Math-220k)"
    )
    p.add_argument("--output", required=True, help="output .jsonl or .parquet")
    p.add_argument("--split", default="train")
    p.add_argument("--config", default=None, help="Hub dataset configuration (OpenR1-Math-220k: default | extended)")
    p.add_argument("--tokenizer", default="Qwen/Qwen2.5-Math-7B", help="tokenizer that counts the budget's tokens")
    p.add_argument("--max-tokens", type=int, default=8192, help="token budget of one trace")
    p.add_argument(
        "--max-prompt-tokens", type=int, default=1024, help="drop problems with longer prompts (0: no limit)"
    )
    p.add_argument("--max-traces", type=int, default=2)
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
    p.add_argument("--show", type=int, default=20, help="rejected rows printed (all are written to the file)")
    p.set_defaults(func=_prepare)


def _prepare(args, rest) -> int:
    from transformers import AutoTokenizer

    from trapo.data import LUFFY_SYSTEM_PROMPT, PrepareOptions, load_training_rows, prepare_openr1, write_rows
    from trapo.data.loaders import read_table
    from trapo.data.prepare import merge_with_base

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
    rows, report = prepare_openr1(
        read_table(args.input, args.split, args.config), count_tokens, options, count_prompt_tokens
    )
    for index, reason in report.rejected[: args.show]:
        print(f"row {index}: {reason}", file=sys.stderr)
    if len(report.rejected) > args.show:
        print(f"... {len(report.rejected) - args.show} more rejected rows", file=sys.stderr)
    if report.rejected:
        rejected_path = args.output + ".rejected.jsonl"
        write_rows([{"row": i, "reason": r} for i, r in report.rejected], rejected_path)
    summary = report.summary()
    if args.base:
        base = load_training_rows(args.base)
        rows, matched = merge_with_base(base, rows, args.max_traces)
        summary += f"; base {args.base}: {len(rows)} rows, {matched} topped up from the input"
    print(summary)
    if not rows:
        print("no rows kept: nothing written", file=sys.stderr)
        return 1
    write_rows(rows, args.output)
    print(f"wrote {len(rows)} rows to {args.output}", file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------------------------------------- demo
def _add_demo(sub, wanted: bool) -> None:
    """The demo's own arguments come from trapo.demo, imported only when ``demo`` is the command."""
    p = sub.add_parser("demo", help="train a tiny model on the built-in task with TRAPO and the baselines (CPU)")
    if not wanted:
        return
    try:
        from trapo.demo import add_demo_arguments, run_demo
    except ImportError as error:
        message = str(error)
        p.set_defaults(func=lambda args, rest: _unavailable(message))
        return
    add_demo_arguments(p)
    p.set_defaults(func=lambda args, rest: run_demo(args))


def _unavailable(message: str) -> int:
    print(f"trapo demo is unavailable: {message}", file=sys.stderr)
    return 1


# ---------------------------------------------------------------------------------------------------------- bench
def _add_bench(sub, argv: list[str] | None) -> None:
    """The bench's own arguments come from trapo.bench, imported only when ``bench`` is the command."""
    p = sub.add_parser("bench", help="per-step cost of TRAPO vs GRPO, side by side; writes docs/benchmarks.md")
    if not (argv and argv[0] == "bench"):
        return
    from trapo.bench import add_bench_arguments, run_cli

    add_bench_arguments(p)
    p.set_defaults(func=lambda args, rest: run_cli(args, argv))


# ----------------------------------------------------------------------------------------------------------- main
def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trapo", description="TRAPO: Trust-Region Adaptive Policy Optimization")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{train,eval,prepare,demo,bench}")
    _add_train(sub)
    _add_eval(sub)
    _add_prepare(sub)
    _add_demo(sub, wanted=bool(argv) and argv[0] == "demo")
    _add_bench(sub, argv)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = build_parser(argv)
    args, rest = parser.parse_known_args(argv)
    if rest and args.command != "train":
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if not hasattr(args, "func"):
        parser.error(f"{args.command}: nothing to run")
    try:
        return int(args.func(args, rest) or 0)
    except (ValueError, FileNotFoundError) as error:  # bad config, data or paths: the message says what to fix
        logger.debug("traceback", exc_info=True)
        print(f"trapo {args.command}: error: {error} (run with TRAPO_DEBUG=1 for the traceback)", file=sys.stderr)
        if os.environ.get("TRAPO_DEBUG"):
            raise
        return 2


if __name__ == "__main__":
    sys.exit(main())
