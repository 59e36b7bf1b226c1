"""Paired comparisons of the demo's methods on the hard tier: confidence intervals that account for both sources of
noise, the seeds (training randomness) and the problems (a finite test set).

Two methods trained with the same seed start from the same base, see the same data in the same order and are scored
on the same problems, so differences are paired on both. `paired_bootstrap` resamples seeds and problems with
replacement (each replicate draws seeds and problems once and applies them to both methods) and reports the mean
difference with a percentile interval. It replaces "std units" over three seeds, which ignored the problems' noise
(one problem of 40 is 0.025) and moved from 6.4 to 0.3 when five more seeds came in.
"""

from __future__ import annotations

import numpy as np


def hard_problems(results: dict) -> list[int]:
    """Indices (into ``results["eval_problems"]``) of the hard tiers' problems."""
    hard = set(results.get("hard_tiers", []))
    return [i for i, p in enumerate(results.get("eval_problems", [])) if p["tier"] in hard]


def per_problem(record: dict, indices: list[int], kind: str, k: int) -> np.ndarray | None:
    """A run's score on each of ``indices``: 0/1 greedy, or the share of k sampled answers that were right."""
    counts = (record.get("problems") or {}).get(kind) or []
    if not counts:
        return None
    return np.array([counts[i] for i in indices], dtype=float) / (k if kind == "sampled" else 1)


def paired_bootstrap(
    results: dict, a: str, b: str, kind: str = "greedy", reps: int = 4000, seed: int = 0
) -> dict | None:
    """``a − b`` on the hard tier: mean over seeds and problems, a 95% percentile interval from resampling seeds and
    problems (paired), the seeds and problems it rests on, and on how many seeds ``a`` was ahead. None when the runs
    have no per-problem results (older results files)."""
    k = results.get("settings", {}).get("sampled_eval_k", 1)
    indices = hard_problems(results)
    runs = results["runs"]
    scores = {}
    for method in (a, b):
        scores[method] = {r["seed"]: per_problem(r, indices, kind, k) for r in runs if r["method"] == method}
    seeds = sorted(s for s in set(scores[a]) & set(scores[b]) if scores[a][s] is not None and scores[b][s] is not None)
    if not seeds or not indices:
        return None
    diff = np.stack([scores[a][s] - scores[b][s] for s in seeds])  # seeds × problems
    rng = np.random.default_rng(seed)
    n_seeds, n_problems = diff.shape
    # Each resample's mean over its drawn seeds × drawn problems, as counts: (row counts)ᵀ · diff · (column counts),
    # all resamples at once (the same statistic as indexing diff[rows][:, cols], without building each submatrix).
    rows = rng.integers(0, n_seeds, (reps, n_seeds))
    cols = rng.integers(0, n_problems, (reps, n_problems))
    row_counts = np.zeros((reps, n_seeds))
    np.add.at(row_counts, (np.arange(reps)[:, None], rows), 1)
    col_counts = np.zeros((reps, n_problems))
    np.add.at(col_counts, (np.arange(reps)[:, None], cols), 1)
    draws = np.einsum("rs,sp,rp->r", row_counts, diff, col_counts) / (n_seeds * n_problems)
    low, high = np.percentile(draws, [2.5, 97.5])
    per_seed = diff.mean(axis=1)
    return {
        "mean": float(diff.mean()),
        "low": float(low),
        "high": float(high),
        "seeds": n_seeds,
        "problems": n_problems,
        "ahead": int((per_seed > 0).sum()),
        "excludes_zero": bool(low > 0 or high < 0),
    }
