"""The evaluation benchmarks (verl layout, docs/method.md, "Evaluation"): loading, de-duplication, paper defaults.

The shipped parquet files repeat some problems (AIME: 30 problems × 32 copies) so that one sample per row gives
avg@32. Here each problem is kept once and sampled k times instead, which gives the same estimate and lets pass@k be
computed per problem. Copies must agree on the answer; a conflict is an error, not a silent choice.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

# The paper's 5-benchmark average (docs/method.md, "Evaluation"), then the extra ones.
MATH_BENCHMARKS = ("aime", "amc", "math", "minerva", "olympiad_bench")
ALL_BENCHMARKS = (*MATH_BENCHMARKS, "aime25", "arc_c")  # the shipped ones ("all")
BROUGHT_BENCHMARKS = ("mmlu_pro",)  # known, but a user brings the file (load_mmlu_pro); chosen by name only
CHOICE_BENCHMARKS = frozenset({"arc_c", "mmlu_pro"})
MMLU_PRO_LABELS = tuple("ABCDEFGHIJ")  # up to 10 options
DISPLAY_NAMES = {
    "aime": "AIME24",
    "amc": "AMC",
    "math": "MATH-500",
    "minerva": "Minerva",
    "olympiad_bench": "OlympiadBench",
    "aime25": "AIME25",
    "arc_c": "ARC-c",
    "mmlu_pro": "MMLU-Pro",
}
# Samples per problem in the paper: avg@32 on AIME24 and AMC (and AIME25, same size), one sample elsewhere.
PAPER_K = {"aime": 32, "amc": 32, "aime25": 32}
# TRAPO's published scores (Qwen2.5-Math-7B, docs/method.md, "Evaluation"), for the comparison column of the report.
PAPER_TRAPO = {"aime": 28.3, "amc": 66.2, "math": 89.2, "minerva": 41.5, "olympiad_bench": 57.6, "average": 56.6}
BENCHMARK_DIR_ENV = "TRAPO_BENCHMARK_DIR"
_CHOICE_LINE = re.compile(r"^\s*\(?([A-Z]|[1-9])\)\s+\S", re.MULTILINE)


@dataclass(frozen=True)
class Problem:
    """One de-duplicated benchmark problem."""

    benchmark: str
    index: int
    messages: tuple[tuple[str, str], ...]  # (role, content) pairs: hashable, in order
    answer: str
    copies: int = 1
    choices: tuple[str, ...] = ()  # option labels of a multiple-choice question, e.g. ("A", "B", "C", "D")
    text: str | None = None  # a plain-text prompt (own data), given to the model as it is, without a chat template
    columns: dict | None = field(default=None, compare=False)  # own data: the row's other columns, for its reward

    @property
    def chat(self) -> list[dict]:
        return [{"role": role, "content": content} for role, content in self.messages]

    @property
    def question(self) -> str:
        return next((c for r, c in reversed(self.messages) if r == "user"), "")


def paper_k(name: str) -> int:
    return PAPER_K.get(name, 1)


def default_data_dir() -> Path:
    """``$TRAPO_BENCHMARK_DIR``, else ``../shared/data/benchmarks`` from the working directory or the repository."""
    if os.environ.get(BENCHMARK_DIR_ENV):
        return Path(os.environ[BENCHMARK_DIR_ENV])
    candidates = [
        Path.cwd() / "../shared/data/benchmarks",
        Path(__file__).resolve().parents[2] / "../shared/data/benchmarks",
    ]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.resolve()
    raise FileNotFoundError(
        f"no benchmark folder found (tried {', '.join(str(c) for c in candidates)}); pass --data-dir or set "
        f"{BENCHMARK_DIR_ENV}"
    )


def parse_benchmarks(spec: str | list[str] | None) -> list[str]:
    """``"aime,amc"`` → ["aime", "amc"]; None or "paper" → the five math benchmarks; "all" → every shipped one."""
    if spec is None or spec == "paper":
        return list(MATH_BENCHMARKS)
    if spec == "all":
        return list(ALL_BENCHMARKS)
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    known = (*ALL_BENCHMARKS, *BROUGHT_BENCHMARKS)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown benchmark(s) {unknown}; choose from {', '.join(known)} (or paper, all)")
    return list(dict.fromkeys(names))


def load_benchmark(name: str, data_dir: str | Path | None = None, limit: int | None = None) -> list[Problem]:
    """The de-duplicated problems of ``<data_dir>/<name>.parquet`` in file order (the first ``limit`` if given)."""
    import pandas as pd
    import pyarrow.parquet as pq

    path = Path(data_dir or default_data_dir()) / f"{name}.parquet"
    if not path.is_file():
        raise FileNotFoundError(
            f"benchmark {name!r}: {path} not found; pass --data-dir with the folder of <benchmark>.parquet files"
        )
    if name == "mmlu_pro" and "question" in pq.read_schema(path).names:  # its public layout, not verl's
        return load_mmlu_pro(path, limit)
    try:
        frame = pd.read_parquet(path, columns=["prompt", "reward_model"])
    except Exception as error:  # pyarrow's errors name neither the file nor the fix
        raise ValueError(
            f"benchmark {name!r}: {path} is not a readable parquet file with 'prompt' and 'reward_model' columns "
            f"({type(error).__name__}: {error}); copy it again from the source"
        ) from error
    answers: dict[tuple, str] = {}
    copies: dict[tuple, int] = {}
    for i, (prompt, reward_model) in enumerate(zip(frame["prompt"], frame["reward_model"], strict=True)):
        key = tuple((str(m["role"]), str(m["content"])) for m in prompt)
        answer = str(reward_model["ground_truth"]).strip()
        if key in answers and answers[key] != answer:
            raise ValueError(
                f"{path}: row {i} repeats a problem with a different answer ({answer!r} vs {answers[key]!r})"
            )
        answers.setdefault(key, answer)
        copies[key] = copies.get(key, 0) + 1
    problems = []
    for index, (key, answer) in enumerate(answers.items()):
        if limit is not None and index >= limit:
            break
        question = next((c for r, c in reversed(key) if r == "user"), "")
        choices = tuple(_CHOICE_LINE.findall(question)) if name in CHOICE_BENCHMARKS else ()
        problems.append(Problem(name, index, key, answer, copies[key], choices))
    return problems


def load_rows(path: str | Path, limit: int | None = None) -> list[Problem]:
    """Held-out problems of one's own, from a file of training-style rows (``prompt``: text or chat messages,
    ``answer``): ``trapo eval --data FILE``. The benchmark is named after the file."""
    from trapo.data.loaders import read_table

    path = Path(path)
    table = read_table(str(path))
    missing = [c for c in ("prompt", "answer") if c not in table.column_names]
    if missing:
        raise ValueError(f"{path}: needs columns prompt and answer (has {table.column_names}); missing {missing}")
    problems = []
    for i, row in enumerate(table):
        if limit is not None and i >= limit:
            break
        prompt, answer = row["prompt"], row["answer"]
        if answer is None or not str(answer).strip():
            raise ValueError(f"{path}: row {i}: answer is missing or empty")
        columns = {k: v for k, v in row.items() if k != "prompt"}
        if isinstance(prompt, str):
            problems.append(
                Problem(path.stem, i, (("user", prompt),), str(answer).strip(), text=prompt, columns=columns)
            )
        elif isinstance(prompt, list) and all(isinstance(m, dict) and "role" in m for m in prompt):
            messages = tuple((str(m["role"]), str(m["content"])) for m in prompt)
            problems.append(Problem(path.stem, i, messages, str(answer).strip(), columns=columns))
        else:
            raise ValueError(f"{path}: row {i}: prompt must be text or a list of chat messages, got {prompt!r:.60}")
    if not problems:
        raise ValueError(f"{path}: no rows")
    return problems


def load_mmlu_pro(path: str | Path, limit: int | None = None) -> list[Problem]:
    """MMLU-Pro in its public layout (TIGER-Lab/MMLU-Pro, ``test`` split: ``question``, ``options`` a list of up to 10
    strings, ``answer`` the letter), one user message per question: the question, then one ``(A) option`` line per
    option. It cannot be fetched here: download the split's parquet (``huggingface-cli download TIGER-Lab/MMLU-Pro
    --repo-type dataset``) and save it as ``<data-dir>/mmlu_pro.parquet`` (docs/method.md, "Evaluation")."""
    import pandas as pd

    frame = pd.read_parquet(path)
    missing = [c for c in ("question", "options", "answer") if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: MMLU-Pro needs columns question, options and answer; missing {missing}")
    problems = []
    for i, (question, options, answer) in enumerate(zip(frame["question"], frame["options"], frame["answer"],
                                                        strict=True)):  # fmt: skip
        if limit is not None and i >= limit:
            break
        options = [str(o) for o in options]
        if not 2 <= len(options) <= len(MMLU_PRO_LABELS):
            raise ValueError(f"{path}: row {i} has {len(options)} options; MMLU-Pro has 2 to 10")
        labels = MMLU_PRO_LABELS[: len(options)]
        answer = str(answer).strip()
        if answer not in labels:
            raise ValueError(f"{path}: row {i}: answer {answer!r} is not one of its option letters {labels}")
        text = str(question).strip() + "\n" + "\n".join(f"({label}) {o}" for label, o in zip(labels, options,
                                                                                             strict=True))  # fmt: skip
        problems.append(Problem("mmlu_pro", i, (("user", text),), answer, choices=labels))
    return problems
