"""The house rules that keep five methods side by side (docs/architecture.md, "Package layout")."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from conftest import REPO

from anima.cli import main

METHODS = REPO / "src" / "anima" / "methods"


def _imported_modules(path: Path) -> set[str]:
    """Every module a Python file imports, at any depth (lazy imports included)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_no_method_imports_another() -> None:
    folders = [p for p in METHODS.iterdir() if p.is_dir() and not p.name.startswith("_")]
    assert folders, "no method folders found"
    crossings = []
    for folder in folders:
        for path in folder.rglob("*.py"):
            for module in _imported_modules(path):
                match = re.match(r"anima\.methods\.(\w+)", module)
                if match and match.group(1) not in {folder.name, "base", "registry"}:
                    crossings.append(f"{path.relative_to(REPO)} imports {module}")
    assert not crossings, "\n".join(crossings)


def test_user_facing_text_names_papers_by_title(capsys) -> None:
    outputs = []
    for argv in (["weights"], ["--help"], ["animate", "--help"], ["train", "levitor", "--help"]):
        capsys.readouterr()
        main(argv)
        outputs.append(capsys.readouterr().out)
    text = "\n".join(outputs)
    assert "LeviTor" in text and not re.search(r"paper \d", text), text
