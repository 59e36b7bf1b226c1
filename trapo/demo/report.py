"""`trapo demo` results: mean ± std over seeds, the markdown table and the plots."""

from __future__ import annotations

import statistics

STAGE_LABELS = {2: "stage 2: 25% prefix", 3: "stage 3: 50% prefix", 4: "stage 4: full trace"}


def collapsed(final: dict, base: dict) -> bool:
    """A run collapsed when it lost a tier the base had mastered: final greedy accuracy below 0.5 on a tier where the
    base scored 0.8 or more (GRPO once fell from 0.93 to 0.00 on 4 digits at the shared, untuned learning rate)."""
    return any(final.get(k, 1.0) < 0.5 for k, v in base.items() if k.startswith("tier_") and v >= 0.8)


def summarize(records: list[dict]) -> dict:
    """Mean and std over seeds of every final metric, per method (a swept method is its own row)."""
    summary: dict[str, dict] = {}
    for method in dict.fromkeys(r["method"] for r in records):
        runs = [r for r in records if r["method"] == method]
        metrics = {k: [r["final"][k] for r in runs] for k in runs[0]["final"]}
        metrics.update({k: [r[k] for r in runs] for k in ("wall_seconds", "generated_tokens", "guided_share")})
        if all("collapsed" in r for r in runs):
            metrics["collapsed"] = [float(r["collapsed"]) for r in runs]
        if all("hard" in r.get("last3", {}) for r in runs):
            metrics["last3_hard"] = [r["last3"]["hard"] for r in runs]
        summary[method] = {k: _mean_std(v) | {"n": len(v)} for k, v in metrics.items()}
    return summary


