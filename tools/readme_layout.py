"""Print README's layout section from the tree: every package and top-level module of trapo/ with the first line of
its docstring. `make layout` rewrites README.md with it; tests/test_readme.py fails when the README is stale."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- layout:begin -->", "<!-- layout:end -->"


def summary(path: Path) -> str:
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    first = doc.strip().split("\n\n")[0].replace("\n", " ").split(". ")[0].rstrip(".")
    first = first.split(" (docs/")[0]
    return first if len(first) <= 96 else first[:95].rsplit(" ", 1)[0] + " …"


def layout() -> str:
    package = ROOT / "trapo"
    entries = []
    for item in sorted(package.iterdir()):
        if item.name.startswith("_") or item.name == "__pycache__":
            continue
        if item.is_dir() and (item / "__init__.py").is_file():
            entries.append((f"trapo/{item.name}/", summary(item / "__init__.py")))
        elif item.suffix == ".py":
            entries.append((f"trapo/{item.name}", summary(item)))
    width = max(len(name) for name, _ in entries)
    lines = [f"{name:<{width}}  {text}" for name, text in entries]
    return "```\n" + "\n".join(lines) + "\n```"


def rewrite(readme: Path = ROOT / "README.md") -> None:
    text = readme.read_text()
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    readme.write_text(f"{head}{BEGIN}\n{layout()}\n{END}{tail}")


if __name__ == "__main__":
    rewrite() if "--write" in sys.argv else print(layout())
