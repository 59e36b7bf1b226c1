"""The demo's plots: hard-tier accuracy against step (`accuracy.png`), every tier (`tiers.png`), TRAPO's guidance per
stage (`guidance.png`) and, with a sweep, final accuracy against the swept value (`sweep.png`)."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from trapo.demo.report import STAGE_LABELS, _base_method, _mean_std, _sampled_label


def plot(results: dict, out: Path) -> list[Path]:
    """accuracy.png (hard-tier accuracy vs step, mean ± band), tiers.png (every tier), guidance.png (TRAPO's stages),
    sweep.png (final hard-tier accuracy vs the swept setting, when there is a sweep). Returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hard = ", ".join(str(t) for t in results.get("hard_tiers", []))
    paths = [_plot_curves(plt, results, ["hard"], out / "accuracy.png", f"hard tier ({hard} digits), held out")]
    tiers = [k for k in results["base"] if k.startswith("tier_")]
    paths.append(_plot_curves(plt, results, tiers, out / "tiers.png", None))
    paths.append(_plot_guidance(plt, results, out / "guidance.png"))
    if any(r.get("overrides") for r in results["runs"]):
        paths.append(_plot_sweep(plt, results, out / "sweep.png"))
    return paths


def _curve_band(runs: list[dict], key: str, base_value: float):
    """Steps, mean and std over seeds of ``key`` along training (step 0 is the base)."""
    steps = [0] + [s for s, _ in runs[0]["curve"]]
    values = [[base_value] + [acc[key] for _, acc in r["curve"]] for r in runs]
    mean = [statistics.fmean(v[i] for v in values) for i in range(len(steps))]
    std = [statistics.stdev(v[i] for v in values) if len(values) > 1 else 0.0 for i in range(len(steps))]
    return steps, mean, std


def _plot_curves(plt, results: dict, keys: list[str], path: Path, title: str | None) -> Path:
    runs = [r for r in results["runs"] if not r.get("overrides")]
    methods = list(dict.fromkeys(r["method"] for r in runs))
    fig, axes = plt.subplots(
        1, len(keys), figsize=(4.2 * len(keys) + (1.5 if len(keys) == 1 else 0), 3.6), squeeze=False
    )
    for ax, key in zip(axes[0], keys, strict=True):
        for method in methods:
            steps, mean, std = _curve_band([r for r in runs if r["method"] == method], key, results["base"][key])
            (line,) = ax.plot(steps, mean, marker="o", ms=2.5, label=method, lw=2.6 if method == "trapo" else 1.3)
            low = [m - s for m, s in zip(mean, std, strict=True)]
            high = [m + s for m, s in zip(mean, std, strict=True)]
            ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.15, lw=0)
        ax.set_title(title or key.replace("tier_", "") + " digits")
        ax.set_xlabel("optimizer step")
        ax.set_ylim(-0.03, 1.03)
    axes[0][0].set_ylabel("held-out greedy accuracy" + (" (mean ± std over seeds)" if len(keys) == 1 else ""))
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_guidance(plt, results: dict, path: Path) -> Path:
    """Per stage of TRAPO's schedule: the share of prompts it guided, and how often its guided samples succeeded."""
    runs = [r for r in results["runs"] if r["method"] == "trapo" and r.get("guidance")]
    fig, (share_ax, success_ax) = plt.subplots(1, 2, figsize=(9.5, 3.6))
    for stage, label in STAGE_LABELS.items():
        for ax, key in ((share_ax, f"guided_frac/stage{stage}"), (success_ax, f"guided_reward/stage{stage}")):
            series = _guidance_series(runs, key)
            if series:
                ax.plot(*series, label=label, marker="o", ms=2)
    share_ax.set_title("share of prompts guided, per stage")
    success_ax.set_title("reward of guided samples, per stage")
    for ax in (share_ax, success_ax):
        ax.set_xlabel("optimizer step")
        ax.set_ylim(-0.03, 1.03)
        if ax.get_legend_handles_labels()[0]:  # no TRAPO run (e.g. only SFT→RL): an empty panel, no legend
            ax.legend(fontsize=7)
    fig.suptitle("TRAPO's guidance over training (mean over seeds, 5-step moving average; all tiers)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _guidance_series(runs: list[dict], key: str, window: int = 5):
    """Steps and the mean over seeds of ``key``, averaged over a trailing window of steps (one step holds only a few
    prompts, so single steps are noise)."""
    by_step: dict[int, list[float]] = {}
    for r in runs:
        for point in r["guidance"]:
            value = point.get(key)
            if value is not None and not math.isnan(value):
                by_step.setdefault(point["step"], []).append(value)
    if not by_step:
        return None
    steps = sorted(by_step)
    means = [statistics.fmean(by_step[s]) for s in steps]
    smooth = [statistics.fmean(means[max(0, i - window + 1) : i + 1]) for i in range(len(means))]
    return steps, smooth


def _plot_sweep(plt, results: dict, path: Path) -> Path:
    """Final hard-tier accuracy against each swept setting (a row of panels per setting: greedy, and sampled when the
    run measured it), one line per method trained at its values (mean ± std over seeds); the plain runs are each
    line's point at the setting's default."""
    swept = [r for r in results["runs"] if r.get("overrides")]
    keys = list(dict.fromkeys(k for r in swept for k in r["overrides"]))
    metrics = {"hard": "greedy"}
    if all("sampled_hard" in r["final"] for r in results["runs"]):
        metrics["sampled_hard"] = _sampled_label(results)
    fig, axes = plt.subplots(len(keys), len(metrics), figsize=(4.6 * len(metrics), 3.4 * len(keys)), squeeze=False)
    for row, key in zip(axes, keys, strict=True):
        for ax, (metric, label) in zip(row, metrics.items(), strict=True):
            for method in dict.fromkeys(_base_method(r) for r in swept if key in r["overrides"]):
                values, stats = _sweep_series(results, key, method, metric)
                ax.errorbar(values, [s["mean"] for s in stats], yerr=[s["std"] for s in stats], marker="o", capsize=3,
                            label=method, lw=2.6 if method == "trapo" else 1.3)  # fmt: skip
                if min(values) > 0:
                    ax.set_xscale("log")
            ax.set_xlabel(key)
            ax.set_ylabel(f"final hard-tier accuracy ({label})")
            ax.set_ylim(-0.03, 1.03)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _sweep_series(results: dict, key: str, method: str, metric: str) -> tuple[list[float], list[dict]]:
    """The values of ``key`` that ``method`` ran at, and mean ± std over seeds of its final ``metric`` at each; its
    plain runs are the point at the setting's default."""
    points = [(r["overrides"][key], r) for r in results["runs"] if key in r.get("overrides", {})]
    points = [(v, r) for v, r in points if _base_method(r) == method]
    default = results["settings"].get(key)
    if default is not None:  # None: a per-method setting (the tuned learning rate), no single point to place
        points += [(default, r) for r in results["runs"] if r["method"] == method and not r.get("overrides")]
    values = sorted({v for v, _ in points})
    return values, [_mean_std([r["final"][metric] for v2, r in points if v2 == v]) for v in values]
