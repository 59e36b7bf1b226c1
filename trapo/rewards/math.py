"""Math-Verify reward with a hard per-completion timeout.

``math_reward(completions, answer, **kwargs) -> list[float]`` is a TRL reward function: 1.0 when the final answer
of a completion is equivalent to the ground truth according to Math-Verify, else 0.0. Bad input never raises.

**Final answer.** The content of the last ``\\boxed{...}`` / ``\\fbox{...}`` with balanced braces; without one, the
last ``max_chars`` characters of the text (Math-Verify then takes the last expression it can parse there).

**Why worker processes.** Math-Verify bounds its own work with ``signal.alarm``: that raises in any thread but the
main one (so it cannot run where a trainer scores rewards in a thread), it bounds each comparison rather than the
whole item, and a signal is only handled between bytecodes, so C code that never returns to the interpreter (a
catastrophic backtrack in ``re``, a C extension) cannot be interrupted. In the main thread the alarm did stop every
pathological answer tried here (``9^{9^{9^{9}}}``, ``7^{123456789}``, ``(10^7)!``, ``\\binom{10^9}{10^8}``: 0 after
exactly the timeout; CPython's big-int power and multiplication check for signals), so the alarm is the first line of
defence and the process boundary the second. Each completion is scored in a small pool of worker subprocesses
(``python -c``, one JSON line per item): the worker arms a ``setitimer`` alarm of ``timeout`` seconds around
parse + verify (it is its own main thread), and the parent kills and replaces a worker that has not answered after
``timeout + 1`` s. Plain subprocesses rather than ``multiprocessing``: its ``spawn`` and ``forkserver`` contexts
re-import the user's ``__main__`` in every child (a training script without a ``__main__`` guard would start
training again), and ``fork`` is unsafe in a process that already runs CUDA / tokenizer threads.

**Cost** (measured on a 2-core machine shared with other jobs, load 4-6; 64 completions of ~1.9 kB, 8 answers):
in-process scoring (``num_workers=0``) 0.33-0.45 s per call, ~5-7 ms per item, sympy parsing dominates; the
2-worker pool 0.17-0.44 s per call (parallel when a core is free). The pool's own overhead, measured on 64 trivial
items, is ~0.3 ms per item (34 ms in-process vs 50-60 ms through the pool). Starting the pool costs ~3 s once (each
worker imports sympy), a replaced worker the same.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from trapo.data.text import THINK_CLOSE
from trapo.rewards.math_pool import _POOLS, _Pool
from trapo.rewards.verify import completion_text, gold_text, prediction_text, score_one

logger = logging.getLogger("trapo.rewards")

_STATS: Counter = Counter()  # "scored", "correct", "timeouts", "parse_failures", "errors", summed over all instances
_WARN_EVERY_S = 60.0
GRADINGS = ("trapo", "whole", "released")  # docs/method.md, "Evaluation"


def reward_stats(reset: bool = False) -> dict[str, int]:
    """Counts since import (or the last reset) over all ``MathReward`` instances in this process."""
    stats = dict(_STATS)
    if reset:
        _STATS.clear()
    return stats


# ------------------------------------------------------------------------------------------------------- public
class MathReward:
    """Callable TRL reward: ``reward(completions, answer, **kwargs) -> list[float]``.

    Args:
        timeout: seconds allowed per completion (gold parse + answer parse + verification).
        max_chars: longest boxed answer accepted, and how much of an unboxed text's tail is parsed.
        num_workers: size of the scoring subprocess pool; 0 scores in-process (the timeout then only works in
            the main thread). The pool starts on the first call and is rebuilt after a fork.
        name: ``__name__`` shown by TRL in its logs (``rewards/<name>/mean``).
        require_think_close: LUFFY's reward (its ``reward_impl_version=3``): a completion without ``</think>`` scores
            0, and only the text after the first ``</think>`` is checked, so the answer must follow the reasoning.
        grading: ``"trapo"``: Math-Verify on the last ``\\boxed{}`` (else the text's tail); ``"whole"``: the
            released training reward, Math-Verify's own extraction on the whole text (several boxes count: "\\boxed{2}
            and \\boxed{3}" is right for "2, 3"); ``"released"``: the released evaluation script's grading, that, then
            the OAT grader (`trapo.eval.oat_grader`) when it says wrong.
    """

    def __init__(
        self,
        timeout: float = 5.0,
        max_chars: int = 4096,
        num_workers: int | None = None,
        name: str = "",
        require_think_close: bool = False,
        grading: str = "trapo",
    ):
        if grading not in GRADINGS:
            raise ValueError(f"grading must be one of {GRADINGS}, got {grading!r}")
        self.grading = grading
        self.timeout = float(timeout)
        self.require_think_close = require_think_close
        self.max_chars = int(max_chars)
        self.num_workers = min(2, os.cpu_count() or 1) if num_workers is None else int(num_workers)
        self.__name__ = name or "math_reward"
        self._pool = None  # a trapo.rewards.math_pool._Pool once started
        self._lock = threading.Lock()
        self._last_warning = float("-inf")

    def __getstate__(self):  # picklable: subprocesses and locks stay behind
        state = self.__dict__.copy()
        state["_pool"], state["_lock"] = None, None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def close(self) -> None:
        """Stop the worker subprocesses (a later call starts new ones)."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def __call__(self, completions: Sequence[Any], answer: Any = None, **kwargs) -> list[float]:
        answers = [answer] * len(completions) if answer is None or isinstance(answer, str | int | float) else answer
        if len(answers) != len(completions):
            raise ValueError(f"{self.__name__}: {len(completions)} completions but {len(answers)} answers")
        texts = [completion_text(c) for c in completions]
        formatted = [not self.require_think_close or THINK_CLOSE in t for t in texts]
        if self.require_think_close:
            texts = [t.split(THINK_CLOSE)[1] if ok else t for t, ok in zip(texts, formatted, strict=True)]
        if self.grading != "trapo":
            requests = [[None if a is None else str(a).strip(), t, self.timeout, self.grading]
                        for t, a, ok in zip(texts, answers, formatted, strict=True) if ok]  # fmt: skip
        else:
            requests = [
                [gold_text(a), prediction_text(t, self.max_chars), self.timeout]
                for t, a, ok in zip(texts, answers, formatted, strict=True)
                if ok
            ]
        scored = iter(self._score(requests))
        results = [next(scored) if ok else (0.0, "format_error") for ok in formatted]
        counts = Counter(status for _, status in results)
        self._record(counts, sum(score for score, _ in results), len(results), kwargs.get("log_metric"))
        return [score for score, _ in results]

    def _score(self, requests: list[list]) -> list[tuple[float, str]]:
        if self.num_workers <= 0:
            return [score_one(*request) for request in requests]
        with self._lock:
            try:
                if self._pool is None or self._pool.pid != os.getpid():
                    self._pool = _Pool(self.num_workers)
                    _POOLS.add(self)
                return self._pool.run(requests, self.timeout)
            except Exception:
                logger.exception("%s: worker pool failed; scoring in-process from now on", self.__name__)
                self.close()
                self.num_workers = 0
        return [score_one(*request) for request in requests]

    def _record(self, counts: Counter, correct: float, n: int, log_metric: Callable | None) -> None:
        timeouts, failures, errors = counts["timeout"], counts["parse_failure"], counts["error"]
        _STATS.update(scored=n, correct=int(correct), timeouts=timeouts, parse_failures=failures, errors=errors)
        if callable(log_metric):
            log_metric("rewards/math_timeouts", float(timeouts))
            log_metric("rewards/math_parse_failures", float(failures))
        if (timeouts or errors) and time.monotonic() - self._last_warning > _WARN_EVERY_S:
            self._last_warning = time.monotonic()
            message = "%s: %d timeout(s) and %d error(s) in a call of %d, scored 0 (totals: %s)"
            logger.warning(message, self.__name__, timeouts, errors, n, reward_stats())
        logger.debug("%s: %d scored, %d parse failures, %d timeouts", self.__name__, n, failures, timeouts)


math_reward = MathReward()
math_think_reward = MathReward(name="math_think_reward", require_think_close=True)  # LUFFY's reward
# The released training rewards exactly: Math-Verify on the whole text (TRAPO's v4), after "</think>" (LUFFY's v3).
math_released_reward = MathReward(name="math_released_reward", grading="whole")
math_think_released_reward = MathReward(name="math_think_released_reward", require_think_close=True, grading="whole")
