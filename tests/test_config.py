"""Config: YAML + overrides against the dataclass schema; typos and wrong types fail naming the key."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest

from grpo_audio.config import ConfigError, RunConfig, describe, load_config

GOOD = """
output_dir: runs/x
model:
  path: /ckpt
  family: music_flamingo
grpo:
  num_generations: 4
rewards:
  - name: format
    weight: 0.5
  - name: mcq_accuracy
    kwargs: {fallback: false}
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "cfg.yaml"
    p.write_text(text)
    return p


def test_good_yaml_and_overrides(tmp_path):
    cfg = load_config(write(tmp_path, GOOD), ["grpo.beta=0.04", "train.lr=2e-6", "rollout.engine=hf"])
    assert isinstance(cfg, RunConfig)
    assert cfg.model.family == "music_flamingo" and cfg.grpo.num_generations == 4
    assert cfg.grpo.beta == 0.04 and cfg.train.lr == 2e-6 and cfg.rollout.engine == "hf"
    assert [r.name for r in cfg.rewards] == ["format", "mcq_accuracy"]
    assert cfg.rewards[0].weight == 0.5 and cfg.rewards[1].kwargs == {"fallback": False}


def test_an_override_sets_a_field_of_a_list_item(tmp_path):
    """``rewards[1].weight=2`` and ``rewards.1.weight=2`` set one item's field and leave the others as the YAML
    has them; a bad index, key, type or value fails naming the key, as in a YAML file."""
    from grpo_audio.config import RecipeConfig

    path = write(tmp_path, GOOD)
    cfg = load_config(path, ["rewards[1].weight=2", "rewards.1.kwargs={fallback: true}", "grpo.beta=0.04"])
    assert [r.weight for r in cfg.rewards] == [0.5, 2.0] and cfg.grpo.beta == 0.04
    assert cfg.rewards[0].kwargs == {} and cfg.rewards[1].kwargs == {"fallback": True}
    tiny = Path(__file__).resolve().parents[1] / "examples" / "music_flamingo" / "tiny.yaml"
    recipe = load_config(tiny, ["stages.1.epochs=2", "stages[2].lr=0.01"], RecipeConfig)
    committed = load_config(tiny, [], RecipeConfig)
    assert (
        (recipe.stages[1].epochs, recipe.stages[2].lr)
        == (2, 0.01)
        != (committed.stages[1].epochs, committed.stages[2].lr)
    )
    assert [dataclasses.replace(s, epochs=0, lr=0) for s in recipe.stages] == [
        dataclasses.replace(s, epochs=0, lr=0) for s in committed.stages
    ]
    for override, why in [
        ("rewards[2].weight=1", r"'rewards\[2\].weight': 'rewards' has 2 items, no item 2"),
        ("rewards.1.wieght=1", r"unknown config key 'rewards\[1\].wieght'. Did you mean 'weight'"),
        ("rewards[1].weight=heavy", r"'rewards\[1\].weight' has the wrong type"),
        ("rewards[1]=x", r"'rewards\[1\]': set a list item's fields one by one"),
    ]:
        with pytest.raises(ConfigError, match=why):
            load_config(path, [override])
    with pytest.raises(ConfigError, match=r"'stages\[1\].evaluate' has the wrong type: 2 is not true or false"):
        load_config(tiny, ["stages.1.evaluate=2"], RecipeConfig)
    with pytest.raises(ConfigError, match=r"'stages\[1\].kind' = 'bogus' is not one of"):
        load_config(tiny, ["stages[1].kind=bogus"], RecipeConfig)


def test_typo_key_names_key_and_valid_choices(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, GOOD.replace("num_generations", "num_generation")))
    msg = str(e.value)
    assert "grpo.num_generation" in msg and "Did you mean 'num_generations'" in msg and "epsilon_high" in msg


def test_typo_in_list_item_and_top_level(tmp_path):
    with pytest.raises(ConfigError, match=r"rewards\[1\]\.kwrgs.*Did you mean 'kwargs'"):
        load_config(write(tmp_path, GOOD.replace("kwargs:", "kwrgs:")))
    with pytest.raises(ConfigError, match="'seeed'.*Did you mean 'seed'"):
        load_config(write(tmp_path, GOOD + "seeed: 3\n"))


def test_wrong_type_names_key(tmp_path):
    with pytest.raises(ConfigError, match=r"grpo\.num_generations.*wrong type"):
        load_config(write(tmp_path, GOOD.replace("num_generations: 4", "num_generations: four")))
    with pytest.raises(ConfigError, match=r"train\.max_steps"):
        load_config(write(tmp_path, GOOD), ["train.max_steps=many"])


