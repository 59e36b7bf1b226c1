"""avg@k and the unbiased pass@k estimator (Chen et al., 2021), per problem and per benchmark.

With n samples of which c are correct, ``pass_at_k(n, c, k) = 1 − C(n−c, k) / C(n, k)``: the probability that at
least one of k samples drawn without replacement from the n is correct. ``avg@k`` is the mean correctness of the k
samples, i.e. an estimate of pass@1 with k times less variance: the paper reports avg@32 on AIME24 and AMC and
pass@1 (one sample) on the others, so its "score" is avg@k everywhere.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (k ≤ n). Computed as a product, stable for large n."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def avg_at_k(correct: Sequence[bool | float]) -> float:
    """Mean correctness of one problem's samples."""
    if not correct:
        raise ValueError("avg@k of no samples")
    return sum(float(x) for x in correct) / len(correct)


def benchmark_scores(per_problem: Sequence[Sequence[bool | float]], k: int) -> dict[str, float]:
    """avg@k and pass@k of a benchmark: per-problem values averaged over problems (each with n ≥ k samples)."""
    if not per_problem:
        raise ValueError("no problems")
    avg = sum(avg_at_k(c) for c in per_problem) / len(per_problem)
    passed = sum(pass_at_k(len(c), int(sum(float(x) for x in c)), k) for c in per_problem) / len(per_problem)
    return {f"avg@{k}": avg, f"pass@{k}": passed}
