"""Benchmark evaluation (docs/method.md, "Evaluation"): avg@k and unbiased pass@k, vLLM or Hugging Face generation,
Math-Verify."""

from trapo.eval.backends import GenerationBackend, HFBackend, VLLMBackend, vllm_available
from trapo.eval.benchmarks import ALL_BENCHMARKS, MATH_BENCHMARKS, Problem, load_benchmark, parse_benchmarks
from trapo.eval.grading import Grader, extract_choice
from trapo.eval.harness import EvalSettings, evaluate, markdown_table, render_prompts, summarize, write_outputs
from trapo.eval.metrics import avg_at_k, benchmark_scores, pass_at_k

__all__ = [
    "ALL_BENCHMARKS",
    "EvalSettings",
    "GenerationBackend",
    "Grader",
    "HFBackend",
    "MATH_BENCHMARKS",
    "Problem",
    "VLLMBackend",
    "avg_at_k",
    "benchmark_scores",
    "evaluate",
    "extract_choice",
    "load_benchmark",
    "markdown_table",
    "pass_at_k",
    "parse_benchmarks",
    "render_prompts",
    "summarize",
    "vllm_available",
    "write_outputs",
]
