"""A reward for docs/own-data.md: 1 when the completion ends with the row's answer. Any TRL reward function works:
``reward(completions, **columns) -> list[float]``, one float (or None: cannot score) per completion."""


def exact_answer(completions, answer, **kwargs):
    return [1.0 if c.strip().endswith(a) else 0.0 for c, a in zip(completions, answer, strict=True)]
