"""`trapo demo` results: mean ± std over seeds, the markdown table and the plots."""

from __future__ import annotations

import statistics
from pathlib import Path


def summarize(records: list[dict]) -> dict:
    """Mean and std over seeds of every final metric, per method."""
    summary: dict[str, dict] = {}
    for method in dict.fromkeys(r["method"] for r in records):
        runs = [r for r in records if r["method"] == method]
        metrics = {k: [r["final"][k] for r in runs] for k in runs[0]["final"]}
        metrics.update({k: [r[k] for r in runs] for k in ("wall_seconds", "generated_tokens", "guided_share")})
        summary[method] = {
            k: {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0}
            for k, v in metrics.items()
        }
    return summary


def format_table(results: dict) -> str:
    summary, base = results["summary"], results["base"]
    tiers = [k for k in base if k.startswith("tier_")]
    head = ["method", *[f"{t.replace('tier_', '')} ops" for t in tiers], "overall", "wall s", "tokens gen.", "guided"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines.append("| base | " + " | ".join(f"{base[k]:.2f}" for k in [*tiers, "overall"]) + " | | | |")

    def cell(m, k, fmt="{:.2f}"):
        s = m[k]
        return fmt.format(s["mean"]) + (f" ± {fmt.format(s['std'])}" if s["std"] else "")

    for method, m in summary.items():
        cells = [cell(m, k) for k in [*tiers, "overall"]]
        cells += [
            cell(m, "wall_seconds", "{:.0f}"),
            cell(m, "generated_tokens", "{:.0f}"),
            f"{m['guided_share']['mean']:.0%}",
        ]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: dict, out: Path) -> None:
    """accuracy.png: held-out accuracy vs step per method; guidance.png: trapo's guidance levels over training."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = results["runs"]
    tiers = [k for k in results["base"] if k.startswith("tier_")]
    fig, axes = plt.subplots(1, len(tiers) + 1, figsize=(4 * (len(tiers) + 1), 3.5), sharey=True)
    for ax, key in zip(axes, [*tiers, "overall"], strict=True):
        for method in dict.fromkeys(r["method"] for r in runs):
            curves = [
                [(0, results["base"][key])] + [(s, a[key]) for s, a in r["curve"]]
                for r in runs
                if r["method"] == method
            ]
            steps = [s for s, _ in curves[0]]
            mean = [statistics.fmean(c[i][1] for c in curves) for i in range(len(steps))]
            ax.plot(steps, mean, marker="o", ms=3, label=method, lw=2.5 if method == "trapo" else 1.2)
        ax.set_title(key.replace("tier_", "") + (" operands" if key != "overall" else ""))
        ax.set_xlabel("optimizer step")
    axes[0].set_ylabel("held-out greedy accuracy")
    axes[-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    trapo_runs = [r for r in runs if r["method"] == "trapo" and r["level_share"]]
    if trapo_runs:
        shares = trapo_runs[0]["level_share"]
        steps = [s["step"] for s in shares]
        levels = sorted({k for s in shares for k in s if k != "step"}, key=int)
        labels = {"0": "unguided", "1": "25% prefix", "2": "50% prefix", "3": "full trace"}
        ax.stackplot(
            steps,
            *[[s.get(k, 0.0) for s in shares] for k in levels],
            labels=[labels.get(k, f"level {k}") for k in levels],
        )
        ax.legend(fontsize=7, loc="upper right")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("share of prompts (deepest guidance)")
    ax.set_title("TRAPO guidance over training")
    fig.tight_layout()
    fig.savefig(out / "guidance.png", dpi=110)
    plt.close(fig)
