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
