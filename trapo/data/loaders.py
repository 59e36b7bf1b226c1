"""Training rows from the layouts in circulation, all turned into TRAPO's ``prompt`` / ``answer`` / ``expert``.

- TRAPO rows: ``prompt`` (text or chat messages), ``answer``, ``expert`` (list of solution strings): kept as they are.
- verl / LUFFY parquet: ``prompt`` (chat list), ``reward_model.ground_truth``, expert traces in ``target`` (a list of
  assistant messages or strings), ``extra_info.target`` or ``extra_info.answer_list``.
- OpenR1-Math rows (``problem`` + ``generations``) need a tokenizer and correctness flags: ``trapo prepare``.

Expert traces keep only the reasoning inside ``<think>…</think>`` by default (``expert_format="think"``,
docs/method.md, "Data"); a trace without that block is kept whole. ``expert_format="full"`` keeps every trace whole.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable

from datasets import Dataset, load_dataset, load_from_disk

from trapo.data.text import think_content, without_think_open
from trapo.data.validation import validate_rows

EXPERT_FORMATS = ("think", "full")


def read_table(path_or_name: str, split: str = "train", config: str | None = None) -> Dataset:
    """A local .parquet / .jsonl / .json file, a ``save_to_disk`` folder, or a Hugging Face Hub dataset (one split)."""
    path = os.path.expanduser(str(path_or_name))
    if os.path.isfile(path):
        if path.endswith(".parquet"):
            return Dataset.from_parquet(path)
        if path.endswith((".jsonl", ".json")):
            # A bad line would surface as datasets' generic DatasetGenerationError after a logged traceback: find it
            # first (one pass of json.loads, seconds for a large file) and name it.
            problem = json_lines_error(path) if path.endswith(".jsonl") else None
            if problem is not None:
                raise ValueError(f"{path}: {problem}")
            return Dataset.from_json(path)
        raise ValueError(f"{path}: unsupported file type; use .parquet, .jsonl or .json")
    if os.path.isdir(path) and os.path.exists(os.path.join(path, "state.json")):
        return load_from_disk(path)
    return load_dataset(path, config, split=split)


def json_lines_error(path: str) -> str | None:
    """The first line of a JSON-lines file that is not one JSON object, as ``line N: reason``; None when all are."""
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as error:
                return f"line {number} is not valid JSON ({error.msg} at column {error.colno}): {line.strip()[:80]!r}"
            if not isinstance(value, dict):
                return f"line {number} is a JSON {type(value).__name__}, not an object with the row's fields"
    return None


def _trace_texts(value) -> list[str]:
    """Strings out of a trace field: a string, a message dict, or a list of either."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        content = value.get("content")
        return [content] if isinstance(content, str) else []
    if isinstance(value, list | tuple):
        return [text for item in value for text in _trace_texts(item)]
    return []


def expert_text(trace: str, expert_format: str = "think") -> str:
    """The part of a trace used for imitation: its ``<think>`` reasoning (``think``: TRAPO's prefixes) or the whole
    response (``full``: the SFT and LUFFY baselines' data), without an opening ``<think>`` (the chat template's
    generation prompt opens the block, as LUFFY's ``prepare_sft.py`` assumes)."""
    if expert_format not in EXPERT_FORMATS:
        raise ValueError(f"expert_format must be one of {EXPERT_FORMATS}, got {expert_format!r}")
    if expert_format == "think":
        return think_content(trace) or trace.strip()
    return without_think_open(trace)


def from_verl_row(row: dict, expert_format: str = "think") -> dict:
    """One verl/LUFFY row as a TRAPO row; traces from ``target``, ``extra_info.target``, ``extra_info.answer_list``."""
    extra = row.get("extra_info") or {}
    reward_model = row.get("reward_model") or {}
    raw = _trace_texts(row.get("target")) + _trace_texts(extra.get("target")) + _trace_texts(extra.get("answer_list"))
    traces = list(dict.fromkeys(expert_text(t, expert_format) for t in raw if t and t.strip()))
    prompt = row.get("prompt")
    if isinstance(prompt, list | tuple):
        prompt = [{"role": m.get("role"), "content": m.get("content")} for m in prompt]
    answer = reward_model.get("ground_truth")
    if isinstance(answer, int | float) and not isinstance(answer, bool):
        answer = str(answer)  # some verl files store numeric ground truths; rewards compare text
    return {"prompt": prompt, "answer": answer, "expert": traces}


def from_verl_rows(rows: Iterable[dict], expert_format: str = "think") -> list[dict]:
    return [from_verl_row(row, expert_format) for row in rows]


def from_verl_parquet(path: str, expert_format: str = "think", validate: bool = True) -> Dataset:
    """A verl/LUFFY parquet file as a validated `Dataset` of TRAPO rows."""
    rows = from_verl_rows(Dataset.from_parquet(path), expert_format)
    if validate:
        validate_rows(rows)
    return Dataset.from_list(rows)


def load_training_rows(
    path_or_name: str,
    split: str = "train",
    config: str | None = None,
    expert_column: str = "expert",
    answer_column: str = "answer",
    expert_format: str = "think",
) -> Dataset:
    """Load TRAPO training rows from any supported layout (file, folder or Hub name) and validate every row."""
    table = read_table(path_or_name, split, config)
    columns = set(table.column_names)
    if "reward_model" in columns and "prompt" in columns:
        rows = [
            {"prompt": r["prompt"], answer_column: r["answer"], expert_column: r["expert"]}
            for r in from_verl_rows(table, expert_format)
        ]
        validate_rows(rows, expert_column, answer_column)
        return Dataset.from_list(rows)
    if {"prompt", answer_column, expert_column} <= columns:
        validate_rows(table, expert_column, answer_column)
        return table
    if {"problem", "generations"} <= columns:
        raise ValueError(
            f"{path_or_name} looks like OpenR1-Math rows (problem, generations): convert them first with "
            f"`trapo prepare {path_or_name} --output rows.jsonl` (keeps verified traces within the token budget)"
        )
    raise ValueError(
        f"{path_or_name}: cannot tell the layout from columns {sorted(columns)}; expected TRAPO rows "
        f"(prompt, {answer_column}, {expert_column}) or verl/LUFFY rows (prompt, reward_model, target / extra_info)"
    )
