"""Checks on training rows, so a bad row fails at load time by index and field, not deep inside a training step."""

from __future__ import annotations

from collections.abc import Iterable


def row_errors(row: dict, expert_column: str = "expert", answer_column: str | None = "answer") -> list[str]:
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

    if answer_column is not None:
        answer = row.get(answer_column)
        if answer is None or (isinstance(answer, str) and not answer.strip()):
            errors.append(f"{answer_column}: missing or empty")
        elif not isinstance(answer, str):
            errors.append(
                f"{answer_column}: expected a string, got {type(answer).__name__} {answer!r:.40} "
                f"(convert the column: dataset.map(lambda r: {{{answer_column!r}: str(r[{answer_column!r}])}}))"
            )

    traces = row.get(expert_column)
    if not isinstance(traces, list | tuple) or not traces:
        errors.append(f"{expert_column}: expected a non-empty list of expert solutions, got {traces!r:.80}")
    else:
        for j, trace in enumerate(traces):
            if not isinstance(trace, str) or not trace.strip():
                errors.append(f"{expert_column}: trace {j} is not a non-empty string")
    return errors


def validate_rows(rows: Iterable[dict], expert_column: str = "expert", answer_column: str | None = "answer") -> int:
    """Raise ``ValueError`` listing every bad row (index, field, reason, at most 20 shown); return the row count."""
    problems, count = [], 0
    for i, row in enumerate(rows):
        count += 1
        problems.extend(f"row {i}: {error}" for error in row_errors(row, expert_column, answer_column))
    if not count:
        raise ValueError("the training dataset is empty: no rows to train on")
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise ValueError(f"{len(problems)} problem(s) in the training rows:\n  {shown}{more}")
    return count


def validate_training_inputs(dataset, tokenizer, args) -> None:
    """Everything `TRAPOTrainer` can check before training starts, so a bad input fails now, by name, with a fix.

    Checks the tokenizer (EOS and pad tokens), the dataset's columns, every row (`row_errors`) and, when
    ``args.max_prompt_length`` is set, every prompt's token count. Streaming datasets get the column check only.
    """
    if tokenizer is not None:
        missing = [name for name in ("eos_token_id", "pad_token_id") if getattr(tokenizer, name, None) is None]
        if missing:
            raise ValueError(
                f"the tokenizer has no {' and no '.join(m.replace('_id', '') for m in missing)}: generation cannot "
                "stop and batches cannot be padded. Set them, e.g. tokenizer.pad_token = tokenizer.eos_token"
            )
    if dataset is None:
        raise ValueError("TRAPOTrainer needs a train_dataset with prompt, answer and expert columns")
    expert, answer = args.expert_column, args.answer_column
    columns = getattr(dataset, "column_names", None)
    if columns is not None:
        required = ["prompt", expert] + ([answer] if answer is not None else [])
        absent = [c for c in required if c not in columns]
        if absent:
            hint = " (set answer_column=None if your reward functions need no answer)" if answer in absent else ""
            raise ValueError(
                f"the training dataset has no column(s) {absent}; it has {columns}. Rename them with "
                f"dataset.rename_column, or set expert_column / answer_column in TRAPOConfig{hint}"
            )
    if not hasattr(dataset, "__len__"):
        return  # a stream: rows are checked as they come (the rollout raises on a bad expert list)
    validate_rows(dataset, expert, answer)
    if args.max_prompt_length and tokenizer is not None:
        _check_prompt_lengths(dataset, tokenizer, args.max_prompt_length)


def _check_prompt_lengths(dataset, tokenizer, budget: int) -> None:
    from trl.data_utils import is_conversational

    too_long = []
    for i, row in enumerate(dataset):
        prompt = row["prompt"]
        if is_conversational({"prompt": prompt}):
            prompt = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        n = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        if n > budget:
            too_long.append(f"row {i}: prompt: {n} tokens > max_prompt_length {budget}")
    if too_long:
        shown = "\n  ".join(too_long[:20])
        raise ValueError(
            f"{len(too_long)} prompt(s) exceed the prompt budget:\n  {shown}\n"
            "Drop or shorten those rows (trapo prepare --max-prompt-tokens does it), or raise max_prompt_length"
        )
