"""The import structure: no cycle between the project's packages (a top-level module counts as a package of its
own), the model families import nothing of data or training, and the project's own imports sit at the top of each
file unless the line says why not. Read from the source with ``ast``, so it sees every import, including the ones
inside functions."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The source folders and the package each one is installed as (pyproject.toml's package-dir).
ROOTS = {REPO / "grpo_audio": "grpo_audio", REPO / "rewards": "grpo_audio.rewards"}


def _modules() -> dict[str, Path]:
    modules = {}
    for root, name in ROOTS.items():
        for path in root.rglob("*.py"):
            parts = [name, *path.relative_to(root).with_suffix("").parts]
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


MODULES = _modules()


def _imports(module: str, path: Path) -> list[tuple[str, ast.stmt, str]]:
    """(imported project module, the statement, its source line) for every project import in ``path``."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    lines = path.read_text().splitlines()
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            targets = [target]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        for target in targets:
            if target.startswith("grpo_audio"):
                found.append((target, node, lines[node.lineno - 1]))
    return found


def _package(module: str) -> str:
    """``grpo_audio.data.loaders`` -> ``grpo_audio.data``; a top-level module is its own package."""
    return ".".join(module.split(".")[:2])


def _package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        for target, _, _ in _imports(module, path):
            a, b = _package(module), _package(target)
            if a != b:
                graph.setdefault(a, set()).add(b)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path, or None (depth-first search)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_checker_sees_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}}) is None
    assert "grpo_audio.data" in _package_graph()["grpo_audio.trainer"]  # it reads the real imports


def test_no_import_cycle_between_packages():
    assert _cycle(_package_graph()) is None


def test_model_families_know_nothing_of_data_or_training():
    # parallel: gathering a sharded tensor, which a weight sync and a saved model directory need (it imports only the
    # leaf choices); errors: the user-error types (a refused output folder), importing nothing of the project.
    allowed = {"grpo_audio.models", "grpo_audio.music_vocab", "grpo_audio.parallel", "grpo_audio.errors"}
    for module, path in MODULES.items():
        if _package(module) == "grpo_audio.models":
            for target, _, line in _imports(module, path):
                assert _package(target) in allowed, (module, line)


def test_project_imports_at_the_top_unless_the_line_says_why():
    for module, path in MODULES.items():
        for _, node, line in _imports(module, path):
            assert node.col_offset == 0 or "#" in line, f"{path.relative_to(REPO)}:{node.lineno}: {line.strip()}"
