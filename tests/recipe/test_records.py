"""A stage's key is built from the settings its kind declares it reads (``records.READS``), and a recipe's own
``data`` files are refused with where they go."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from grpo_audio.config import ConfigError, RecipeConfig, load_config
from grpo_audio.recipe import SFT_KINDS, Recipe

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "examples/music_flamingo/tiny.yaml"


@dataclasses.dataclass
class NewSection:
    """A section a later version might add to the run's config, read by no stage kind yet."""

    value: int = 0


@dataclasses.dataclass
class ExtendedConfig(RecipeConfig):
    new_section: NewSection = dataclasses.field(default_factory=NewSection)


def test_a_section_no_stage_kind_reads_joins_no_stage_key(tmp_path, tiny_checkpoint):
    """A new section of the config changes no stage's key until a stage kind declares it; a section the
    supervised stages read (``model``) changes theirs, one only GRPO reads (``lora``) changes GRPO's alone."""
    from grpo_audio.data.synthetic import write_corpus

    model = tiny_checkpoint("music_flamingo")
    write_corpus(tmp_path / "data", n=8, n_eval=4, n_rl=4)
    cfg = load_config(TINY, [f"output_dir={tmp_path}"], schema=RecipeConfig)
    values = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(RecipeConfig)}

    def keys(config: RecipeConfig) -> dict[str, dict]:
        recipe = Recipe(config)
        return {s.name: recipe.keys.stage_key(s, model) for s in config.stages}

    base = keys(cfg)
    supervised = [s.name for s in cfg.stages if s.kind in SFT_KINDS]
    assert supervised and "grpo" in base  # tiny.yaml's text, sft, cold_start and grpo stages
    assert keys(ExtendedConfig(**values, new_section=NewSection(1))) == base
    assert keys(ExtendedConfig(**values, new_section=NewSection(2))) == base
    dtype = keys(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, dtype="bfloat16")))
    assert all(dtype[name] != base[name] for name in base)
    lora = keys(dataclasses.replace(cfg, lora=dataclasses.replace(cfg.lora, r=cfg.lora.r + 1)))
    assert [name for name in base if lora[name] != base[name]] == ["grpo"]


@pytest.mark.parametrize(
    "key, where",
    [("train", r"stages\[i\]\.data"), ("eval", r"eval\.data"), ("replay", r"stages\[i\]\.replay")],
)
def test_a_recipes_own_data_files_are_refused_with_where_they_go(tmp_path, key, where):
    """``data.train``, ``data.eval`` and ``data.replay`` are set for each GRPO stage from the stage and ``eval.data``:
    a recipe that names them would have them overwritten unread, so it is refused, naming the key and where the file
    goes. The rest of ``data`` applies to every GRPO stage."""
    cfg = load_config(TINY, [f"output_dir={tmp_path}", f"data.{key}=mine.jsonl"], schema=RecipeConfig)
    with pytest.raises(
        ConfigError, match=rf"^data\.{key} = 'mine.jsonl': a recipe sets it for each GRPO stage; .*{where}"
    ):
        Recipe(cfg)
    assert not any(tmp_path.iterdir())  # nothing generated
    cfg = load_config(
        TINY, [f"output_dir={tmp_path}", "data.bad_rows=skip", "data.max_audio_seconds=20"], schema=RecipeConfig
    )
    recipe = Recipe(cfg)
    grpo = next(s for s in cfg.stages if s.kind == "grpo")
    run = recipe.grpo_config(grpo, tmp_path / "base")
    assert (run.data.bad_rows, run.data.max_audio_seconds) == ("skip", 20.0)
    assert run.data.train == str(tmp_path / "data" / "rl.jsonl")
