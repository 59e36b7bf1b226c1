"""README's generated sections: the layout (every package and top-level module of trapo/ with the first line of its
docstring) and the table of methods (trapo.recipes.METHODS). `make layout` rewrites README.md with them;
tests/test_readme.py fails when the README is stale."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- layout:begin -->", "<!-- layout:end -->"
METHODS_BEGIN, METHODS_END = "<!-- methods:begin -->", "<!-- methods:end -->"


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


def methods() -> str:
    sys.path.insert(0, str(ROOT))
    from trapo.recipes import METHODS

    rows = [f"| `{m.name}` | {m.summary} |" for m in METHODS.values()]
    return "\n".join(["| `method` | what it is |", "|---|---|", *rows])


def section(text: str, begin: str, end: str) -> str:
    return text.split(begin)[1].split(end)[0].strip()


def replace(text: str, begin: str, end: str, body: str) -> str:
    head, _, rest = text.partition(begin)
    _, _, tail = rest.partition(end)
    return f"{head}{begin}\n{body}\n{end}{tail}"


def rewrite(readme: Path = ROOT / "README.md") -> None:
    text = replace(readme.read_text(), BEGIN, END, layout())
    readme.write_text(replace(text, METHODS_BEGIN, METHODS_END, methods()))


if __name__ == "__main__":
    rewrite() if "--write" in sys.argv else print(layout() + "\n\n" + methods())