@pytest.mark.parametrize(
    "override, least",
    [
        ("grpo.negative_weight=-0.5", "0"),
        ("grpo.num_generations=1", "2"),
        ("train.lr=-0.001", "0"),
        ("train.prompts_per_step=0", "1"),
        ("rollout.temperature=-0.5", "0"),
        ("lora.r=0", "1"),
    ],
)
def test_a_value_below_its_least_is_refused_when_read(tmp_path, override, least):
    """The least value a number may take is part of its field: refused when the YAML is read, naming the key and
    the bound (a negative negative_weight used to fail only at the first GRPO step), and shown by ``describe``;
    the bound itself is accepted."""
    key, value = override.split("=")
    with pytest.raises(ConfigError, match=rf"'{key}' = {value} is below its least value, {least}\."):
        load_config(write(tmp_path, GOOD), [override])
    assert load_config(write(tmp_path, GOOD), [f"{key}={least}"]) is not None
    assert any(line.startswith(f"{key} (") and line.endswith(f"[>= {least}]") for line in describe(RunConfig))


def test_bad_choice_names_key_and_choices(tmp_path):
    with pytest.raises(ConfigError, match=r"grpo\.loss_type.*'ppo'.*grpo, dr_grpo, dapo, bnpo, gspo"):
        load_config(write(tmp_path, GOOD), ["grpo.loss_type=ppo"])
    with pytest.raises(ConfigError, match=r"model\.family.*whisper.*music_flamingo"):
        load_config(write(tmp_path, GOOD.replace("family: music_flamingo", "family: whisper")))


def test_missing_required_field(tmp_path):
    with pytest.raises(ConfigError, match=r"missing required.*model\.path"):
        load_config(write(tmp_path, GOOD.replace("  path: /ckpt\n", "")))
    with pytest.raises(ConfigError, match=r"missing required.*output_dir"):
        load_config(write(tmp_path, GOOD.replace("output_dir: runs/x\n", "")))


