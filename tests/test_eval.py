"""trapo.eval: pass@k / avg@k math, benchmark de-duplication, choice grading, the harness on a backend whose outputs
are known, and `trapo eval` end to end with the tiny model on a 3-problem slice of every shipped benchmark."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import torch

from trapo.cli import main
from trapo.eval import (
    ALL_BENCHMARKS,
    EvalSettings,
    GenerationBackend,
    Grader,
    avg_at_k,
    evaluate,
    extract_choice,
    load_benchmark,
    pass_at_k,
    summarize,
)
from trapo.eval.benchmarks import default_data_dir

SLICES = Path(__file__).parent / "fixtures" / "benchmarks"
TRIVIAL_TEMPLATE = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}A: {% endif %}"
SHIPPED_SIZES = {"aime": 30, "aime25": 30, "amc": 83, "math": 500, "minerva": 272, "olympiad_bench": 675, "arc_c": 1172}


@pytest.fixture(autouse=True)
def one_thread():
    """Two shared cores: OpenMP threads spinning against each other make tiny-model generation ~100x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def brute_force_pass_at_k(n: int, c: int, k: int) -> float:
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(samples, k))
    return sum(any(s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n,c,k", [(n, c, k) for n in range(1, 7) for c in range(n + 1) for k in range(1, n + 1)])
def test_pass_at_k_is_the_unbiased_estimator(n, c, k):
    assert math.isclose(pass_at_k(n, c, k), brute_force_pass_at_k(n, c, k), abs_tol=1e-12)


def test_pass_at_k_values_and_errors():
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)  # 1 - C(3,2)/C(5,2)
    assert pass_at_k(32, 8, 1) == pytest.approx(0.25)
    assert pass_at_k(1000, 1, 1000) == 1.0 and pass_at_k(1000, 0, 10) == 0.0
    assert avg_at_k([True, False, True, True]) == 0.75
    for bad in [(4, 5, 1), (4, 1, 5), (4, 1, 0)]:
        with pytest.raises(ValueError):
            pass_at_k(*bad)


class FakeBackend:
    """Problem i's prompt gets ``correct[i]`` right answers (``\\boxed{answer}``) then wrong ones, in that order."""

    def __init__(self, answers: dict[str, str], correct: dict[str, int]):
        self.answers, self.correct, self.calls = answers, correct, []

    def generate(self, prompts, n, temperature, top_p, max_tokens, seed):
        self.calls.append({"n": n, "temperature": temperature, "top_p": top_p, "max_tokens": max_tokens})
        out = []
        for prompt in prompts:
            key = next(q for q in self.answers if q in prompt)
            right = f"<think>reasoning \\boxed{{0}}</think> so \\boxed{{{self.answers[key]}}}"
            out.append([right] * self.correct[key] + ["\\boxed{-1}"] * (n - self.correct[key]))
        return out


def templated_tokenizer():
    from trapo.tasks.tiny_model import build_tokenizer

    tokenizer = build_tokenizer()
    tokenizer.chat_template = TRIVIAL_TEMPLATE
    return tokenizer


def test_harness_metrics_on_known_outputs():
    tokenizer = templated_tokenizer()
    problems = load_benchmark("aime", SLICES)
    answers = {p.question: p.answer for p in problems}
    correct = dict(zip(answers, [0, 1, 4], strict=True))
    backend = FakeBackend(answers, correct)
    assert isinstance(backend, GenerationBackend)
    settings = EvalSettings(k=4, max_tokens=16)
    grader = Grader(num_workers=0)
    (result,) = evaluate({"aime": problems}, backend, tokenizer, settings, grader)
    assert backend.calls == [{"n": 4, "temperature": 0.6, "top_p": 1.0, "max_tokens": 16}]
    assert result.k == 4 and result.problems == 3
    assert result.avg_at_k == pytest.approx((0 + 1 / 4 + 1) / 3)
    assert result.pass_at_k == pytest.approx(2 / 3)
    assert [s["correct"] for s in result.samples[4:8]] == [True, False, False, False]
    assert result.samples[4]["extracted"] == problems[1].answer  # graded after </think>, not the box inside

    # default k is the paper's: 32 samples on AIME
    (paper,) = evaluate({"aime": problems}, backend, tokenizer, EvalSettings(max_tokens=16), grader)
    assert paper.k == 32 and paper.avg_at_k == pytest.approx((0 + 1 / 32 + 4 / 32) / 3)
    assert paper.pass_at_k == pytest.approx(2 / 3)
    summary = summarize([result], settings)
    assert summary["benchmarks"]["aime"]["avg@4"] == pytest.approx(result.avg_at_k)
    assert summary["average_5_math"] is None  # only when all five ran


@pytest.mark.parametrize(
    "text,labels,expected",
    [
        ("Reasoning... so the answer is \\boxed{C}.", "ABCD", "C"),
        ("\\boxed{\\text{(B)}}", "ABCD", "B"),
        ("\\boxed{D) Planetary gravity}", "ABCD", "D"),
        ("A planet spins. The answer is (B).", "ABCD", "B"),
        ("Answer: D", "ABCD", "D"),
        ("I think it is C, no wait, A", "ABCD", "A"),
        ("<think>maybe \\boxed{A}</think> The correct choice is C.", "ABCD", "C"),
        ("the answer is 4", "1234", "4"),
        ("no option here", "ABCD", None),
        ("\\boxed{E}", "ABCD", None),
    ],
)
def test_extract_choice(text, labels, expected):
    assert extract_choice(text, tuple(labels)) == expected


def test_benchmark_slices_are_deduplicated():
    for name in ALL_BENCHMARKS:
        problems = load_benchmark(name, SLICES)
        assert len(problems) == 3, name
        assert len({p.messages for p in problems}) == 3
    aime = load_benchmark("aime", SLICES)
    assert [p.copies for p in aime] == [32, 32, 32] and aime[0].answer == "204"
    arc = load_benchmark("arc_c", SLICES)
    assert arc[0].choices == ("A", "B", "C", "D") and arc[0].answer in arc[0].choices


def test_shipped_benchmarks_have_the_documented_sizes():
    try:
        data_dir = default_data_dir()
    except FileNotFoundError:
        pytest.skip("the shared benchmark folder is not present")
    for name, size in SHIPPED_SIZES.items():
        problems = load_benchmark(name, data_dir)
        assert len(problems) == size, name
        if name == "arc_c":
            assert all(p.answer in p.choices for p in problems)


def test_trapo_eval_end_to_end_with_the_tiny_model(tmp_path, capsys):
    from trapo.tasks.tiny_model import build_model

    model_dir = tmp_path / "tiny"
    tokenizer = templated_tokenizer()  # a trivial chat template: the "model's own template" path
    build_model(tokenizer, hidden_size=32, num_layers=1, num_heads=2, max_positions=2048).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    out = tmp_path / "eval"
    argv = ["eval", "--model", str(model_dir), "--benchmarks", "all", "--k", "2", "--max-tokens", "16"]
    argv += ["--data-dir", str(SLICES), "--backend", "hf", "--grader-workers", "0", "--output-dir", str(out)]
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "| AIME24 | 3 | 2 |" in table and "| ARC-c | 3 | 2 |" in table and "average (5 math)" in table
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["benchmarks"]) == set(ALL_BENCHMARKS)
    assert summary["settings"]["temperature"] == 0.6 and summary["settings"]["top_p"] == 1.0
    assert summary["backend"] == "hf" and 0.0 <= summary["average_5_math"] <= 1.0
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == len(ALL_BENCHMARKS) * 3 * 2
    assert {(s["benchmark"], s["problem"], s["sample"]) for s in samples} == {
        (b, p, j) for b in ALL_BENCHMARKS for p in range(3) for j in range(2)
    }
    assert all(isinstance(s["completion"], str) and isinstance(s["correct"], bool) for s in samples)
    assert (out / "results.md").read_text().startswith("| benchmark |")


