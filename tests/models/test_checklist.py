"""The checklist of ``grpo_audio.models`` (adding a family), held for every registered family: an adapter that
declares everything, its own tiny config and key map, its figures in benchmarks/results.md, and its row with its
limit in the README and in docs/models.md. The family tests themselves run over the registry
(``tests.conftest.FAMILY_NAMES``)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from grpo_audio.models import FAMILIES, ModelFamily
from tests.conftest import FAMILY_NAMES

ROOT = Path(__file__).resolve().parents[2]


def limit_words(seconds: float) -> str:
    """How the tables write a family's longest audio: '30 seconds', '10 minutes'."""
    return f"{seconds / 60:g} minutes" if seconds >= 60 else f"{seconds:g} seconds"


def table_rows(text: str, heading: str) -> dict[str, list[str]]:
    """The rows of the first table under ``heading``, by their first cell's `name`."""
    section = text.split(heading, 1)[1]
    rows = {}
    for line in section.splitlines()[1:]:
        if line.startswith("#"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = cells
    return rows


def test_every_family_test_runs_over_the_registry():
    assert FAMILY_NAMES == tuple(FAMILIES)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_the_family_declares_its_own_tiny_config_key_map_and_token_rule(name):
    family = FAMILIES[name]
    for method in ("tiny_config", "audio_token_count"):
        assert getattr(family, method).__func__ is not getattr(ModelFamily, method).__func__, (name, method)
    assert family.checkpoint_key_map, name  # in-memory names to the layout vLLM loads
    assert family.audio_token_count(family.max_audio_seconds) > 0


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_the_family_has_its_figures_and_its_rows(name):
    family = FAMILIES[name]
    figures = table_rows((ROOT / "benchmarks" / "results.md").read_text(), "## Families")
    assert name in figures, f"no row for {name} in benchmarks/results.md's families table"
    # the parity figure: vLLM against transformers, a number no larger than the tests' 1e-4
    parity = [float(x) for x in re.findall(r"\d\.\d+e-\d+", figures[name][1])]
    assert parity and max(parity) <= 1e-4, figures[name]
    assert re.search(r"\d+(\.\d+)?x", figures[name][-1]), f"no shared-prefix speed-up for {name}: {figures[name]}"
    readme = table_rows((ROOT / "README.md").read_text(), "## Model families")
    assert name in readme and readme[name][-1] == limit_words(family.max_audio_seconds), readme.get(name)
    models = table_rows((ROOT / "docs" / "models.md").read_text(), "# Model families")
    assert name in models and family.model_class_name in " ".join(models[name]), models.get(name)
