"""``trapo eval``: avg@k / pass@k of a model on the math benchmarks, with the paper's sampling settings."""

from __future__ import annotations

import argparse
import sys

from trapo.commands import positive_int
from trapo.data.text import PROMPT_STYLES

HELP = "avg@k / pass@k on the math benchmarks (paper defaults)"
DESCRIPTION = (
    "Sample k completions per benchmark problem and report avg@k and unbiased pass@k. Defaults are the paper's: "
    "temperature 0.6, top-p 1, 8192 new tokens, k = 32 on AIME/AMC and 1 elsewhere, the model's own (training) chat "
    "template."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model folder or Hub id")
    p.add_argument(
        "--data",
        action="append",
        default=[],
        metavar="FILE",
        help="held-out rows of your own (prompt, answer; .jsonl/.parquet), instead of the math benchmarks; repeatable",
    )
    p.add_argument(
        "--reward",
        default=None,
        metavar="MODULE:FUNCTION",
        help="grade with your TRL reward function (a sample is correct when it scores >= --reward-threshold) "
        "instead of Math-Verify on the boxed answer",
    )
    p.add_argument("--reward-threshold", type=float, default=0.5, help="reward at which a sample counts as correct")
    p.add_argument(
        "--benchmarks",
        default="paper",
        help="comma-separated: aime,amc,math,minerva,olympiad_bench,aime25,arc_c,mmlu_pro; 'paper' (the five math "
        "ones, the default) or 'all'",
    )
    p.add_argument(
        "--k", type=positive_int, default=None, help="samples per problem for every benchmark (default: paper's)"
    )
    p.add_argument(
        "--data-dir", default=None, help="folder of <benchmark>.parquet (default: ../shared/data/benchmarks)"
    )
    p.add_argument("--output-dir", default=None, help="where results go (default: runs/eval/<model name>)")
    p.add_argument("--backend", choices=("auto", "vllm", "hf"), default="auto", help="auto: vLLM when installed")
    p.add_argument("--temperature", type=float, default=0.6)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-tokens", type=positive_int, default=8192, help="new tokens per sample")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--limit", type=positive_int, default=None, help="first N (de-duplicated) problems of each benchmark"
    )
    p.add_argument("--chat-template", default=None, help="Jinja file replacing the model's chat template")
    p.add_argument("--drop-system", action="store_true", help="remove the benchmarks' system message")
    p.add_argument(
        "--prompt-style",
        choices=PROMPT_STYLES,
        default="dataset",
        help="trapo: rebuild each prompt as TRAPO's training prompt (configs/trapo_qwen2.5_math_7b.yaml trains on it); "
        "simplerl: the released evaluation's template for SFT-style and base models (2 bytes differ)",
    )
    p.add_argument("--rope-theta", type=float, default=None, help="context override at load (see trapo.models)")
    p.add_argument("--max-position-embeddings", type=int, default=None)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--batch-size", type=positive_int, default=32, help="HF backend: sequences per generate call")
    p.add_argument("--tensor-parallel-size", type=positive_int, default=1, help="vLLM backend")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9, help="vLLM backend")
    p.add_argument("--max-model-len", type=int, default=None, help="vLLM backend")
    p.add_argument(
        "--grading",
        choices=("trapo", "released"),
        default="trapo",
        help="trapo: Math-Verify on the last boxed answer after the last </think>; released: TRAPO's released "
        "eval script (after the first </think> when the prompt opens one, a missing one is wrong; Math-Verify on the "
        "whole text, then the OAT grader) (docs/method.md, Evaluation)",
    )
    p.add_argument("--grader-workers", type=int, default=None, help="Math-Verify worker processes (0: in-process)")
    p.add_argument("--grader-timeout", type=float, default=5.0, help="seconds per Math-Verify verification")


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from pathlib import Path

    from transformers import AutoTokenizer

    from trapo.eval import EvalSettings, Grader, evaluate, load_benchmark, parse_benchmarks, summarize, write_outputs
    from trapo.eval.backends import HFBackend, VLLMBackend, vllm_available
    from trapo.eval.benchmarks import load_rows
    from trapo.eval.grading import RewardGrader
    from trapo.eval.harness import markdown_table
    from trapo.models import with_context_overrides
    from trapo.preflight import check_model_path, import_reward

    if args.data:
        benchmarks = {Path(f).stem: load_rows(f, args.limit) for f in args.data}
    else:
        names = parse_benchmarks(args.benchmarks)
        benchmarks = {name: load_benchmark(name, args.data_dir, args.limit) for name in names}
    check_model_path(args.model)
    reward = import_reward(args.reward) if args.reward else None
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
    settings = EvalSettings(
        args.k, args.temperature, args.top_p, args.max_tokens, args.seed, args.drop_system, args.prompt_style
    )
    if reward is not None:
        grader = RewardGrader(reward, args.reward_threshold)
    else:
        grader = Grader(timeout=args.grader_timeout, num_workers=args.grader_workers, grading=args.grading)
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
