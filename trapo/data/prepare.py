"""``trapo prepare``: OpenR1-Math-style rows → TRAPO training rows (docs/method.md, "Data").

An input row has a problem, its answer and several generations with correctness flags (OpenR1-Math-220k:
``generations``, ``correctness_math_verify``, ``is_reasoning_complete``). A generation becomes an expert trace when it
is verified (any of the chosen flags is true), its reasoning is complete, it has a closed ``<think>`` block (only the
reasoning inside is kept) and that reasoning fits the token budget. Up to ``max_traces`` distinct traces are kept: the
paper uses two, the second for the full-trace stage. A row that yields no trace, or whose fields are malformed, is
rejected with its index and the reason; nothing is dropped silently.

``merge_with_base`` builds the paper's exact set: the problems of a base file (LUFFY's OpenR1-Math-46k-8192) with their
own trace first and a second verified trace from the prepared OpenR1-Math-220k rows.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from tqdm.auto import tqdm

from trapo.data.loaders import expert_text
from trapo.data.text import LUFFY_SYSTEM_PROMPT, chat_prompt, think_content, user_message

FULL_COLUMN = "expert_full"  # whole responses, for the sft, sft-then-grpo and luffy baselines


@dataclass
class PrepareOptions:
    """How generations are filtered. Defaults: the paper's data (≤ 8192-token traces, prompts ≤ 1024, two traces)."""

    max_tokens: int = 8192
    max_prompt_tokens: int | None = 1024
    max_traces: int = 2
    system_prompt: str | None = LUFFY_SYSTEM_PROMPT
    problem_column: str = "problem"
    answer_column: str = "answer"
    generations_column: str = "generations"
    correct_columns: tuple[str, ...] = ("correctness_math_verify",)
    complete_column: str | None = "is_reasoning_complete"


@dataclass
class PrepareReport:
    """What happened to every input row and generation."""

    rows_in: int = 0
    rows_kept: int = 0
    traces_kept: int = 0
    dropped_traces: Counter = field(default_factory=Counter)
    rejected: list[tuple[int, str]] = field(default_factory=list)
    single_trace_rows: int = 0

    def summary(self) -> str:
        dropped = ", ".join(f"{n} {reason}" for reason, n in self.dropped_traces.most_common()) or "none"
        single = ""
        if self.single_trace_rows:
            single = (
                f"; {self.single_trace_rows} rows have a single trace (the full-trace stage reuses it, so its start is "
                "imitated up to three times; docs/method.md)"
            )
        return (
            f"kept {self.rows_kept} of {self.rows_in} rows ({self.traces_kept} expert traces, "
            f"{self.traces_kept / max(self.rows_kept, 1):.2f} per row); rejected {len(self.rejected)} rows; "
            f"generations dropped: {dropped}{single}"
        )


def _flags(row: dict, column: str, n: int) -> list | None:
    """The per-generation flags of ``column`` (None when the row has none); raises when misaligned."""
    flags = row.get(column)
    if flags is None:
        return None
    if not isinstance(flags, list | tuple) or len(flags) != n:
        size = len(flags) if isinstance(flags, list | tuple) else type(flags).__name__
        raise ValueError(f"{column}: {size} flags for {n} generations")
    return list(flags)


def _row_traces(
    row: dict, options: PrepareOptions, count_tokens: Callable[[str], int], dropped: Counter
) -> list[tuple[str, str]]:
    """The kept traces of one row, each as (reasoning inside ``<think>``, whole response without the opening tag);
    raises ``ValueError`` (the rejection reason) when the row is malformed. The token budget applies to the whole
    response, which is what the SFT and LUFFY baselines train on."""
    generations = row.get(options.generations_column)
    if not isinstance(generations, list | tuple):
        raise ValueError(f"{options.generations_column}: expected a list of generations")
    n = len(generations)
    flag_lists = [f for f in (_flags(row, c, n) for c in options.correct_columns) if f is not None]
    if not flag_lists:
        raise ValueError(f"no correctness flags ({', '.join(options.correct_columns)})")
    complete = _flags(row, options.complete_column, n) if options.complete_column else None
    traces: list[tuple[str, str]] = []
    for j, generation in enumerate(generations):
        if len(traces) >= options.max_traces:
            break
        if not any(flags[j] is True for flags in flag_lists):
            dropped["unverified"] += 1
            continue
        if complete is not None and complete[j] is not True:
            dropped["incomplete reasoning"] += 1
            continue
        reasoning = think_content(generation) if isinstance(generation, str) else None
        if reasoning is None:
            dropped["no closed <think> block"] += 1
            continue
        if reasoning in (think for think, _ in traces):
            dropped["duplicate"] += 1
            continue
        full = expert_text(generation, "full")
        if count_tokens(full) > options.max_tokens:
            dropped[f"over {options.max_tokens} tokens"] += 1
            continue
        traces.append((reasoning, full))
    return traces


