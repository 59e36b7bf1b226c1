"""Checks on training rows, so a bad row fails at load time by index and field, not deep inside a training step."""

from __future__ import annotations

import logging
from collections.abc import Iterable

logger = logging.getLogger(__name__)


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


def validate_training_rows(dataset, args) -> None:
    """What can be checked before a model or tokenizer is loaded: the dataset's columns, every row (`row_errors`),
    single-trace rows (a warning) and columns the text-only rollout cannot use. Streaming datasets get the column
    check only (the rollout raises on a bad expert list)."""
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
        images = [c for c in ("image", "images") if c in columns]
        if images:
            raise ValueError(
                f"the training dataset has {images}: TRAPOTrainer's rollout is text-only (expert prefixes are token "
                "ids); remove the column(s)"
            )
    if not hasattr(dataset, "__len__"):
        return
    validate_rows(dataset, expert, answer)
    _warn_single_traces(dataset, args)


def validate_with_tokenizer(dataset, tokenizer, args, context_length: int | None = None):
    """What needs the tokenizer, however the trainer got it (passed in, or loaded by TRL from the model's name): its
    EOS and pad tokens, the chat template the prompts need, every prompt's length against ``max_prompt_length`` and,
    with the completion budget, against the model's ``context_length``, and expert traces longer than the budget.
    Returns the dataset to train on (without the rows ``overlong_traces='drop'`` removes)."""
    missing = [name for name in ("eos_token_id", "pad_token_id") if getattr(tokenizer, name, None) is None]
    if missing:
        raise ValueError(
            f"the tokenizer has no {' and no '.join(m.replace('_id', '') for m in missing)}: generation cannot "
            "stop and batches cannot be padded. Set them, e.g. tokenizer.pad_token = tokenizer.eos_token"
        )
    if not hasattr(dataset, "__len__") or not len(dataset):
        return dataset
    from trapo.preflight import check_chat_template

    check_chat_template(tokenizer, dataset[0]["prompt"])
    _check_prompt_lengths(dataset, tokenizer, args, context_length)
    return _handle_overlong_traces(dataset, tokenizer, args)


def overlong_trace_rows(dataset, tokenizer, args) -> tuple[list[int], int]:
    """Rows with an expert trace the full-trace stage would cut (trace + EOS longer than max_completion_length), and
    the longest such trace in tokens. Only the traces a stage can use are checked (the first, and the second when
    ``second_trace_for_full``)."""
    used = 2 if args.second_trace_for_full else 1
    index, texts = [], []
    for i, traces in enumerate(dataset[args.expert_column]):
        for trace in traces[:used]:
            index.append(i)
            texts.append(trace)
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []
    budget = args.max_completion_length
    rows = sorted({i for i, n in zip(index, lengths, strict=True) if n + 1 > budget})
    return rows, max(lengths, default=0)


def _handle_overlong_traces(dataset, tokenizer, args):
    rows, longest = overlong_trace_rows(dataset, tokenizer, args)
    if not rows:
        return dataset
    where = f"rows {rows[:10]}{' …' if len(rows) > 10 else ''}"
    what = (
        f"{len(rows)} of {len(dataset)} training rows have an expert trace longer than max_completion_length "
        f"({args.max_completion_length} tokens with its EOS; the longest is {longest} tokens): {where}"
    )
    if args.overlong_traces == "error":
        raise ValueError(
            f"{what}. Raise max_completion_length, shorten or drop those rows (trapo prepare --max-tokens), or set "
            "overlong_traces='keep' or 'drop'"
        )
    if args.overlong_traces == "drop":
        logger.warning("%s; dropping them (overlong_traces='drop')", what)
        drop = set(rows)
        return dataset.select([i for i in range(len(dataset)) if i not in drop])
    logger.warning(
        "%s; keeping them cut at the budget: their full-trace sample loses its EOS and usually scores 0 "
        "(overlong_traces='keep'; 'drop' removes them)",
        what,
    )
    return dataset


def single_trace_rows(dataset, expert_column: str = "expert") -> int:
    """How many rows have exactly one expert trace."""
    return sum(1 for traces in dataset[expert_column] if len(traces) == 1)


def _warn_single_traces(dataset, args) -> None:
    """A full-trace stage that wants a second trace falls back to the first one: say how often (docs/method.md)."""
    wants_second = args.second_trace_for_full and any(s.prefix_ratio >= 1.0 for s in args.micro_groups)
    if not wants_second:
        return
    count = single_trace_rows(dataset, args.expert_column)
    if count:
        logger.warning(
            "%d of %d training rows have a single expert trace: their full-trace stage reuses it, so its start is "
            "imitated up to three times (stages 2-4). The released code needs two traces per row; see docs/method.md, "
            "'Data'",
            count,
            len(dataset),
        )


def prompt_lengths(dataset, tokenizer) -> list[int]:
    """Every prompt's length in tokens, rendered with the chat template when the prompts are messages."""
    from trl.data_utils import is_conversational

    prompts = list(dataset["prompt"])
    if prompts and is_conversational({"prompt": prompts[0]}):
        prompts = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts]
    return [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]


def _check_prompt_lengths(dataset, tokenizer, args, context_length: int | None) -> None:
    budget = args.max_prompt_length
    if not budget and not context_length:
        return
    lengths = prompt_lengths(dataset, tokenizer)
    if budget:
        too_long = [
            f"row {i}: prompt: {n} tokens > max_prompt_length {budget}" for i, n in enumerate(lengths) if n > budget
        ]
        if too_long:
            shown = "\n  ".join(too_long[:20])
            raise ValueError(
                f"{len(too_long)} prompt(s) exceed the prompt budget:\n  {shown}\n"
                "Drop or shorten those rows (trapo prepare --max-prompt-tokens does it), or raise max_prompt_length"
            )
    longest = max(lengths, default=0)
    if context_length and longest + args.max_completion_length > context_length:
        row = lengths.index(longest)
        raise ValueError(
            f"row {row}'s prompt ({longest} tokens) plus max_completion_length ({args.max_completion_length}) is "
            f"{longest + args.max_completion_length} tokens, past the model's context of {context_length} positions "
            "(max_position_embeddings): lower max_completion_length, drop long prompts (max_prompt_length), or "
            "extend the context (trapo train: rope_theta and max_position_embeddings)"
        )
