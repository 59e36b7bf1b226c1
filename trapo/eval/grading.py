"""Grading of benchmark samples: Math-Verify for math (trapo.rewards.math), the option label for multiple choice.

Two protocols for math (docs/method.md, "Evaluation"; which one produced the paper's numbers cannot be settled):

- ``trapo`` (default): the text after the *last* ``</think>`` (the whole text when there is none), Math-Verify on its
  last ``\\boxed{}``;
- ``released`` (TRAPO's ``eval_scripts/generate_vllm.py``): when the prompt ends with ``<think>\\n`` the text is
  read as ``<think>\\n`` + completion and graded between the *first* and the second ``</think>``, and a completion
  without one is wrong; otherwise the whole completion is graded. Math-Verify with its default extraction on that
  text (several boxes, "the answer is", a final expression), then the OAT grader when it says wrong.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from trapo.data.text import THINK_CLOSE, after_think
from trapo.eval.benchmarks import CHOICE_BENCHMARKS, Problem
from trapo.rewards.math import MathReward
from trapo.rewards.verify import last_boxed

DEFAULT_LABELS = ("A", "B", "C", "D", "E")
_TEXT_WRAPPER = re.compile(r"\\(?:text|textbf|mathrm|mathbf)\s*\{([^{}]*)\}")


def _label_pattern(labels: Sequence[str]) -> str:
    return "|".join(re.escape(label) for label in sorted(labels, key=len, reverse=True))


def extract_choice(text: str, labels: Sequence[str] = DEFAULT_LABELS) -> str | None:
    """The chosen option label: last ``\\boxed{}`` holding a label, else the last "answer is X", else the last
    standalone label (``C``, ``(C)``, ``C)``). None when nothing matches."""
    labels = tuple(labels) or DEFAULT_LABELS
    text = after_think(text)
    alt = _label_pattern(labels)
    standalone = re.compile(rf"(?<![A-Za-z0-9])\(?({alt})\)?(?![A-Za-z0-9])")
    boxed = last_boxed(text)
    if boxed is not None:
        inner = _TEXT_WRAPPER.sub(r"\1", boxed).strip()
        match = standalone.match(inner)
        if match:
            return match.group(1)
    answer_is = re.compile(
        rf"answer\s*(?:is|:)?\s*(?:option|choice)?\s*[:\-]?\s*\**\s*\(?({alt})\)?(?![A-Za-z0-9])", re.IGNORECASE
    )
    matches = [m.group(1) for m in answer_is.finditer(text) if m.group(1) in labels]
    if matches:
        return matches[-1]
    matches = standalone.findall(text)
    return matches[-1] if matches else None


class Grader:
    """Grades samples: ``grade(problems, completions) -> [(correct flags, extracted answers)]``, one pair per problem.

    Math answers go through `MathReward` in one call per batch (its worker pool bounds every verification by
    ``timeout`` seconds, and scores items in parallel).
    """

    def __init__(self, timeout: float = 5.0, num_workers: int | None = None, grading: str = "trapo"):
        self.grading = grading
        self.math = MathReward(timeout=timeout, num_workers=num_workers, name="eval_math", grading=grading)

    def solution(self, completion: str, prompt: str | None) -> str | None:
        """The part of ``completion`` that is graded; None when the protocol counts it wrong unread."""
        if self.grading == "trapo":
            return after_think(completion)
        if prompt is None or not prompt.endswith("<think>\n"):
            return completion
        parts = ("<think>\n" + completion).split(THINK_CLOSE)
        return parts[1] if len(parts) > 1 else None

    def grade(
        self, problems: Sequence[Problem], completions: Sequence[Sequence[str]], prompts: Sequence[str] | None = None
    ) -> list[tuple[list[bool], list[str | None]]]:
        prompts = prompts or [None] * len(problems)
        solutions = [[self.solution(c, prompt) for c in samples] for samples, prompt in zip(completions, prompts,
                                                                                              strict=True)]  # fmt: skip
        flat = [(i, s) for i, p in enumerate(problems) if p.benchmark not in CHOICE_BENCHMARKS for s in solutions[i]
                if s is not None]  # fmt: skip
        scores = iter(self.math([s for _, s in flat], answer=[problems[i].answer for i, _ in flat]) if flat else [])
        results = []
        for problem, samples in zip(problems, solutions, strict=True):
            if problem.benchmark in CHOICE_BENCHMARKS:
                extracted = [extract_choice(s or "", problem.choices or DEFAULT_LABELS) for s in samples]
                correct = [e is not None and e == problem.answer.strip() for e in extracted]
            else:
                correct = [s is not None and next(scores) >= 1.0 for s in samples]
                extracted = [None if s is None else last_boxed(s) for s in samples]
            results.append((correct, extracted))
        return results

    def close(self) -> None:
        self.math.close()


class RewardGrader:
    """Grades with one's own TRL reward function (``trapo eval --data FILE --reward module:function``): a sample is
    correct when its reward is at least ``threshold``."""

    def __init__(self, func, threshold: float = 0.5):
        self.func, self.threshold = func, threshold

    def grade(
        self, problems: Sequence[Problem], completions: Sequence[Sequence[str]], prompts: Sequence[str] | None = None
    ) -> list[tuple[list[bool], list[str | None]]]:
        flat = [(p, c) for p, samples in zip(problems, completions, strict=True) for c in samples]
        prompts = [p.text if p.text is not None else p.chat for p, _ in flat]
        # Every column of the file reaches the reward, as in training (TRL passes the dataset's columns).
        names = {k for p, _ in flat for k in (p.columns or {})} - {"answer"}
        columns = {k: [(p.columns or {}).get(k) for p, _ in flat] for k in sorted(names)}
        rewards = self.func(
            completions=[c for _, c in flat], prompts=prompts, answer=[p.answer for p, _ in flat], **columns
        )
        if rewards is None or len(rewards) != len(flat):
            raise ValueError(f"the reward function returned {rewards!r:.60} for {len(flat)} completions")
        scores = iter(rewards)
        return [([(next(scores) or 0.0) >= self.threshold for _ in samples], [None] * len(samples))
                for samples in completions]  # fmt: skip

    def close(self) -> None:
        pass
