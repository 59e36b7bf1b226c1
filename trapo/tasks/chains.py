"""The built-in reasoning task: reduce a chain of digits modulo 10, one step per line (docs/demo.md).

A problem is a chain of 2 to `WIDTH` digits, written right-aligned in a fixed-width field padded with ``.``; its
tier is the number of digits. A solution replaces the first two digits by their sum mod 10, one step per
paragraph, until one digit is left, then ``answer N``::

    ...4275=        (the prompt)
    ....675         4 + 2 = 6
    .....35         6 + 7 = 13 → 3
    ......8         3 + 5 = 8
    answer 8

Why this shape: every line has the same width, so each step reads the previous line at a fixed offset and writes
one sum and a copy; nothing a step needs is far away. A small model can learn the single step, and long chains fail
only because they are longer than anything it has seen: the base model (`trapo.tasks.base`) is warm-started on
2-4 digit chains, solves those, sometimes carries the step through 5 digits, and fails 6-digit chains on its own, but
finishes them once an expert prefix has shortened the chain. That is the situation TRAPO is built for.

The reward (`chain_reward`) checks the whole derivation line by line, not only the final digit: a guessed digit is
right one time in ten, so a pass@8 of guesses would be 57%. Every line must be a legal step from the one before
(any adjacent pair replaced by its sum mod 10): reducing from the left, as the base is taught, from the right, or in
any mix is a correct derivation, so an expert that writes in another order than the policy, always (`Expert` with
``order="right"``) or at some steps (``deviation``), is still a correct expert. Train and held-out problems
come from disjoint parts of problem space (a stable hash of the digits).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

WIDTH = 7  # digits in the longest chain; every line of a solution is this wide
TIERS = (2, 3, 4, 5, 6, 7)  # chain lengths evaluated
WARM_TIERS = (2, 3, 4)  # what the base model is warm-started on, whole derivations
CONTINUED_TIERS = (5, 6)  # the base is also warm-started on the endings of these (the rest is given)
TRAIN_TIERS = (2, 3, 4, 5, 6)  # what the demo's methods train on
HARD_TIERS = (
    6,
)  # trained on, rarely solved by the base alone, solved once half an expert derivation's tokens is given
# Tier 7 is never trained on by anyone: does what was learned extrapolate to longer chains?
PAD = "."
DIGITS = "0123456789"
ORDERS = ("left", "right")  # which end of the chain a derivation reduces first
_PROMPT = re.compile(rf"\.*(\d{{2,{WIDTH}}})=")


@dataclass(frozen=True)
class Problem:
    digits: tuple[int, ...]

    def __post_init__(self):
        if not 2 <= len(self.digits) <= WIDTH or not all(isinstance(d, int) and 0 <= d <= 9 for d in self.digits):
            raise ValueError(f"a chain has 2 to {WIDTH} digits 0-9, got {self.digits!r}")

    @property
    def tier(self) -> int:
        return len(self.digits)

    @property
    def prompt(self) -> str:
        return _line(self.digits) + "="

    @property
    def answer(self) -> int:
        return sum(self.digits) % 10

    def steps(self, order: str = "left", deviation: float = 0.0) -> list[str]:
        """The derivation's lines: each replaces the first two digits (``order="left"``, how the base model is
        taught) or the last two (``"right"``) by their sum mod 10.

        With ``deviation`` > 0, each step (of a chain with a choice left) reduces another adjacent pair instead with
        that probability, drawn uniformly: a solver that mostly follows the convention and sometimes does not
        (`Expert`). The draws are seeded by the digits, so a problem always gets the same derivation.
        """
        _check_expert(order, deviation)
        rng = random.Random(hash_digits(self.digits))
        rest, lines = list(self.digits), []
        while len(rest) > 1:
            last = len(rest) - 2  # index of the last pair
            j = 0 if order == "left" else last
            if last > 0 and rng.random() < deviation:
                j = (j + rng.randint(1, last)) % (last + 1)  # any pair but the conventional one
            rest = _reduce_at(rest, j)
            lines.append(_line(rest))
        return lines

    def solution(self, order: str = "left", deviation: float = 0.0) -> str:
        return "\n\n".join([*self.steps(order, deviation), f"answer {self.answer}"])


@dataclass(frozen=True)
class Expert:
    """Who writes the expert derivations the methods imitate (docs/demo.md, "The expert").

    ``order`` is the convention it follows (``"left"``: the base model's own; ``"right"``: the other end, so every
    digit it writes is unlikely under the policy) and ``deviation`` the probability that a step breaks it and
    reduces another pair: per-step noise. ``mixture`` is structured instead: the probability that a whole derivation
    follows the *other* convention (a mixture of experts with two styles, drawn per problem). Every derivation it
    writes is correct (the verifier accepts any legal order); what varies is how far its tokens are from the
    policy's, the situation TrSFT is designed for: a stronger model's traces are mostly plausible to the student and
    sometimes not.
    """

    order: str = "left"
    deviation: float = 0.0
    mixture: float = 0.0

    def __post_init__(self):
        _check_expert(self.order, self.deviation)
        if not 0.0 <= self.mixture <= 1.0:
            raise ValueError(f"mixture must be a probability in [0, 1], got {self.mixture!r}")

    def order_for(self, problem: Problem) -> str:
        """The convention this problem's derivation follows (the other one with probability ``mixture``, seeded by
        the digits so a problem always gets the same one)."""
        if self.mixture and random.Random(hash_digits(problem.digits) * 7 + 3).random() < self.mixture:
            return ORDERS[1 - ORDERS.index(self.order)]
        return self.order

    def solution(self, problem: Problem) -> str:
        return problem.solution(self.order_for(problem), self.deviation)


def _check_expert(order: str, deviation: float) -> None:
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    if not 0.0 <= deviation <= 1.0:
        raise ValueError(f"deviation must be a probability in [0, 1], got {deviation!r}")


def _line(digits) -> str:
    return PAD * (WIDTH - len(digits)) + "".join(map(str, digits))


def parse_prompt(prompt: str) -> Problem | None:
    """The problem of a prompt like ``...4275=``; None when the text is not one."""
    match = _PROMPT.fullmatch(prompt.strip()) if isinstance(prompt, str) else None
    if match is None or len(prompt.strip()) != WIDTH + 1:
        return None
    return Problem(tuple(int(c) for c in match.group(1)))


def verify(text: str, problem: Problem) -> bool:
    """True iff ``text`` is a complete, correct derivation of ``problem``: lines separated by a blank line, each a
    legal step from the one before (two adjacent digits replaced by their sum mod 10, the line right-aligned at
    `WIDTH`), down to one digit, then ``answer N``.

    Any order of steps is legal (left to right, right to left, or mixed): each is a correct derivation, and the
    answer is the same. Surrounding whitespace is ignored; anything else (a wrong sum, a misaligned line, a missing
    or extra step, text after the answer) makes it wrong. Malformed input is simply wrong, never an error.
    """
    if not isinstance(text, str):
        return False
    *lines, last = text.strip().split("\n\n")
    previous = list(problem.digits)
    for line in lines:
        digits = line.lstrip(PAD)
        if len(line) != WIDTH or not digits or set(digits) - set(DIGITS) or len(digits) != len(previous) - 1:
            return False
        current = [int(c) for c in digits]
        if not any(current == _reduce_at(previous, j) for j in range(len(previous) - 1)):
            return False
        previous = current
    return len(previous) == 1 and last == f"answer {problem.answer}"


def _reduce_at(digits: list[int], j: int) -> list[int]:
    """``digits`` with the pair at ``j``, ``j + 1`` replaced by its sum mod 10."""
    return [*digits[:j], (digits[j] + digits[j + 1]) % 10, *digits[j + 2 :]]


def chain_reward(completions: list, prompts: list, **kwargs) -> list[float]:
    """TRL reward function: 1.0 for a complete, correct derivation of the prompt's chain, else 0.0 (also for input
    that is not text or chat messages)."""
    out = []
    for text, prompt in zip(map(_text, completions), map(_text, prompts), strict=True):
        problem = parse_prompt(prompt)
        out.append(1.0 if problem is not None and verify(text, problem) else 0.0)
    return out


def _text(item) -> str:
    """A string as it is, the last message's content of a chat, else ""."""
    if isinstance(item, str):
        return item
    if isinstance(item, list | tuple) and item and isinstance(item[-1], dict):
        content = item[-1].get("content")
        return content if isinstance(content, str) else ""
    return ""


