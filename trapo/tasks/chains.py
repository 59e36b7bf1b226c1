"""The built-in reasoning task: summing a chain of digits modulo 10, step by step.

A problem is ``mod 10: a+b+c+…=`` with tier = number of operands (2 to 5), all digits. A solution adds one
operand per paragraph (``8+8=6``: every sum is taken mod 10) and ends with ``answer N``; paragraphs are separated
by "\\n\\n", so prefixes get cut at step boundaries.

Why this task (see docs/demo.md): the base model is warm-started on two-operand sums only, so it knows every
single step it will ever need (the 100 facts ``x+d mod 10``) but has never chained them. On three or more operands it
writes one step and answers: the hard tiers are out of reach of its own sampling (pass@8 ≈ 0), so GRPO sees no
reward there, while an expert prefix of one or two steps shows exactly the missing skill: keep going. This is
the paper's situation (expert traces carry a skill the policy cannot discover) in a form a CPU learns in minutes.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

TIERS = (2, 3, 4, 5)
TRAIN_TIERS = (2, 3, 4)  # tier 5 is held out entirely: does the skill extrapolate to longer chains?
_PROMPT = re.compile(r"mod 10: (\d(?:\+\d)+)=")


@dataclass(frozen=True)
class Problem:
    operands: tuple[int, ...]

    @property
    def tier(self) -> int:
        return len(self.operands)

    @property
    def prompt(self) -> str:
        return "mod 10: " + "+".join(map(str, self.operands)) + "="

    @property
    def answer(self) -> int:
        return sum(self.operands) % 10

    def solutions(self) -> list[str]:
        """Two distinct correct step-by-step solutions: equations, and the same sums told in words."""
        total = self.operands[0]
        equations, words = [], [f"start {total}"]
        for x in self.operands[1:]:
            step = (total + x) % 10
            equations.append(f"{total}+{x}={step}")
            words.append(f"add {x} get {step}")
            total = step
        closing = f"answer {total}"
        return ["\n\n".join([*equations, closing]), "\n\n".join([*words, closing])]


def sample_problem(rng: random.Random, tier: int) -> Problem:
    return Problem((rng.randint(0, 9), *(rng.randint(1, 9) for _ in range(tier - 1))))


def is_held_out(problem: Problem) -> bool:
    """Deterministic 20% split of problem space (not of draws), so train and eval never share a problem."""
    return (hash_operands(problem.operands) % 5) == 0


def hash_operands(operands: tuple[int, ...]) -> int:
    """A stable hash (Python's ``hash`` is salted per process)."""
    h = 0
    for x in operands:
        h = (h * 1_000_003 + x + 17) % 2_147_483_647
    return h


def make_problems(n: int, tiers: tuple[int, ...], split: str, seed: int) -> list[Problem]:
    """Up to ``n`` distinct problems spread evenly over ``tiers`` from the ``train`` or ``eval`` split, seeded.

    Tier 2 has only 90 problems (18 held out): a small tier contributes all of its split when asked for more.
    """
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    rng = random.Random(f"chains-{split}-{seed}")
    per_tier = [n // len(tiers) + (1 if i < n % len(tiers) else 0) for i in range(len(tiers))]
    problems = []
    for tier, count in zip(tiers, per_tier, strict=True):
        if tier == 2:
            pool = [p for p in two_operand_problems() if is_held_out(p) == (split == "eval")]
            rng.shuffle(pool)
            problems.extend(pool[:count])
            continue
        seen: set[tuple[int, ...]] = set()
        while len(seen) < count:
            p = sample_problem(rng, tier)
            if p.operands not in seen and is_held_out(p) == (split == "eval"):
                seen.add(p.operands)
                problems.append(p)
    return problems


def two_operand_problems() -> list[Problem]:
    """Every two-operand problem: the base model's warm-start curriculum (all single steps of every chain)."""
    return [Problem((a, b)) for a in range(10) for b in range(1, 10)]


def to_rows(problems: list[Problem]) -> list[dict]:
    """Training rows in trapo's format: prompt, answer, expert (two solutions), plus the tier."""
    return [{"prompt": p.prompt, "answer": str(p.answer), "expert": p.solutions(), "tier": p.tier} for p in problems]


def parse_prompt(prompt: str) -> tuple[int, ...] | None:
    """Operands of a prompt ``mod 10: a+b+…=``; None when it is not one."""
    match = _PROMPT.fullmatch(prompt.strip())
    return tuple(int(x) for x in match.group(1).split("+")) if match else None


def verify(text: str, operands: tuple[int, ...]) -> bool:
    """True iff ``text`` is a complete, correct derivation: one valid step per operand, then ``answer N``.

    Why the steps and not only the answer: every answer is a digit, so a guess is right one time in ten and
    pass@8 of pure guessing would be 57%. Checking the derivation (as a proof checker would) makes the reward
    mean "solved", so hard tiers stay unsolved until the model really chains its steps. Either solution style is
    accepted (equations ``x+d=y`` or words ``start x`` / ``add d get y``), not a mix. Bad text is simply wrong.
    """
    if not isinstance(text, str) or not operands:
        return False
    paragraphs = text.strip().split("\n\n")
    *steps, closing = paragraphs
    total = operands[0]
    if steps and steps[0] == f"start {total}":  # word style
        expected = [f"add {x} get {(total := (total + x) % 10)}" for x in operands[1:]]
        steps = steps[1:]
    else:
        expected = []
        for x in operands[1:]:
            expected.append(f"{total}+{x}={(total + x) % 10}")
            total = (total + x) % 10
    return steps == expected and closing == f"answer {total}"


def chain_reward(completions: list, prompts: list, **kwargs) -> list[float]:
    """TRL reward function: 1.0 for a complete, correct derivation of the prompt's chain, else 0.0."""
    texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
    prompt_texts = [p if isinstance(p, str) else p[-1]["content"] for p in prompts]
    return [1.0 if verify(t, parse_prompt(p) or ()) else 0.0 for t, p in zip(texts, prompt_texts, strict=True)]
