"""docs/architecture.md says how the code is laid out, and the code keeps to it: every file or folder the page names
exists, and no module imports a module of a higher layer than its own in the page's layering table. Read from the
source with ``ast`` (tests/test_imports.py's reader), so imports inside functions count too."""

from __future__ import annotations

import re
from pathlib import Path

from tests.test_imports import MODULES, _imports, _package

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "architecture.md"
# A path the page names: under one of the project's source folders, in code spans and diagrams alike.
PATH = re.compile(r"\b((?:grpo_audio|rewards|tests|examples|benchmarks|docs)/[\w./-]*)")


def _section(title: str) -> str:
    return PAGE.read_text().split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_every_path_the_page_names_exists():
    paths = {p.rstrip(".") for p in PATH.findall(PAGE.read_text())}
    assert len(paths) > 30  # the pattern reads the page
    missing = sorted(p for p in paths if not (REPO / p).exists())
    assert not missing, f"docs/architecture.md names paths that do not exist: {missing}"


def test_every_benchmark_script_is_named():
    text = PAGE.read_text()
    scripts = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "benchmarks").glob("*.py"))
    assert scripts and not [s for s in scripts if f"`{s}`" not in text]


def test_where_things_go_names_a_module_and_a_test_for_each():
    rows = [r for r in _section("Where things go").splitlines() if r.startswith("|")][2:]
    kinds = [r.split("|")[1].strip() for r in rows]
    assert kinds == ["reward", "model family", "loss", "benchmark layout", "rollout engine", "recipe stage kind"]
    for row in rows:
        _, _, module, test, _ = row.split("|")
        assert PATH.search(module) and re.search(r"`tests/[\w/]+\.py`", test), row
    assert PAGE.read_text().rstrip().endswith(rows[-1])  # the page ends with it


def layers() -> dict[str, int]:
    """Module or package (``grpo_audio.trainer``, ``grpo_audio.config.fields``) -> its layer, from the page's
    table. A module takes the layer of the longest name in the table it falls under."""
    found: dict[str, int] = {}
    rows = [r for r in _section("Layering").splitlines() if r.startswith("|")][2:]
    for level, row in enumerate(rows):
        for name in re.findall(r"`([\w.]+)`", row.split("|")[2]):
            assert f"grpo_audio.{name}" not in found, f"{name} in two layers"
            found[f"grpo_audio.{name}"] = level
    return found


def _layer(module: str, table: dict[str, int]) -> int | None:
    parts = module.split(".")
    for n in range(len(parts), 1, -1):
        if ".".join(parts[:n]) in table:
            return table[".".join(parts[:n])]
    return None


def test_every_package_has_one_layer():
    table = layers()
    packages = {_package(m) for m in MODULES} - {"grpo_audio"}  # the root package re-exports nothing of its own
    assert not packages - set(table), f"not in the layering of docs/architecture.md: {sorted(packages - set(table))}"
    assert not set(table) - set(MODULES), f"in the layering but not in the code: {sorted(set(table) - set(MODULES))}"


def test_the_checker_sees_an_upward_import():
    table = layers()
    assert _layer("grpo_audio.loss", table) < _layer("grpo_audio.trainer", table)
    assert _violations({"grpo_audio.loss": [("grpo_audio.trainer", "from grpo_audio.trainer import X")]}, table)
    nested = {"grpo_audio.config": 3, "grpo_audio.config.fields": 0}  # the longest name a module falls under
    assert _layer("grpo_audio.config.fields", nested) == 0 and _layer("grpo_audio.config.run", nested) == 3


def _violations(imports: dict[str, list[tuple[str, str]]], table: dict[str, int]) -> list[str]:
    bad = []
    for module, targets in imports.items():
        for target, line in targets:
            a, b = _layer(module, table), _layer(target, table)
            if a is not None and b is not None and b > a:
                bad.append(f"{module} (layer {a}) imports {target} (layer {b}): {line.strip()}")
    return bad


def test_no_module_imports_a_higher_layer():
    imports = {m: [(t, line) for t, _, line in _imports(m, p)] for m, p in MODULES.items()}
    bad = _violations(imports, layers())
    assert not bad, "\n".join(bad)
