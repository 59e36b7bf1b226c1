"""docs/demo.md's generated sections: every table of the page comes from a results or tuning file in docs/demo/, so no
number is typed by hand. A section is ``<!-- demo:NAME:begin -->`` … ``<!-- demo:NAME:end -->``; NAME says what fills
it (`SECTIONS`). `make layout` rewrites the page; tests/test_demo_doc.py fails when it is stale."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "demo.md"
DATA = ROOT / "docs" / "demo"


def _results(name: str) -> dict:
    return json.loads((DATA / name / "results.json").read_text())


def results_section(name: str) -> str:
    """What `trapo demo` printed for the run stored in docs/demo/NAME/ (regenerated from its results.json)."""
    sys.path.insert(0, str(ROOT))
    from trapo.demo.report import format_results

    return format_results(_results(name))


def tuning_section() -> str:
    """The tuning record: per method, the score of every learning rate tried and the one chosen."""
    record = json.loads((DATA / "tuning.json").read_text())
    grid = [f"{v:g}" for v in record["grid"]]
    lines = ["| method | " + " | ".join(f"lr {g}" for g in grid) + " | chosen |", "|---|" + "---|" * (len(grid) + 1)]
    for method, table in record["learning_rate"].items():
        cells = []
        for g in grid:
            cell = table["grid"].get(g)
            mark = " (collapsed)" if cell and cell.get("collapsed") else ""
            cells.append("" if cell is None else f"{cell['score']:.2f}{mark}")
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {table['chosen']:g} |")
    phase = record.get("sft-then-grpo rl phase")
    if phase:
        lines += ["", "sft-then-grpo's RL phase (its SFT phase at sft's rate):", "",
                  "| RL phase | score |", "|---|---|"]  # fmt: skip
        for setting, cell in phase["grid"].items():
            lines.append(f"| {setting} | {cell['score']:.2f} |")
        chosen = phase["chosen"]
        lines.append(f"\nChosen: lr {chosen['rl_learning_rate']:g}, warm-up {chosen['rl_warmup_steps']} steps.")
    factors = record.get("budget_factors")
    if factors:
        lines.append(
            f"\nAt equal optimizer steps and their chosen rates, TRAPO spends {factors['expert_tokens']:.2f}× SFT's "
            f"expert tokens and {factors['flops']:.1f}× its FLOPs (the budget-matched SFT runs use these factors)."
        )
    return "\n".join(lines)


# Each comparison of docs/demo/prediction.md's table (its first cell, as committed) and what measures it: the stored
# run and the method TRAPO is compared with, or "stage 4" for the firing-rate row. The predicted sign and interval
# are read from the committed page itself, so they cannot be retyped here.
COMPARISONS = {
    "A: TRAPO − grpo": ("published", "grpo"),
    "A: TRAPO − context-only": ("published", "context-only"),
    "A: TRAPO − luffy": ("published", "luffy"),
    "A: TRAPO − relift": ("published", "relift"),
    "A: TRAPO − sft-then-grpo": ("published", "sft-then-grpo"),
    "A: TRAPO − naive-sft": ("published", "naive-sft"),
    "A: TRAPO − imitation-only": ("published", "imitation-only"),
    "A: TRAPO − fixed-prefix": ("published", "fixed-prefix"),
    "A: TRAPO − sft": ("published", "sft"),
    "A: TRAPO − sft-trsft": ("published", "sft-trsft"),
    "A: TRAPO − sft at TRAPO's expert tokens": ("published", "sft prompts_per_step=13"),
    "A: TRAPO − sft at TRAPO's FLOPs": ("published", "sft steps=423"),
    "B (structured expert): TRAPO − sft": ("structured", "sft"),
    "B: TRAPO − naive-sft": ("structured", "naive-sft"),
    "B: TRAPO − sft-trsft": ("structured", "sft-trsft"),
    "B: TRAPO − fixed-prefix": ("structured", "fixed-prefix"),
    "C (T = 0.5): TRAPO − fixed-prefix": ("adaptive", "fixed-prefix"),
    "C: TRAPO's stage-4 firing rate": ("adaptive", "stage 4"),
}


def predictions() -> list[tuple[str, str, str]]:
    """(comparison, predicted sign, predicted "interval excludes 0?") for every row of prediction.md's table."""
    text = (DATA / "prediction.md").read_text().split("## Predictions", 1)[1]
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) >= 3 and cells[0] not in ("comparison", "---"):
            rows.append((cells[0], cells[1], cells[2]))
    return rows