def test_bad_override_syntax_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="key=value"):
        load_config(write(tmp_path, GOOD), ["grpo.beta"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def _all_dataclasses(cls, seen=None):
    seen = seen if seen is not None else set()
    if cls in seen:
        return seen
    seen.add(cls)
    for t in typing.get_type_hints(cls).values():
        for cand in (t, *getattr(t, "__args__", ())):
            if dataclasses.is_dataclass(cand):
                _all_dataclasses(cand, seen)
    return seen


def test_every_field_has_a_help_string():
    classes = _all_dataclasses(RunConfig)
    assert len(classes) >= 8
    for cls in classes:
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help", "").strip(), f"{cls.__name__}.{f.name} has no help"
    lines = describe()
    assert any(line.startswith("grpo.loss_type (str, 'dapo')") and "gspo" in line for line in lines)
    assert any(line.startswith("rewards[].weight") for line in lines)


def test_every_example_yaml_loads_against_the_schema():
    from pathlib import Path

    examples = sorted((Path(__file__).resolve().parents[1] / "examples").rglob("*.yaml"))
    assert examples
    from omegaconf import OmegaConf

    from grpo_audio.config import RecipeConfig

    for path in examples:
        schema = RecipeConfig if "stages" in OmegaConf.load(path) else RunConfig
        cfg = load_config(path, schema=schema)
        assert cfg.rewards and cfg.model.family


def test_reward_settings_are_checked_at_load(tmp_path):
    """A reward's ``kwargs`` are checked against its factory when the config loads, not inside the trainer."""
    with pytest.raises(ConfigError, match=r"rewards\[1\]: reward 'mcq_accuracy' takes no setting 'strict'; its "
                       "settings: answer_tag, fallback, prefer"):  # fmt: skip
        load_config(write(tmp_path, GOOD.replace("fallback: false", "strict: true")))
    with pytest.raises(ConfigError, match=r"rewards\[1\]: reward 'mcq_accuracy': prefer must be one of"):
        load_config(write(tmp_path, GOOD.replace("fallback: false", "prefer: number")))
    with pytest.raises(ConfigError, match=r"rewards\[0\]: unknown reward 'fromat'"):
        load_config(write(tmp_path, GOOD.replace("name: format", "name: fromat")))
    with pytest.raises(ConfigError, match=r"rewards\[0\]: cannot load reward 'no_such_module:f'"):
        load_config(write(tmp_path, GOOD.replace("name: format", "name: no_such_module:f")))
    custom = GOOD.replace("name: format", "name: grpo_audio.rewards.music_theory:MusicTheory")
    good = custom.replace("    weight: 0.5\n", "    weight: 0.5\n    kwargs: {tempo_tolerance: 0.1}\n", 1)
    assert load_config(write(tmp_path, good)).rewards[0].kwargs == {"tempo_tolerance": 0.1}
    bad = custom.replace("    weight: 0.5\n", "    weight: 0.5\n    kwargs: {tolerance: 0.1}\n", 1)
    with pytest.raises(ConfigError, match=r"rewards\[0\]: reward '.*:MusicTheory' takes no setting 'tolerance'"):
        load_config(write(tmp_path, bad))


def _fields(schema, prefix=""):
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _fields(hints[f.name], f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f.name


def test_every_config_field_is_read_somewhere():
    """A field nothing reads is a setting that silently does nothing: each one's name must be read as an attribute
    (``.name``) somewhere in the package outside config.py."""
    from grpo_audio.config import RecipeConfig

    package = Path(__file__).resolve().parents[1] / "grpo_audio"
    source = "\n".join(p.read_text() for p in package.rglob("*.py") if p.name != "config.py")
    unread = sorted(
        {key for schema in (RunConfig, RecipeConfig) for key, name in _fields(schema) if f".{name}" not in source}
    )
    assert unread == []


def test_user_rewards_by_path(tmp_path, monkeypatch):
    """A reward function (TRL's signature) takes no settings; a class is built, with or without settings."""
    (tmp_path / "user_rewards.py").write_text(
        "def noisy(prompts, completions, scale=1.0, **kwargs):\n    return [scale] * len(completions)\n"
        "class Fixed:\n    def __init__(self, value=1.0):\n        self.value = value\n"
        "    def __call__(self, prompts, completions, **kwargs):\n        return [self.value] * len(completions)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match=r"rewards\[0\]: reward 'user_rewards:noisy' is a reward function"):
        load_config(write(tmp_path, GOOD.replace("name: format", "name: user_rewards:noisy\n    kwargs: {scael: 2}")))
    cfg = load_config(write(tmp_path, GOOD.replace("name: format", "name: user_rewards:Fixed")))
    from grpo_audio.rewards import RewardSet

    rewards = RewardSet.from_specs(cfg.rewards[:1])
    assert rewards(["p"], ["c"]).total == [0.5]  # weight 0.5 x Fixed() = 1.0
    with pytest.raises(ConfigError, match="takes no setting 'valeu'"):
        load_config(write(tmp_path, GOOD.replace("name: format", "name: user_rewards:Fixed\n    kwargs: {valeu: 2}")))


def test_parallel_settings_are_checked_before_anything_loads(monkeypatch, tmp_path):
    """What the processes cannot run fails at once, as a config error naming the setting: a batch that does not
    split over the processes, ``none`` under torchrun, FSDP2's settings with DDP, offload without a GPU; and a
    recipe checks its GRPO stages before its first stage."""
    from grpo_audio.config import ConfigError, RecipeConfig, check_parallel
    from grpo_audio.recipe import Recipe

    base = ["output_dir=x", "model.path=m", "model.family=music_flamingo", "train.prompts_per_step=3"]
    with pytest.raises(ConfigError, match="prompts_per_step=3 does not split over 2 processes"):
        check_parallel(load_config(None, base), world_size=2)
    check_parallel(load_config(None, base), world_size=1)
    with pytest.raises(ConfigError, match="need parallel.strategy=fsdp2 \\(it is 'ddp'\\)"):
        check_parallel(load_config(None, [*base, "parallel.compute_dtype=bfloat16"]), world_size=1)
    with pytest.raises(ConfigError, match="cpu_offload needs GPUs"):  # this suite runs without one
        check_parallel(load_config(None, [*base, "parallel.strategy=fsdp2", "parallel.cpu_offload=true"]), 1)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="launched on 2 processes but parallel.strategy is 'none'"):
        check_parallel(load_config(None, [*base, "train.prompts_per_step=4", "parallel.strategy=none"]))
    stages = "[{name: grpo, kind: grpo, data: x.jsonl, grpo_overrides: {train.prompts_per_step: 3}}]"
    settings = [f"output_dir={tmp_path / 'out'}", "model.family=music_flamingo", "model.path=unused",
                "tiny_model=test", "train.prompts_per_step=4", f"stages={stages}"]  # fmt: skip
    recipe = load_config(None, settings, schema=RecipeConfig)
    with pytest.raises(ConfigError, match="prompts_per_step=3 does not split over 2 processes"):
        Recipe(recipe)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", ["2", "0", "-1", "maybe", "1.0"])
def test_a_true_or_false_setting_takes_true_or_false_only(tmp_path, value):
    """omegaconf alone reads 2 as true and 0 as false; a flag given a number fails naming the key, on the command
    line and inside a list item of a YAML file."""
    from grpo_audio.config import RecipeConfig

    tiny = Path(__file__).resolve().parents[1] / "examples/music_flamingo/tiny.yaml"
    with pytest.raises(ConfigError, match=rf"command line: config key 'eval.base' has the wrong type: .*{value}"):
        load_config(tiny, [f"eval.base={value}"], schema=RecipeConfig)
    text = tiny.read_text().replace("evaluate: false}", f"evaluate: {value}}}")
    assert text != tiny.read_text()
    (tmp_path / "r.yaml").write_text(text)
    with pytest.raises(ConfigError, match=r"config key 'stages\[0\].evaluate' has the wrong type"):
        load_config(tmp_path / "r.yaml", schema=RecipeConfig)
    assert load_config(tiny, ["eval.base=true"], schema=RecipeConfig).eval.base is True
