"""The README's own-data example and docs/own-data.md run as written on the tiny local model; the layout is current."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_readme_layout_is_generated_from_the_tree():
    sys.path.insert(0, str(ROOT / "tools"))
    from readme_layout import BEGIN, END, METHODS_BEGIN, METHODS_END, layout, methods, section

    readme = (ROOT / "README.md").read_text()
    assert section(readme, BEGIN, END) == layout(), "README is stale: run `make layout`"
    assert section(readme, METHODS_BEGIN, METHODS_END) == methods(), "README is stale: run `make layout`"


@pytest.mark.slow
def test_readme_own_data_example_runs_as_written(tmp_path, monkeypatch):
    from trapo.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["tiny-model", "--output", "models/tiny"]) == 0
    code = re.search(r"<!-- own-data:begin -->\s*```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    exec(compile(code.group(1), "README.md", "exec"), {"__name__": "readme"})
    assert (tmp_path / "runs" / "trapo-tiny").is_dir()


@pytest.mark.slow
def test_own_data_walkthrough_trains_and_evaluates(tmp_path, monkeypatch, capsys):
    from trapo.cli import main

    monkeypatch.chdir(tmp_path)
    shutil.copy(ROOT / "docs/own-data/my_rewards.py", tmp_path)
    rows = [{"prompt": f"{a}+{b}=", "answer": str(a + b), "expert": [f"{a} plus {b}\n\nmakes {a + b}"]}
            for a in range(1, 5) for b in range(1, 5)]  # fmt: skip
    Path("train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    Path("held_out.jsonl").write_text(json.dumps({"prompt": "5+5=", "answer": "10"}) + "\n")
    assert main(["tiny-model", "--output", "models/tiny"]) == 0
    config = str(ROOT / "docs/own-data/train.yaml")
    assert main(["train", "--config", config, "--dry-run"]) == 0
    assert main(["train", "--config", config]) == 0
    assert (tmp_path / "runs/own-data/model.safetensors").is_file()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    argv = ["eval", "--model", "runs/own-data", "--data", "held_out.jsonl", "--reward", "my_rewards:exact_answer"]
    assert main([*argv, "--k", "2", "--max-tokens", "8", "--backend", "hf"]) == 0
    assert "| held_out | 1 | 2 |" in capsys.readouterr().out


def test_every_test_the_docs_cite_exists():
    """docs/*.md and the README name the test behind each claim (`tests/test_x.py::test_name`, or `::test_name` after
    a file named earlier in the same section): each must exist, so a renamed test cannot leave a claim unbacked."""
    import ast
    import re

    tests = {}
    for path in [*(ROOT / "tests").glob("test_*.py"), *(ROOT / "tests_vllm").glob("test_*.py")]:
        tests[path.name] = {n.name for n in ast.parse(path.read_text()).body if isinstance(n, ast.FunctionDef)}
    missing = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        current = None
        for number, line in enumerate(doc.read_text().splitlines(), start=1):
            if line.startswith("#"):
                current = None  # a new section names its file again
            for match in re.finditer(r"(test_\w+\.py)(?:::(test_\w+))?|::(test_\w+)", line):
                file, name, bare = match.groups()
                if file:
                    current = file
                    if file not in tests:
                        missing.append(f"{doc.name}:{number}: {file}")
                    elif name and name not in tests[file]:
                        missing.append(f"{doc.name}:{number}: {file}::{name}")
                elif current is None or bare not in tests.get(current, set()):
                    missing.append(f"{doc.name}:{number}: {current}::{bare}")
    assert missing == []
