"""docs/demo.md's tables are generated (tools/demo_doc.py) and the demo's defaults come from the stored tuning
record: neither can drift from the data in docs/demo/."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def demo_doc():
    spec = importlib.util.spec_from_file_location("demo_doc", ROOT / "tools" / "demo_doc.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_generated_sections_of_docs_demo_md_are_current():
    tool = demo_doc()
    text = tool.DOC.read_text()
    assert tool.render(text) == text, "docs/demo.md is stale: run `make layout`"


def test_a_section_is_filled_from_its_data_and_left_alone_without_it(tmp_path, monkeypatch):
    tool = demo_doc()
    monkeypatch.setattr(tool, "DATA", tmp_path)
    page = "intro\n<!-- demo:tuning:begin -->\nold\n<!-- demo:tuning:end -->\nend\n"
    assert tool.render(page) == page  # no tuning.json yet: the section stays as it is
    record = {
        "grid": [1e-4, 3e-4],
        "learning_rate": {"trapo": {"grid": {"0.0001": {"score": 0.5}, "0.0003": {"score": 0.75, "collapsed": 1}},
                                    "chosen": 3e-4}},
        "budget_factors": {"expert_tokens": 1.5, "flops": 8.0},
    }  # fmt: skip
    (tmp_path / "tuning.json").write_text(json.dumps(record))
    rendered = tool.render(page)
    assert "| trapo | 0.50 | 0.75 (collapsed) | 0.0003 |" in rendered
    assert "1.50× SFT's expert tokens and 8.0× its FLOPs" in rendered
    assert rendered.startswith("intro\n") and rendered.endswith("<!-- demo:tuning:end -->\nend\n")
    assert tool.render(rendered) == rendered  # idempotent


def test_the_demo_defaults_are_the_tuning_records_choices():
    from trapo.demo.settings import TUNED
    from trapo.recipes import METHODS

    record = json.loads((ROOT / "docs" / "demo" / "tuning.json").read_text())
    assert TUNED == record["chosen"]
    assert set(TUNED) == set(METHODS)  # every method was tuned


def _synthetic_results(margins: dict[str, float], problems: int = 40, stage4: float = 0.9) -> dict:
    """A results file of 4 seeds: trapo right on every hard problem, each other method right on a share 1 − margin
    of them (the same problems on every seed, so the interval is the problems' noise)."""
    runs = [{"method": "trapo", "seed": s, "problems": {"greedy": [1] * problems},
             "guidance": [{"guided_frac/stage4": stage4}]} for s in range(4)]  # fmt: skip
    for method, margin in margins.items():
        wrong = round(margin * problems)
        right = [0] * wrong + [1] * (problems - wrong) if margin >= 0 else [1] * problems
        runs += [{"method": method, "seed": s, "problems": {"greedy": right}} for s in range(4)]
    return {"hard_tiers": [6], "eval_problems": [{"tier": 6}] * problems, "runs": runs}


def test_the_verdict_reads_the_committed_predictions_and_says_which_held(tmp_path, monkeypatch):
    tool = demo_doc()
    prediction = "# p\n\n## Predictions\n\n| comparison | predicted sign | interval excludes 0? | why |\n"
    prediction += "|---|---|---|---|\n"
    prediction += "| A: TRAPO − grpo | + | yes | x |\n| A: TRAPO − sft | + | no | x |\n"
    prediction += "| A: TRAPO − fixed-prefix | + | no | x |\n| C: TRAPO's stage-4 firing rate | below A's | — | x |\n"
    (tmp_path / "prediction.md").write_text(prediction)
    for name, margins, stage4 in (("published", {"grpo": 0.5, "sft": 0.5, "fixed-prefix": 0.0}, 0.9),
                                  ("adaptive", {}, 0.6)):  # fmt: skip
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(_synthetic_results(margins, stage4=stage4)))
    monkeypatch.setattr(tool, "DATA", tmp_path)
    section = tool.verdict_section()
    rows = {line.split(" | ")[0][2:]: line for line in section.splitlines()[2:] if line.startswith("|")}
    assert rows["A: TRAPO − grpo"].endswith("| yes | yes |")  # +0.5, interval above 0: both held
    assert "+0.500" in rows["A: TRAPO − grpo"] and "TRAPO ahead on 4 of 4 seeds" in rows["A: TRAPO − grpo"]
    assert rows["A: TRAPO − sft"].endswith("| yes | **no** |")  # predicted to include 0; it excludes it
    assert rows["A: TRAPO − fixed-prefix"].endswith("| **no** | yes |")  # level: the sign did not hold
    assert "60% at T = 0.5 against 90% in A | yes |" in rows["C: TRAPO's stage-4 firing rate"]
    assert section.endswith("Of 3 predicted signs, 2 held; of 3 interval predictions, 2 held.")


def test_every_committed_prediction_names_a_stored_run_and_method():
    tool = demo_doc()
    rows = tool.predictions()
    assert len(rows) == 18 and {comparison for comparison, _, _ in rows} == set(tool.COMPARISONS)
    assert all(sign in ("+", "−", "below A's") for _, sign, _ in rows)