SPLITS = ("train", "eval", "valid", "test")


def is_held_out(problem: Problem) -> bool:
    """Deterministic 20% split of problem space (not of draws), so train and eval never share a problem."""
    return hash_digits(problem.digits) % 5 == 0


def split_of(problem: Problem) -> str:
    """``train``, or for a held-out problem ``valid`` or ``test`` (halves of the held-out space). Choices are made on
    ``valid``; ``test`` is read once, for a published run (docs/demo.md)."""
    h = hash_digits(problem.digits)
    if h % 5:
        return "train"
    return "valid" if (h // 5) % 2 == 0 else "test"


def legacy_eval_problems() -> frozenset[tuple[int, ...]]:
    """The held-out problems the demo evaluated on before the valid/test split (40 per tier, ``eval`` split, seed 0):
    results up to then were read on them, so the test split leaves them out."""
    return frozenset(p.digits for p in make_problems(40 * len(TIERS), TIERS, "eval", seed=0))


def hash_digits(digits: tuple[int, ...]) -> int:
    """A stable hash (Python's ``hash`` is salted per process)."""
    h = 0
    for x in digits:
        h = (h * 1_000_003 + x + 17) % 2_147_483_647
    return h


def make_problems(n: int, tiers: tuple[int, ...], split: str, seed: int = 0) -> list[Problem]:
    """Up to ``n`` distinct problems spread evenly over ``tiers``, from the ``train`` or ``eval`` split, seeded.

    A tier with fewer problems in the split than asked for (2 digits: about 80 train and 20 held out; 3 digits: about
    800 and 200) contributes all of them. Splits: ``train``; ``eval``, all held-out problems (what the demo read
    before); ``valid`` and ``test``, its two halves, ``test`` without the problems ``eval`` results were read on
    (`legacy_eval_problems`: none of tier 2's 20 are left).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    excluded = legacy_eval_problems() if split == "test" else frozenset()

    def wanted(p: Problem) -> bool:
        if split in ("train", "eval"):
            return is_held_out(p) == (split == "eval")
        return split_of(p) == split and p.digits not in excluded

    unknown = [t for t in tiers if t not in TIERS]
    if unknown:
        raise ValueError(f"tiers {unknown} do not exist; the task has tiers {TIERS}")
    rng = random.Random(f"chains-{split}-{seed}")
    per_tier = [n // len(tiers) + (1 if i < n % len(tiers) else 0) for i in range(len(tiers))]
    problems = []
    for tier, count in zip(tiers, per_tier, strict=True):
        # A small tier is enumerated rather than drawn until enough distinct ones turn up (the train/eval threshold
        # is the one their problems were drawn with; valid/test hold 10% of problem space, minus the legacy ones).
        if 10**tier <= (4 if split in ("train", "eval") else 50) * count or (split in ("valid", "test") and tier <= 4):
            pool = [Problem(tuple(int(c) for c in f"{i:0{tier}d}")) for i in range(10**tier)]
            pool = [p for p in pool if wanted(p)]
            rng.shuffle(pool)
            problems.extend(pool[:count])
            continue
        seen: set[tuple[int, ...]] = set()
        while len(seen) < count:
            p = Problem(tuple(rng.randint(0, 9) for _ in range(tier)))
            if p.digits not in seen and wanted(p):
                seen.add(p.digits)
                problems.append(p)
    return problems


def to_rows(problems: list[Problem], expert: Expert | None = None) -> list[dict]:
    """Training rows in trapo's format: prompt, answer, expert (the derivation ``expert`` writes, by default the
    base model's own convention), plus the tier.

    The expert writes one derivation per problem, so the two expert traces a TRAPO row carries (the second for the
    full-trace stage) are the same text.
    """
    expert = expert or Expert()
    return [
        {"prompt": p.prompt, "answer": str(p.answer), "expert": [expert.solution(p)] * 2, "tier": p.tier}
        for p in problems
    ]


def warm_start_rows(rows_per_tier: int, seed: int = 0, lines_left: int = 1) -> list[dict]:
    """The base model's SFT data (prompt-completion rows): whole derivations of `WARM_TIERS` chains, and the last
    ``lines_left`` lines (and the answer) of `CONTINUED_TIERS` derivations, the lines before them given in the prompt.

    Why the endings: the base should be able to *finish* a long chain that an expert has mostly written (what it
    writes from there it was trained on, at the positions where it will write it) but never have written the first
    steps of one. Each tier gets the same number of rows (small tiers repeat their problems), the continued tiers
    half as many. Only training-split problems are used.
    """
    rows = []
    for tier in (*WARM_TIERS, *(CONTINUED_TIERS if lines_left > 0 else ())):
        count = rows_per_tier if tier in WARM_TIERS else rows_per_tier // 2
        problems = make_problems(count, (tier,), "train", seed=seed)
        for i in range(count):
            problem = problems[i % len(problems)]
            lines = [*problem.steps(), f"answer {problem.answer}"]
            given = max(problem.tier - 1 - lines_left, 0) if tier in CONTINUED_TIERS else 0
            prompt = problem.prompt + "".join(line + "\n\n" for line in lines[:given])
            rows.append({"prompt": prompt, "completion": "\n\n".join(lines[given:]), "tier": tier})
    random.Random(f"warm-{seed}").shuffle(rows)
    return rows
