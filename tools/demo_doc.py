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


SECTIONS = {
    "tuning": tuning_section,
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