def verdict_section() -> str:
    """Every pre-registered comparison beside what the run measured, and whether the sign and the interval
    prediction held."""
    sys.path.insert(0, str(ROOT))
    from trapo.demo.report import stage_firing_rates
    from trapo.demo.stats import paired_bootstrap

    lines = ["| comparison | predicted | measured: mean [95% interval] | sign held | interval held |",
             "|---|---|---|---|---|"]  # fmt: skip
    tally: dict[str, list[bool]] = {"sign": [], "interval": []}
    stored: dict[str, dict] = {}

    def load(name: str) -> dict:  # each results file read once (run A's is 2 MB, and 12 rows compare against it)
        if name not in stored:
            stored[name] = _results(name)
        return stored[name]

    for comparison, sign, excludes in predictions():
        run, other = COMPARISONS[comparison]
        if other == "stage 4":
            rates = {}
            for name in ("adaptive", "published"):
                trapo = [r for r in load(name)["runs"] if r["method"] == "trapo"]
                rates[name] = stage_firing_rates(trapo)[4]
            held = "yes" if rates["adaptive"] < rates["published"] else "no"
            measured = f"{rates['adaptive']:.0%} at T = 0.5 against {rates['published']:.0%} in A"
            lines.append(f"| {comparison} | {sign} | {measured} | {held} | — |")
            continue
        interval = paired_bootstrap(load(run), "trapo", other, "greedy")
        if interval is None:
            raise ValueError(f"{run}: no per-problem results for trapo and {other!r}")
        measured_sign = "+" if interval["mean"] > 0 else "−" if interval["mean"] < 0 else "0"
        sign_held = "yes" if measured_sign == sign.replace("-", "−") else "**no**"
        on_side = interval["low"] > 0 if sign == "+" else interval["high"] < 0  # excludes 0 on the predicted side
        interval_held = "yes" if (on_side if excludes == "yes" else not interval["excludes_zero"]) else "**no**"
        measured = (
            f"{interval['mean']:+.3f} [{interval['low']:+.3f}, {interval['high']:+.3f}]"
            f" (TRAPO ahead on {interval['ahead']} of {interval['seeds']} seeds)"
        )
        lines.append(f"| {comparison} | {sign}, excludes 0: {excludes} | {measured} | {sign_held} | {interval_held} |")
        tally["sign"].append(sign_held == "yes")
        tally["interval"].append(interval_held == "yes")
    lines.append(
        f"\nOf {len(tally['sign'])} predicted signs, {sum(tally['sign'])} held; of {len(tally['interval'])} interval "
        f"predictions, {sum(tally['interval'])} held."
    )
    return "\n".join(lines)


SECTIONS = {
    "tuning": tuning_section,
    "verdict": verdict_section,
    "published": lambda: results_section("published"),
    "structured": lambda: results_section("structured"),
    "adaptive": lambda: results_section("adaptive"),
    "temperature": lambda: results_section("temperature"),
}
PATTERN = re.compile(r"(<!-- demo:(\w+):begin -->\n)(.*?)(<!-- demo:\2:end -->)", re.DOTALL)


def render(text: str) -> str:
    """``text`` with every generated section whose data exists filled in."""

    def fill(match: re.Match) -> str:
        name = match.group(2)
        if name not in SECTIONS:
            raise KeyError(f"docs/demo.md has a generated section {name!r} that tools/demo_doc.py does not know")
        try:
            body = SECTIONS[name]()
        except FileNotFoundError:
            return match.group(0)  # its run is not stored yet: left as it is
        return f"{match.group(1)}{body}\n{match.group(4)}"

    return PATTERN.sub(fill, text)


if __name__ == "__main__":
    text = DOC.read_text()
    rendered = render(text)
    if "--write" in sys.argv:
        DOC.write_text(rendered)
    elif rendered != text:
        sys.exit("docs/demo.md is stale: run `make layout`")
