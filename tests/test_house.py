"""The size limits the code keeps (STYLE.md: a file, a class or a function reads in one sitting): no function in
the library or the rewards longer than 80 lines, and the two loop-owning classes (``GRPOTrainer``, ``Recipe``)
under 400. Read from the source with ``ast``, so a nested function counts on its own and inside its parent."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCES = sorted([*(REPO / "grpo_audio").rglob("*.py"), *(REPO / "rewards").rglob("*.py")])
MAX_FUNCTION_LINES = 80
MAX_CLASS_LINES = {"GRPOTrainer": 400, "Recipe": 400}


def _definitions(path: Path) -> list[ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef]:
    kinds = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    return [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, kinds)]


def _lines(node: ast.AST) -> int:
    """Lines from the ``def`` / ``class`` line (decorators excluded) to the last line of the body."""
    return node.end_lineno - node.lineno + 1


def test_sources_found():
    names = {p.name for p in SOURCES}
    assert {"trainer.py", "loss.py", "registry.py"} <= names  # both roots, rewards included


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_functions_read_in_one_sitting(path):
    long = [
        f"{n.name} (line {n.lineno}): {_lines(n)} lines"
        for n in _definitions(path)
        if not isinstance(n, ast.ClassDef) and _lines(n) > MAX_FUNCTION_LINES
    ]
    assert not long, f"{path.relative_to(REPO)}: functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_loop_classes_stay_small():
    found = {}
    for path in SOURCES:
        for n in _definitions(path):
            if isinstance(n, ast.ClassDef) and n.name in MAX_CLASS_LINES:
                found[n.name] = _lines(n)
    assert found.keys() == MAX_CLASS_LINES.keys(), f"classes not found: {MAX_CLASS_LINES.keys() - found.keys()}"
    over = {name: lines for name, lines in found.items() if lines >= MAX_CLASS_LINES[name]}
    assert not over, f"classes at or over their limit {MAX_CLASS_LINES}: {over}"


def test_the_measure_sees_a_long_function(tmp_path):
    """The premise: a function of 81 lines is seen as one."""
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    path = tmp_path / "long.py"
    path.write_text(f"def f():\n{body}\n")
    (node,) = _definitions(path)
    assert _lines(node) == MAX_FUNCTION_LINES + 1
