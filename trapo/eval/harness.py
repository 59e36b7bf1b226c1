"""The evaluation loop behind ``trapo eval``: render prompts, sample k completions per problem, grade, report.

Prompts are rendered with the model's own chat template (the one saved with it after training, i.e. the training
template) unless another template file is given; benchmark system messages are kept unless ``drop_system``.
Reported per benchmark: avg@k (the paper's score) and unbiased pass@k; plus the average of avg@k over the paper's five
math benchmarks when all five were run.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field

from tqdm.auto import tqdm

from trapo.data.text import restyle_prompt
from trapo.eval.backends import GenerationBackend
from trapo.eval.benchmarks import DISPLAY_NAMES, MATH_BENCHMARKS, PAPER_TRAPO, Problem, paper_k
from trapo.eval.grading import Grader
from trapo.eval.metrics import benchmark_scores


@dataclass
class EvalSettings:
    """Sampling settings; defaults are the paper's (temperature 0.6, top-p 1, 8192 new tokens)."""

    k: int | None = None  # samples per problem; None = the paper's (32 on AIME/AMC, 1 elsewhere)
    temperature: float = 0.6
    top_p: float = 1.0
    max_tokens: int = 8192
    seed: int = 0
    drop_system: bool = False
    prompt_style: str = "dataset"  # "trapo": TRAPO's training prompt, rebuilt from each problem (docs/method.md)


@dataclass
class BenchmarkResult:
    name: str
    problems: int
    k: int
    avg_at_k: float
    pass_at_k: float
    seconds: float
    samples: list[dict] = field(default_factory=list, repr=False)


def render_prompts(
    problems: list[Problem],
    tokenizer,
    chat_template: str | None = None,
    drop_system: bool = False,
    prompt_style: str = "dataset",
):
    """Chat prompts as text, through ``chat_template`` (a Jinja string) or the tokenizer's own template; with
    ``prompt_style="trapo"`` each prompt is first rebuilt as TRAPO's training prompt (`trapo.data.text.trapo_prompt`).
    """
    if all(p.text is not None for p in problems):
        return [p.text for p in problems]  # plain-text prompts: the model sees them as they are
    template = chat_template or tokenizer.chat_template
    if not template:
        raise ValueError(
            "the tokenizer has no chat template: pass --chat-template FILE (the template used in training, e.g. "
            "configs/chat_templates/qwen_think.jinja)"
        )
    rendered = []
    for problem in problems:
        if problem.text is not None:
            rendered.append(problem.text)
            continue
        messages = [
            m for m in restyle_prompt(problem.chat, prompt_style) if not (drop_system and m["role"] == "system")
        ]
        rendered.append(
            tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False, add_generation_prompt=True)
        )
    return rendered


def evaluate_benchmark(
    name: str,
    problems: list[Problem],
    backend: GenerationBackend,
    tokenizer,
    grader: Grader,
    settings: EvalSettings,
    chat_template: str | None = None,
) -> BenchmarkResult:
    k = settings.k or paper_k(name)
    start = time.monotonic()
    prompts = render_prompts(problems, tokenizer, chat_template, settings.drop_system, settings.prompt_style)
    completions = backend.generate(
        prompts,
        n=k,
        temperature=settings.temperature,
        top_p=settings.top_p,
        max_tokens=settings.max_tokens,
        seed=settings.seed,
    )
    if len(completions) != len(problems) or any(len(c) != k for c in completions):
        raise RuntimeError(f"{name}: the backend returned {[len(c) for c in completions]} samples, expected {k} each")
    graded = grader.grade(problems, completions, prompts)
    samples = []
    for problem, texts, (correct, extracted) in zip(problems, completions, graded, strict=True):
        for j, (text, ok, pred) in enumerate(zip(texts, correct, extracted, strict=True)):
            samples.append(
                {
                    "benchmark": name,
                    "problem": problem.index,
                    "sample": j,
                    "question": problem.question,
                    "answer": problem.answer,
                    "completion": text,
                    "extracted": pred,
                    "correct": bool(ok),
                }
            )
    scores = benchmark_scores([c for c, _ in graded], k)
    return BenchmarkResult(
        name, len(problems), k, scores[f"avg@{k}"], scores[f"pass@{k}"], time.monotonic() - start, samples
    )


def evaluate(
    benchmarks: dict[str, list[Problem]],
    backend: GenerationBackend,
    tokenizer,
    settings: EvalSettings | None = None,
    grader: Grader | None = None,
    chat_template: str | None = None,
) -> list[BenchmarkResult]:
    """Every benchmark in turn (one backend call each, so vLLM batches a whole benchmark)."""
    settings = settings or EvalSettings()
    own_grader = grader is None
    grader = grader or Grader()
    try:
        results = []
        for name, problems in tqdm(benchmarks.items(), desc="benchmarks", unit="benchmark"):
            results.append(evaluate_benchmark(name, problems, backend, tokenizer, grader, settings, chat_template))
        return results
    finally:
        if own_grader:
            grader.close()


def summarize(results: list[BenchmarkResult], settings: EvalSettings, meta: dict | None = None) -> dict:
    """JSON-ready summary; ``average`` is the mean avg@k over the paper's five math benchmarks (None unless all ran)."""
    by_name = {r.name: r for r in results}
    average = None
    if all(name in by_name for name in MATH_BENCHMARKS):
        average = sum(by_name[name].avg_at_k for name in MATH_BENCHMARKS) / len(MATH_BENCHMARKS)
    return {
        "settings": asdict(settings),
        **(meta or {}),
        "benchmarks": {
            r.name: {
                "problems": r.problems,
                "k": r.k,
                f"avg@{r.k}": r.avg_at_k,
                f"pass@{r.k}": r.pass_at_k,
                "seconds": round(r.seconds, 2),
            }
            for r in results
        },
        "average_5_math": average,
    }


def markdown_table(results: list[BenchmarkResult], summary: dict) -> str:
    """Scores in percent, with the paper's TRAPO numbers alongside for comparison."""
    lines = [
        "| benchmark | problems | k | avg@k (%) | pass@k (%) | paper TRAPO avg@k (%) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        paper = PAPER_TRAPO.get(r.name)
        lines.append(
            f"| {DISPLAY_NAMES.get(r.name, r.name)} | {r.problems} | {r.k} | {100 * r.avg_at_k:.1f} | "
            f"{100 * r.pass_at_k:.1f} | {'' if paper is None else f'{paper:.1f}'} |"
        )
    if summary["average_5_math"] is not None:
        lines.append(
            f"| **average (5 math)** | | | **{100 * summary['average_5_math']:.1f}** | | {PAPER_TRAPO['average']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def write_outputs(results: list[BenchmarkResult], summary: dict, output_dir: str) -> dict[str, str]:
    """``summary.json``, ``results.md`` and ``samples.jsonl`` (every sample, for inspection) under ``output_dir``."""
    os.makedirs(output_dir, exist_ok=True)
    paths = {name: os.path.join(output_dir, name) for name in ("summary.json", "results.md", "samples.jsonl")}
    with open(paths["summary.json"], "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    with open(paths["results.md"], "w", encoding="utf-8") as f:
        f.write(markdown_table(results, summary))
    with open(paths["samples.jsonl"], "w", encoding="utf-8") as f:
        for r in results:
            for sample in r.samples:
                f.write(json.dumps(sample, ensure_ascii=False) + "\n")
    return paths