def test_trapo_help_and_unknown_benchmark(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    assert "eval" in capsys.readouterr().out
    assert main(["eval", "--model", "x", "--benchmarks", "gsm8k", "--data-dir", str(SLICES)]) == 2
    assert "unknown benchmark" in capsys.readouterr().err


def test_trapo_prompt_style_renders_the_training_prompt():
    from trapo.eval.benchmarks import Problem
    from trapo.eval.harness import render_prompts
    from trapo.tasks.tiny_model import build_tokenizer

    tokenizer = build_tokenizer()
    template = (Path(__file__).parent.parent / "configs/chat_templates/qwen_plain.jinja").read_text()
    chat = [{"role": "system", "content": "LUFFY's long system prompt"}, {"role": "user", "content": "What is 2+2?"}]
    problem = Problem(benchmark="toy", index=0, messages=tuple((m["role"], m["content"]) for m in chat), answer="4")
    (dataset,) = render_prompts([problem], tokenizer, template)
    (trapo,) = render_prompts([problem], tokenizer, template, prompt_style="trapo")
    assert "LUFFY's long system prompt" in dataset and "LUFFY" not in trapo
    assert trapo.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>")
    assert "What is 2+2?\nPlease reason step by step" in trapo and trapo.endswith("<|im_start|>assistant\n")


def test_missing_or_corrupt_benchmark_file(tmp_path):
    from trapo.eval.benchmarks import load_benchmark

    with pytest.raises(FileNotFoundError, match=r"benchmark 'aime': .*aime.parquet not found; pass --data-dir"):
        load_benchmark("aime", tmp_path)
    (tmp_path / "aime.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(ValueError, match="not a readable parquet file"):
        load_benchmark("aime", tmp_path)