def prepare_openr1(
    rows: Iterable[dict],
    count_tokens: Callable[[str], int],
    options: PrepareOptions | None = None,
    count_prompt_tokens: Callable[[list[dict]], int] | None = None,
) -> tuple[list[dict], PrepareReport]:
    """Convert OpenR1-style rows; returns the TRAPO rows and a report with every rejected row's index and reason."""
    options = options or PrepareOptions()
    report, out = PrepareReport(), []
    total = len(rows) if hasattr(rows, "__len__") else None
    for i, row in enumerate(tqdm(rows, total=total, desc="prepare", unit="row")):
        report.rows_in += 1
        problem, answer = row.get(options.problem_column), row.get(options.answer_column)
        try:
            if not isinstance(problem, str) or not problem.strip():
                raise ValueError(f"{options.problem_column}: missing or empty")
            if answer is None or not str(answer).strip():
                raise ValueError(f"{options.answer_column}: missing or empty")
            prompt = chat_prompt(problem.strip(), options.system_prompt)
            if options.max_prompt_tokens and count_prompt_tokens is not None:
                n_prompt = count_prompt_tokens(prompt)
                if n_prompt > options.max_prompt_tokens:
                    raise ValueError(f"prompt: {n_prompt} tokens > {options.max_prompt_tokens}")
            dropped = Counter()
            traces = _row_traces(row, options, count_tokens, dropped)
            report.dropped_traces.update(dropped)
            if not traces:
                detail = ", ".join(f"{n} {reason}" for reason, n in dropped.items()) or "no generations"
                raise ValueError(f"no usable trace ({detail})")
        except ValueError as error:
            report.rejected.append((i, str(error)))
            continue
        out.append(_row(prompt, str(answer).strip(), traces))
        report.rows_kept += 1
        report.traces_kept += len(traces)
        report.single_trace_rows += len(traces) == 1
    return out, report


def _row(prompt, answer: str, traces: list[tuple[str, str]]) -> dict:
    """A training row: TRAPO's traces (reasoning only) in ``expert``, the baselines' (whole responses) in
    ``expert_full``, aligned."""
    return {"prompt": prompt, "answer": answer, "expert": [t for t, _ in traces], FULL_COLUMN: [f for _, f in traces]}


def _key(prompt) -> str:
    return re.sub(r"\s+", " ", user_message(prompt)).strip()


def merge_with_base(
    base_rows: Iterable[dict], extra_rows: Iterable[dict], max_traces: int = 2
) -> tuple[list[dict], int]:
    """Base rows (their prompt, answer and traces first) topped up with traces of the same problem from ``extra_rows``.

    Base traces are whole responses (LUFFY's verl files, loaded with ``expert_format="full"``); each becomes a
    reasoning-only trace in ``expert`` and a whole response in ``expert_full``, as `prepare_openr1` writes them.
    Problems are matched on the whitespace-normalised user message. Returns the rows and how many base rows found a
    match.
    """
    extra = {_key(r["prompt"]): list(zip(r["expert"], r[FULL_COLUMN], strict=True)) for r in extra_rows}
    merged, matched = [], 0
    for row in base_rows:
        traces = [(expert_text(t, "think"), expert_text(t, "full")) for t in row["expert"]]
        more = extra.get(_key(row["prompt"]))
        matched += more is not None
        unique = list(dict.fromkeys(traces + list(more or [])))[:max_traces]
        merged.append(_row(row["prompt"], row["answer"], unique))
    return merged, matched


def complement_of(base_rows: Iterable[dict], rows: Iterable[dict]) -> list[dict]:
    """The ``rows`` whose problem is not one of ``base_rows``' (matched as `merge_with_base` matches them): held-out
    problems, e.g. for the RL phase of LUFFY's SFT→RL, which trains on OpenR1-Math problems outside its 46k SFT set."""
    seen = {_key(r["prompt"]) for r in base_rows}
    return [r for r in rows if _key(r["prompt"]) not in seen]


def write_rows(rows: list[dict], path: str) -> None:
    """Write rows as JSON lines (``.jsonl``) or parquet (``.parquet``)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if path.endswith(".parquet"):
        from datasets import Dataset

        Dataset.from_list(rows).to_parquet(path)
    elif path.endswith(".jsonl"):
        with open(path, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    else:
        raise ValueError(f"{path}: write .jsonl or .parquet")
