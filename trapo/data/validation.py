"""Checks on training rows, so a bad row fails at load time by index and field, not deep inside a training step."""

from __future__ import annotations

from collections.abc import Iterable


def row_errors(row: dict, expert_column: str = "expert", answer_column: str = "answer") -> list[str]:
    """What is wrong with one training row (empty list when nothing is): ``"<field>: <reason>"`` strings."""
    errors = []
    prompt = row.get("prompt")
    if isinstance(prompt, str):
        if not prompt.strip():
            errors.append("prompt: empty string")
    elif isinstance(prompt, list | tuple):
        if not prompt:
            errors.append("prompt: empty message list")
        for j, message in enumerate(prompt):
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                errors.append(f"prompt: message {j} is not a {{role, content}} mapping")
            elif not isinstance(message.get("content"), str) or not message["content"].strip():
                errors.append(f"prompt: message {j} ({message['role']}) has no text content")
    else:
        errors.append(f"prompt: expected a string or a list of chat messages, got {type(prompt).__name__}")

    answer = row.get(answer_column)
    if answer is None or (isinstance(answer, str) and not answer.strip()):
        errors.append(f"{answer_column}: missing or empty")
    elif not isinstance(answer, str | int | float):
        errors.append(f"{answer_column}: expected a string or number, got {type(answer).__name__}")

    traces = row.get(expert_column)
    if not isinstance(traces, list | tuple) or not traces:
        errors.append(f"{expert_column}: expected a non-empty list of expert solutions, got {traces!r:.80}")
    else:
        for j, trace in enumerate(traces):
            if not isinstance(trace, str) or not trace.strip():
                errors.append(f"{expert_column}: trace {j} is not a non-empty string")
    return errors


def validate_rows(rows: Iterable[dict], expert_column: str = "expert", answer_column: str = "answer") -> int:
    """Raise ``ValueError`` listing every bad row (index, field, reason, at most 20 shown); return the row count."""
    problems, count = [], 0
    for i, row in enumerate(rows):
        count += 1
        problems.extend(f"row {i}: {error}" for error in row_errors(row, expert_column, answer_column))
    if not count:
        raise ValueError("no training rows")
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise ValueError(f"{len(problems)} problem(s) in the training rows:\n  {shown}{more}")
    return count