def _mean_std(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def paired_difference(records: list[dict], method: str, other: str, key: str = "hard") -> dict | None:
    """Mean and std over seeds of ``method − other`` on ``key`` (paired by seed: same base, data and seed), the
    number of seeds ``n`` and on how many of them ``method`` was ahead."""
    a = {r["seed"]: r["final"][key] for r in records if r["method"] == method and key in r["final"]}
    b = {r["seed"]: r["final"][key] for r in records if r["method"] == other and key in r["final"]}
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    differences = [a[s] - b[s] for s in seeds]
    return _mean_std(differences) | {"n": len(seeds), "ahead": sum(d > 0 for d in differences)}


def format_differences(results: dict, reference: str = "trapo") -> str | None:
    """The hard tier, ``reference`` minus every other method, greedy and, when measured, sampled: with per-problem
    results, the mean and a 95% interval bootstrapped over seeds and problems (`trapo.demo.stats`); otherwise the
    mean ± std over seeds (`paired_difference`). None when there is nothing to compare."""
    from trapo.demo.stats import paired_bootstrap

    records = results["runs"]
    others = [m for m in dict.fromkeys(r["method"] for r in records) if m != reference]
    if not others or not any(r["method"] == reference for r in records):
        return None
    columns = {"hard": ("greedy", "greedy")}
    if all("sampled_hard" in r["final"] for r in records):
        columns["sampled_hard"] = (f"avg@{results.get('settings', {}).get('sampled_eval_k', '?')}", "sampled")
    lines = [f"| {reference} minus | " + " | ".join(h for h, _ in columns.values()) + " |"]
    lines.append("|---|" + "---|" * len(columns))
    for other in others:
        cells = []
        for key, (_, kind) in columns.items():
            interval = paired_bootstrap(results, reference, other, kind)
            cells.append(
                _interval_cell(interval)
                if interval
                else _difference_cell(paired_difference(records, reference, other, key))
            )
        lines.append(f"| {other} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _interval_cell(interval: dict) -> str:
    if interval["seeds"] < 2:  # the interval covers the problems only: it says nothing of seed-to-seed noise
        return f"{interval['mean']:+.3f} (1 seed: no interval)"
    mark = " *" if interval["excludes_zero"] else ""
    return (
        f"{interval['mean']:+.3f} [{interval['low']:+.3f}, {interval['high']:+.3f}]{mark} "
        f"(ahead on {interval['ahead']} of {interval['seeds']} seeds)"
    )


def _difference_cell(diff: dict | None) -> str:
    if diff is None:
        return ""
    if diff["n"] == 1:
        return f"{diff['mean']:+.2f}"
    return f"{diff['mean']:+.2f} ± {diff['std']:.2f} (ahead on {diff['ahead']} of {diff['n']} seeds)"


def format_table(results: dict) -> str:
    """Held-out greedy accuracy per tier at the last step (mean ± std over seeds), the hard tiers' mean first."""
    extra = {
        "hard, last 3 evals": lambda m: _cell(m["last3_hard"]) if "last3_hard" in m else "",
        "wall s": lambda m: _cell(m["wall_seconds"], "{:.0f}"),
        "guided": lambda m: f"{m['guided_share']['mean']:.0%}",
        "collapsed": lambda m: (
            f"{round(m['collapsed']['mean'] * m['collapsed']['n'])}/{m['collapsed']['n']}" if "collapsed" in m else ""
        ),
    }
    return _accuracy_table(results, "", "hard tiers (greedy)", extra)


def format_sampled_table(results: dict) -> str | None:
    """The final models under the paper's protocol (avg@k, sampled at temperature 0.6), as `format_table` does;
    None when the run did not measure it."""
    if "sampled_hard" not in results["base"] or not all("sampled_hard" in m for m in results["summary"].values()):
        return None
    return _accuracy_table(results, "sampled_", f"hard tiers ({_sampled_label(results)})", {})


def _sampled_label(results: dict) -> str:
    """How the sampled evaluation was run, e.g. ``avg@8, T=0.6``."""
    settings = results.get("settings", {})
    return f"avg@{settings.get('sampled_eval_k', '?')}, T={settings.get('sampled_eval_temperature', '?')}"


def format_results(results: dict) -> str:
    """What `trapo demo` prints and writes to results.md: the greedy table, the sampled one when measured, TRAPO minus
    each method, what each method spent, and a three-line key."""
    settings = results.get("settings", {})
    text = (
        f"Equal optimizer steps ({settings.get('steps', '?')} per method); what each spent is in the budget table.\n\n"
    )
    text += format_table(results)
    sampled = format_sampled_table(results)
    if sampled:
        text += "\n\nThe same final models under the paper's evaluation protocol (sampled answers):\n\n" + sampled
    differences = format_differences(results)
    if differences:
        text += (
            "\n\nOn the hard tier, TRAPO minus each method, paired by seed and problem (mean [95% interval over "
            "seeds and problems]; * = the interval excludes 0):\n\n" + differences
        )
    guidance = format_guidance(results)
    if guidance:
        text += "\n\nHow often each stage of the guided methods' schedule fired (share of prompts, mean over steps and "
        text += "seeds):\n\n" + guidance
    budget = format_budget(results)
    if budget:
        text += "\n\nWhat each method spent per run (mean over seeds):\n\n" + budget
    return text + "\n\n" + key_lines(results)


def key_lines(results: dict) -> str:
    """Three lines under the tables: what "hard" is, what one problem is worth, and that one seed is noise."""
    hard = ", ".join(str(t) for t in results.get("hard_tiers", []))
    n_hard = sum(p["tier"] in results.get("hard_tiers", []) for p in results.get("eval_problems", []))
    seeds = len({r["seed"] for r in results["runs"]})
    split = results.get("settings", {}).get("eval_split", "valid")
    return "\n".join([
        f"Key: hard = the {hard}-digit tier, which the base rarely solves alone but solves once the first half of an "
        "expert derivation's tokens is shown (base_regime in results.json).",
        f"One hard problem is worth {1 / n_hard:.3f} of its accuracy ({n_hard} problems, the {split} split)."
        if n_hard else "",
        f"{seeds} seed(s): " + ("one seed is noise; " if seeds == 1 else "")
        + "the published multi-seed result, with intervals, is in docs/demo.md.",
    ])  # fmt: skip


def stage_firing_rates(runs: list[dict]) -> dict[int, float]:
    """Per stage, the share of prompts it guided, over every step of ``runs`` (the guidance log)."""
    rates = {}
    for stage in STAGE_LABELS:
        values = [
            p[f"guided_frac/stage{stage}"]
            for r in runs
            for p in r.get("guidance", [])
            if f"guided_frac/stage{stage}" in p
        ]
        if values:
            rates[stage] = statistics.fmean(values)
    return rates


def format_guidance(results: dict) -> str | None:
    """Per method on TRAPO's stages (each sweep value its own row), each stage's firing rate (`stage_firing_rates`).
    LUFFY's schedule has other stages (7 samples, then the full trace) and is left out: its guided share is in the
    main table."""
    rows = []
    for method in dict.fromkeys(r["method"] for r in results["runs"] if _on_paper_stages(_base_method(r))):
        rates = stage_firing_rates([r for r in results["runs"] if r["method"] == method])
        if rates:
            rows.append(f"| {method} | " + " | ".join(f"{rates.get(s, 0.0):.0%}" for s in STAGE_LABELS) + " |")
    if not rows:
        return None
    header = "| method | " + " | ".join(STAGE_LABELS.values()) + " |"
    return "\n".join([header, "|---|" + "---|" * len(STAGE_LABELS), *rows])


def format_budget(results: dict) -> str | None:
    """Per method, the mean budget of its runs: generated, trained and expert tokens, FLOPs, wall seconds."""
    keys = [
        ("generated_tokens", "generated tokens"),
        ("trained_tokens", "trained tokens"),
        ("expert_tokens", "expert tokens with a loss"),
        ("flops", "FLOPs (est.)"),
        ("wall_seconds", "wall s"),
    ]
    rows = []
    for method in dict.fromkeys(r["method"] for r in results["runs"]):
        runs = [r for r in results["runs"] if r["method"] == method and r.get("budget")]
        if runs:
            means = [statistics.fmean(r["budget"].get(k, 0.0) for r in runs) for k, _ in keys]
            rows.append(f"| {method} | " + " | ".join(_compact(v) for v in means) + " |")
    if not rows:
        return None
    return "\n".join(
        ["| method | " + " | ".join(label for _, label in keys) + " |", "|---|" + "---|" * len(keys), *rows]
    )


def _compact(value: float) -> str:
    return f"{value:.3g}" if value >= 1e5 else f"{value:.0f}"


def _accuracy_table(results: dict, prefix: str, hard_label: str, extra: dict) -> str:
    """One row per method (and the base) of the ``prefix``-ed accuracies: the hard tiers' mean, then every tier, then
    the ``extra`` columns (header → cell of a method's summary; empty for the base)."""
    summary, base = results["summary"], results["base"]
    tiers = [k for k in base if k.startswith(prefix + "tier_")]
    hard_tiers = results.get("hard_tiers", [])
    keys = [prefix + "hard", *tiers]
    head = ["method", hard_label, *[_tier_label(t.removeprefix(prefix), hard_tiers) for t in tiers], *extra]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines.append("| base | " + " | ".join(f"{base[k]:.2f}" for k in keys) + " |" + " |" * len(extra))
    for method, m in summary.items():
        cells = [_cell(m[k]) for k in keys] + [cell(m) for cell in extra.values()]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(stats: dict, fmt: str = "{:.2f}") -> str:
    return fmt.format(stats["mean"]) + (f" ± {fmt.format(stats['std'])}" if stats.get("n", 1) > 1 else "")


def format_regime_table(regime: dict) -> str:
    """The base's pass@8 per tier, alone and with a 25% / 50% expert prefix."""
    lines = ["| tier | pass@8 alone | with 25% prefix | with 50% prefix |", "|---|---|---|---|"]
    for tier, cells in regime.items():
        lines.append(
            f"| {tier} | " + " | ".join(f"{cells[k]['pass']:.2f}" for k in ("alone", "prefix_25", "prefix_50")) + " |"
        )
    return "\n".join(lines)


def _tier_label(key: str, hard_tiers) -> str:
    tier = int(key.removeprefix("tier_"))
    return f"{tier} digits" + (" (hard)" if tier in hard_tiers else "")


def _on_paper_stages(method: str) -> bool:
    from trapo.core.schedule import PAPER_SCHEDULE
    from trapo.recipes import METHODS

    def stages(schedule) -> list[tuple[int, float]]:
        return [(g.n, g.prefix_ratio) for g in schedule or ()]

    spec = METHODS.get(method)
    return bool(spec and spec.rl and stages(spec.rl.get("schedule")) == stages(PAPER_SCHEDULE))


def _base_method(record: dict) -> str:
    """The method a run trained, without its sweep values (records before `base_method` existed: the label's first
    word)."""
    return record.get("base_method") or record["method"].split()[0]
